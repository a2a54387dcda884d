// Helpers for the I/O tests: a scratch directory per test and files built byte by byte.
#pragma once

#include <moe/errors.hpp>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moe::test {

// A fresh directory under ::testing::TempDir(), removed with its contents at the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string("moe_io_") + info->test_suite_name() + "_" + info->name();
    for (char& c : name)
      if (c == '/') c = '_';
    path_ = std::filesystem::path(::testing::TempDir()) / name;
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  std::filesystem::path operator/(std::string_view file) const { return path_ / file; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline std::vector<std::byte> to_bytes(std::string_view s) {
  std::vector<std::byte> out(s.size());
  if (!s.empty()) std::memcpy(out.data(), s.data(), s.size());
  return out;
}

inline void append(std::vector<std::byte>& out, std::span<const std::byte> more) {
  out.insert(out.end(), more.begin(), more.end());
}

template <class T>
void append_value(std::vector<std::byte>& out, T value) {
  const auto* p = reinterpret_cast<const std::byte*>(&value);
  out.insert(out.end(), p, p + sizeof(T));
}

// A safetensors file: the 8-byte length of `header`, `header` as given (no padding), then `data`.
inline std::vector<std::byte> safetensors_bytes(std::string_view header,
                                                std::span<const std::byte> data) {
  std::vector<std::byte> out;
  append_value<std::uint64_t>(out, header.size());
  append(out, to_bytes(header));
  append(out, data);
  return out;
}

inline std::vector<std::byte> floats(std::initializer_list<float> values) {
  std::vector<std::byte> out;
  for (const float v : values) append_value(out, v);
  return out;
}

inline void write_bytes(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

inline std::vector<std::byte> read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(chars.size());
  if (!chars.empty()) std::memcpy(out.data(), chars.data(), chars.size());
  return out;
}

// The io_error message of f(), or "" if it did not throw; any other exception fails the test.
template <class F>
std::string io_error_of(F&& f) {
  try {
    f();
  } catch (const moe::io_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace moe::test

// EXPECT that `statement` throws moe::io_error whose message contains every one of the strings.
#define MOE_EXPECT_IO_ERROR(statement, ...)                                                   \
  do {                                                                                        \
    const std::string moe_message_ = ::moe::test::io_error_of([&] { (void)(statement); });    \
    EXPECT_NE(moe_message_, "") << #statement " did not throw moe::io_error";                 \
    for (const std::string_view part : std::initializer_list<std::string_view>{__VA_ARGS__})                                  \
      EXPECT_NE(moe_message_.find(part), std::string::npos)                                   \
          << "message \"" << moe_message_ << "\" lacks \"" << part << "\"";                   \
  } while (0)
