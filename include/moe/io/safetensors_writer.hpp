// Writing safetensors files that the reference implementation (and SafetensorsFile) reads:
//
//   moe::io::SafetensorsWriter w;
//   w.add("router.weight", gate_weight);                             // [rows, cols], F32
//   w.add("experts.w1", bank.all(), {num_experts, d_ff, d_model});   // any shape, same elements
//   w.add("experts.w2", w2, moe::io::Dtype::BF16);                   // F32 (default), F64, F16, BF16
//   w.metadata("format", "pt");
//   w.write("model.safetensors");            // a temporary, then renamed: never half a file
//
// Layout, as the reference implementation's serialize(): "__metadata__" first, then tensors in
// data order, which sorts by dtype (wider first: F64, F32, BF16, F16, so every tensor stays aligned
// to its element size) and then by name; the JSON header is padded with spaces to a multiple of 8.
// add() converts and copies the data at once, so the matrix may change or go away afterwards.
// Conversions: double -> F32 and float/double -> F16/BF16 round to nearest even (double -> F16 and
// BF16 via float); overflow gives ±inf, NaN stays NaN.
#pragma once

#include "moe/io/detail/atomic_write.hpp"
#include "moe/io/detail/utf8.hpp"
#include "moe/errors.hpp"
#include "moe/io/dtype.hpp"
#include "moe/io/detail/json.hpp"
#include "moe/types.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace moe::io {

class SafetensorsWriter {
 public:
  // Adds m as a tensor of shape [m.rows(), m.cols()].
  template <class Derived>
  SafetensorsWriter& add(std::string name, const Eigen::DenseBase<Derived>& m,
                         Dtype dtype = Dtype::F32) {
    return add(std::move(name), m, {m.rows(), m.cols()}, dtype);
  }

  // Adds m's elements, in row-major order, as a tensor of the given shape (product = m.size()).
  template <class Derived>
  SafetensorsWriter& add(std::string name, const Eigen::DenseBase<Derived>& m,
                         std::vector<Index> shape, Dtype dtype = Dtype::F32) {
    using S = typename Derived::Scalar;
    static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>,
                  "SafetensorsWriter::add: the matrix must hold float or double");
    check_name(name);
    moe::detail::check_config(dtype == Dtype::F32 || dtype == Dtype::F64 || dtype == Dtype::F16 ||
                             dtype == Dtype::BF16,
                         "SafetensorsWriter::add", "tensor '", name, "': dtype ", dtype_name(dtype),
                         " but expected F32, F64, F16 or BF16");
    Index elements = 1;
    for (const Index d : shape) {
      moe::detail::check_config(d >= 0, "SafetensorsWriter::add", "tensor '", name, "': shape ",
                           shape_to_json(shape), " has a negative dimension");
      elements *= d;
    }
    if (elements != m.size())
      MOE_THROW(shape_error(moe::detail::concat("SafetensorsWriter::add: tensor '", name, "': shape ",
                                           shape_to_json(shape), " has ", elements,
                                           " elements but the matrix has ", m.size())));
    RowMatrix<S> rows(m.rows(), m.cols());  // row-major whatever m's storage order
    rows.array() = m.derived().array();      // (m may be a matrix or an array expression)
    Entry entry{std::move(name), dtype, std::move(shape), {}};
    entry.data.resize(static_cast<std::size_t>(elements) * dtype_size(dtype));
    moe::detail::convert_to(dtype, rows.data(), static_cast<std::size_t>(elements), entry.data.data());
    names_.insert(entry.name);
    entries_.push_back(std::move(entry));
    return *this;
  }

  // Adds (or replaces) a "__metadata__" string entry.
  SafetensorsWriter& metadata(std::string key, std::string value) {
    moe::detail::check_config(moe::detail::valid_utf8(key) && moe::detail::valid_utf8(value),
                         "SafetensorsWriter::metadata", "key and value must be valid UTF-8");
    metadata_[std::move(key)] = std::move(value);
    return *this;
  }

  std::size_t size() const { return entries_.size(); }

  // The whole file in memory (what write() writes).
  std::vector<std::byte> bytes() const {
    const std::string head = header();  // outlives the spans that chunks() points into it
    std::vector<std::byte> out;
    for (const auto chunk : chunks(head)) out.insert(out.end(), chunk.begin(), chunk.end());
    return out;
  }

  // Writes the file whole or not at all, only over a regular file or a new path
  // (detail/atomic_write.hpp); on failure path is untouched (io_error).
  void write(const std::filesystem::path& path, WriteOptions options = {}) const {
    const std::string head = header();
    const auto parts = chunks(head);
    moe::detail::write_file_atomically(path, parts, "SafetensorsWriter::write", options);
  }

 private:
  struct Entry {
    std::string name;
    Dtype dtype;
    std::vector<Index> shape;
    std::vector<std::byte> data;
  };

  static std::string shape_to_json(const std::vector<Index>& shape) {
    std::string out = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
    return out + "]";
  }

  void check_name(const std::string& name) const {
    const char* where = "SafetensorsWriter::add";
    moe::detail::check_config(name != "__metadata__", where, "\"__metadata__\" is reserved");
    moe::detail::check_config(moe::detail::valid_utf8(name), where, "tensor names must be valid UTF-8");
    moe::detail::check_config(!names_.contains(name), where, "tensor '", name, "' added twice");
  }

  // Entries in data order: wider dtypes first (the reference sorts by dtype, descending), then name.
  std::vector<const Entry*> ordered() const {
    std::vector<const Entry*> out;
    for (const auto& e : entries_) out.push_back(&e);
    std::sort(out.begin(), out.end(), [](const Entry* a, const Entry* b) {
      if (a->dtype != b->dtype) return a->dtype > b->dtype;
      return a->name < b->name;
    });
    return out;
  }

  // The 8-byte length followed by the JSON header, padded with spaces to a multiple of 8.
  std::string header() const {
    std::string json = "{";
    if (!metadata_.empty()) {
      json += "\"__metadata__\":{";
      bool first = true;
      for (const auto& [key, value] : metadata_) {
        json += (first ? "" : ",") + json::quote(key) + ":" + json::quote(value);
        first = false;
      }
      json += "}";
    }
    std::size_t offset = 0;
    for (const Entry* e : ordered()) {
      if (json.size() > 1) json += ",";
      json += moe::detail::concat(json::quote(e->name), ":{\"dtype\":\"", dtype_name(e->dtype),
                             "\",\"shape\":", shape_to_json(e->shape), ",\"data_offsets\":[",
                             offset, ",", offset + e->data.size(), "]}");
      offset += e->data.size();
    }
    json += "}";
    json.append((8 - json.size() % 8) % 8, ' ');
    const std::uint64_t length = json.size();
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((length >> (8 * i)) & 0xffu);
    return out + json;
  }

  std::vector<std::span<const std::byte>> chunks(const std::string& head) const {
    std::vector<std::span<const std::byte>> out{
        {reinterpret_cast<const std::byte*>(head.data()), head.size()}};
    for (const Entry* e : ordered()) out.emplace_back(e->data);
    return out;
  }

  std::vector<Entry> entries_;
  std::set<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace moe::io
