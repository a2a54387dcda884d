// Broken safetensors files: each is a moe::io_error naming the file, the tensor and what was
// expected, both from memory and from disk (the same parser), and nothing reads out of bounds
// (the asan preset and the fuzzer check that part).
#include <moe/io/safetensors.hpp>

#include "io/io_files.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::io::SafetensorsFile;
using moe::test::floats;
using moe::test::safetensors_bytes;

struct BadFile {
  const char* what;
  std::vector<std::byte> bytes;
  std::vector<std::string> message;  // fragments the error must contain
};

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

std::vector<BadFile> bad_files() {
  const auto six = floats({1, 2, 3, 4, 5, 6});
  const std::string w = entry("w", "F32", "[2,3]", "[0,24]");
  const auto good = safetensors_bytes("{" + w + "}", six);
  auto truncated = good;
  truncated.resize(truncated.size() - 3);
  auto huge_length = good;
  huge_length[7] = std::byte{0x7f};  // header length ~ 2^62
  std::vector<std::byte> past_end = good;
  past_end[0] = std::byte{static_cast<unsigned char>(good.size() - 8 + 1)};
  auto with_trailing = good;
  with_trailing.push_back(std::byte{0});
  const auto h = [&](const std::string& header, const std::vector<std::byte>& data) {
    return safetensors_bytes(header, data);
  };
  return {
      {"shorter than the length field", {std::byte{1}, std::byte{0}}, {"2 bytes", "at least 8"}},
      {"empty", {}, {"0 bytes"}},
      {"header length past the end", past_end, {"header length", "at most", "truncated"}},
      {"header length ~2^62", huge_length, {"header length", "at most"}},
      {"truncated data", truncated, {"only 21 bytes", "'w'", "[0, 24]"}},
      {"trailing bytes", with_trailing, {"data section has 25 bytes", "cover 24"}},
      {"malformed JSON", h("{\"w\":{\"dtype\":,}}", {}), {"safetensors header: JSON at byte 14: expected a value"}},
      {"not an object", h("[1, 2]  ", {}), {"expected a JSON object"}},
      {"not UTF-8", h("{\"\xff\":1}", {}), {"UTF-8"}},
      {"duplicate tensor", h("{" + w + "," + w + "}", six), {"\"w\" appears twice"}},
      {"unknown dtype", h("{" + entry("w", "F31", "[2,3]", "[0,24]") + "}", six),
       {"tensor 'w'", "unknown dtype \"F31\"", "\"F32\""}},
      {"dtype not a string", h(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", floats({1})),
       {"tensor 'w'", "unknown dtype"}},
      {"entry not an object", h(R"({"w":[0,4]})", floats({1})), {"tensor 'w'", "expected an object"}},
      {"missing data_offsets", h(R"({"w":{"dtype":"F32","shape":[1]}})", floats({1})),
       {"tensor 'w'", "\"data_offsets\""}},
      {"negative dim", h("{" + entry("w", "F32", "[-1]", "[0,4]") + "}", floats({1})),
       {"tensor 'w'", "integers in [0, 2^63)"}},
      {"fractional dim", h("{" + entry("w", "F32", "[1.0]", "[0,4]") + "}", floats({1})),
       {"tensor 'w'", "integers"}},
      {"dim past 2^63", h("{" + entry("w", "F32", "[9223372036854775808]", "[0,4]") + "}", floats({1})),
       {"tensor 'w'", "2^63"}},
      {"shape overflows", h("{" + entry("w", "F32", "[4294967296,4294967296]", "[0,4]") + "}",
                            floats({1})),
       {"tensor 'w'", "overflows"}},
      {"huge shape with a zero", h("{" + entry("w", "F32", "[9223372036854775807,2,0]", "[0,0]") + "}",
                                   {}),
       {"tensor 'w'", "overflows"}},
      {"shape and offsets disagree", h("{" + entry("w", "F32", "[3,3]", "[0,24]") + "}", six),
       {"tensor 'w'", "[0, 24] hold 24 bytes", "shape [3, 3] of F32 needs 9 × 4"}},
      {"offsets of one number", h("{" + entry("w", "F32", "[2,3]", "[24]") + "}", six),
       {"tensor 'w'", "[begin, end]"}},
      {"begin after end", h("{" + entry("w", "F32", "[0]", "[24,0]") + "}", six),
       {"tensor 'w'", "begin <= end"}},
      {"offsets past the data", h("{" + entry("w", "F32", "[2,3]", "[4,28]") + "}", six),
       {"tensor 'w'", "[4, 28]", "only 24 bytes"}},
      {"offset past 2^64", h("{" + entry("w", "F32", "[2,3]", "[0,18446744073709551616]") + "}", six),
       {"tensor 'w'", "[begin, end]"}},
      {"end one byte past the data", h("{" + entry("w", "U8", "[25]", "[0,25]") + "}", six),
       {"tensor 'w'", "[0, 25]", "only 24 bytes"}},
      {"overlap by one byte", h("{" + entry("a", "U8", "[5]", "[0,5]") + "," + entry("b", "U8", "[4]", "[4,8]") + "}",
                                floats({1, 2})),
       {"tensor 'b'", "overlap tensor 'a'"}},
      {"overlap", h("{" + entry("a", "F32", "[4]", "[0,16]") + "," + entry("b", "F32", "[2]", "[8,16]") +
                    "}", floats({1, 2, 3, 4})),
       {"tensor 'b'", "overlap tensor 'a'"}},
      {"gap", h("{" + entry("a", "F32", "[1]", "[0,4]") + "," + entry("b", "F32", "[1]", "[8,12]") + "}",
                floats({1, 2, 3})),
       {"tensor 'b'", "expected it to begin at 4", "gap after 'a'"}},
      {"gap at the start", h("{" + entry("a", "F32", "[1]", "[4,8]") + "}", floats({1, 2})),
       {"tensor 'a'", "begin at 0", "the header"}},
      {"metadata not strings", h(R"({"__metadata__":{"k":1}})", {}), {"\"__metadata__\"", "\"k\""}},
      {"metadata not an object", h(R"({"__metadata__":"x"})", {}), {"\"__metadata__\""}},
  };
}

TEST(SafetensorsErrors, EveryBrokenFileIsAnIoErrorNamingWhatWasExpected) {
  for (const BadFile& bad : bad_files()) {
    SCOPED_TRACE(bad.what);
    const std::string message = moe::test::io_error_of(
        [&] { SafetensorsFile::from_bytes(bad.bytes, "bad.safetensors"); });
    ASSERT_NE(message, "") << "accepted";
    EXPECT_EQ(message.rfind("bad.safetensors: ", 0), 0u) << message;
    for (const auto& part : bad.message)
      EXPECT_NE(message.find(part), std::string::npos) << message << "\n  lacks: " << part;
  }
}

TEST(SafetensorsErrors, FromDiskTheMessageNamesThePath) {
  moe::test::ScratchDir dir;
  for (const BadFile& bad : bad_files()) {
    SCOPED_TRACE(bad.what);
    moe::test::write_bytes(dir / "bad.safetensors", bad.bytes);
    const std::string path = (dir / "bad.safetensors").string();
    const std::string message =
        moe::test::io_error_of([&] { SafetensorsFile::open(dir / "bad.safetensors"); });
    EXPECT_EQ(message.rfind(path + ": ", 0), 0u) << message;
  }
}

TEST(SafetensorsErrors, EveryPrefixOfAGoodFileIsRejectedOrComplete) {
  const std::string header = "{" + entry("a", "F16", "[3]", "[0,6]") + "," +
                             entry("b", "F32", "[2]", "[6,14]") + "}";
  std::vector<std::byte> data(14, std::byte{0x3c});
  const auto good = safetensors_bytes(header, data);
  for (std::size_t n = 0; n < good.size(); ++n) {
    const std::vector<std::byte> prefix(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_THROW(SafetensorsFile::from_bytes(prefix), moe::io_error) << n << " bytes";
  }
  EXPECT_EQ(SafetensorsFile::from_bytes(good).size(), 2u);
}

}  // namespace
