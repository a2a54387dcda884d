// Reading safetensors files (the Hugging Face format): an 8-byte little-endian header length N, N
// bytes of JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the tensors' raw little-endian bytes; offsets count from the first byte after the header.
//
//   auto file = moe::io::SafetensorsFile::open("model.safetensors");   // mmap, read-only
//   auto w1 = file.read<float>("w1");                 // F16/BF16/F32/F64 -> float, a copy
//   file.read_into("w1", bank.all());                 // into a pre-sized [rows, cols] destination
//   auto v = file.view_f32("w1");                     // F32: no copy, points into the mapping
//
// Tensors as matrices: the last axis is the columns and all leading axes fold into rows, so
// [E, r, c] reads as [E·r, c] (a ParamBank's all()), [n] as one row [1, n] and [] as [1, 1].
//
// The file is validated when opened, as strictly as the reference implementation: a known dtype,
// offsets that match shape × dtype size, tensors that tile the data section exactly (no overlap,
// gap or trailing byte). Every failure is a moe::io_error naming the file, the tensor and what
// was expected; nothing reads outside the file. See safetensors_writer.hpp for writing.
#pragma once

#include "moe/io/detail/file_bytes.hpp"
#include "moe/errors.hpp"
#include "moe/io/dtype.hpp"
#include "moe/io/detail/json.hpp"
#include "moe/types.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moe::io {

// "[4, 16, 8]"
inline std::string shape_text(std::span<const Index> shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i)
    out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<Index> shape;
  std::size_t begin = 0, end = 0;  // data_offsets: bytes from the first byte after the header

  // As a matrix: all leading axes fold into rows, the last axis is the columns.
  Index rows() const {
    Index n = 1;
    for (std::size_t i = 0; i + 1 < shape.size(); ++i) n *= shape[i];
    return n;
  }
  Index cols() const { return shape.empty() ? 1 : shape.back(); }
  Index numel() const { return rows() * cols(); }
};

// A float tensor as a row-major [rows, cols] matrix: zero copy (pointing into the file's mapping,
// which it keeps alive) when the tensor is F32 and 4-byte aligned — always so for files written by
// moe or the reference implementation, whose header is padded to 8 bytes; otherwise a converted copy.
class FloatTensor {
 public:
  const float* data() const { return zero_copy() ? borrowed_ : owned_.data(); }
  const std::vector<Index>& shape() const { return shape_; }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  Eigen::Map<const RowMatrix<float>> matrix() const { return {data(), rows_, cols_}; }
  bool zero_copy() const { return keep_alive_ != nullptr; }

 private:
  friend class SafetensorsFile;
  std::shared_ptr<const moe::detail::ByteSource> keep_alive_;  // set when borrowing from the file
  const float* borrowed_ = nullptr;
  std::vector<float> owned_;
  std::vector<Index> shape_;
  Index rows_ = 0, cols_ = 0;
};

class SafetensorsFile {
 public:
  // The reference implementation's limit on the header (100 MB): a larger one is not a real file.
  static constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

  // Memory-maps the file read-only (unmapped when the file object and all its views are gone).
  static SafetensorsFile open(const std::filesystem::path& path) {
    return SafetensorsFile(moe::detail::ByteSource::map_file(path, "SafetensorsFile::open"),
                           path.string());
  }
  // Parses a copy of `bytes`; origin names them in errors. open() runs the same parser.
  static SafetensorsFile from_bytes(std::span<const std::byte> bytes,
                                    std::string origin = "<memory>") {
    return SafetensorsFile(moe::detail::ByteSource::copy_of(bytes), std::move(origin));
  }

  const std::string& origin() const { return origin_; }
  // Whether the bytes are a read-only mapping of the file (open(), unless the file system cannot
  // map: then it was read) rather than a copy (from_bytes()).
  bool memory_mapped() const { return source_->mapped(); }
  std::size_t size() const { return tensors_.size(); }
  std::vector<std::string> names() const {  // sorted
    std::vector<std::string> out;
    for (const auto& t : tensors_) out.push_back(t.name);
    return out;
  }
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  const std::map<std::string, std::string, std::less<>>& metadata() const { return metadata_; }

  const TensorInfo& info(std::string_view name) const {
    const TensorInfo* t = find(name);
    if (t == nullptr) fail(name, "no such tensor in the file (", tensors_.size(), " tensors)");
    return *t;
  }

  // Throws unless the tensor's full shape is `expected` (read_into checks only [rows, cols]).
  void expect_shape(std::string_view name, const std::vector<Index>& expected) const {
    const TensorInfo& t = info(name);
    if (t.shape != expected)
      fail(name, "shape ", shape_text(t.shape), " but expected ", shape_text(expected));
  }

  // out = the tensor as [rows, cols], converted to S. out must be pre-sized to [rows, cols].
  void read_into(std::string_view name, MatrixRef<float> out) const { read_rows<float>(name, out); }
  void read_into(std::string_view name, MatrixRef<double> out) const { read_rows<double>(name, out); }

  template <class S>
  RowMatrix<S> read(std::string_view name) const {
    const TensorInfo& t = info(name);
    RowMatrix<S> out(t.rows(), t.cols());
    read_rows<S>(name, out);
    return out;
  }

  FloatTensor view_f32(std::string_view name) const {
    const TensorInfo& t = info(name);
    FloatTensor view;
    view.shape_ = t.shape;
    view.rows_ = t.rows();
    view.cols_ = t.cols();
    const std::byte* p = data_.data() + t.begin;
    if (t.dtype == Dtype::F32 && reinterpret_cast<std::uintptr_t>(p) % alignof(float) == 0) {
      view.keep_alive_ = source_;
      view.borrowed_ = reinterpret_cast<const float*>(p);
    } else {
      view.owned_.resize(static_cast<std::size_t>(t.numel()));
      Eigen::Map<RowMatrix<float>> m(view.owned_.data(), view.rows_, view.cols_);
      read_rows<float>(name, m);
    }
    return view;
  }

  // The raw stored bytes of a tensor (any dtype), inside the mapping: valid while *this lives.
  std::span<const std::byte> bytes(std::string_view name) const {
    const TensorInfo& t = info(name);
    return data_.subspan(t.begin, t.end - t.begin);
  }
  // Gives a read tensor's memory back (its whole pages, read from the file again if used): what
  // a loader that streams tensor by tensor calls. No effect on from_bytes()' copy.
  void release(std::string_view name) const { source_->release(bytes(name)); }
  // Starts reading a tensor's pages from the file in the background.
  void prefetch(std::string_view name) const { source_->prefetch(bytes(name)); }

 private:
  SafetensorsFile(std::shared_ptr<const moe::detail::ByteSource> source, std::string origin)
      : source_(std::move(source)), origin_(std::move(origin)) {
    parse(source_->bytes());
  }

  template <class... Parts>
  [[noreturn]] void fail(std::string_view tensor, const Parts&... what) const {
    moe::detail::raise(io_error(moe::detail::concat(origin_, ": tensor '", tensor, "': ", what...)));
  }
  template <class... Parts>
  [[noreturn]] void fail_header(const Parts&... what) const {
    moe::detail::raise(io_error(moe::detail::concat(origin_, ": safetensors header: ", what...)));
  }

  const TensorInfo* find(std::string_view name) const {
    const auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                                     [](const TensorInfo& t, std::string_view n) { return t.name < n; });
    return it != tensors_.end() && it->name == name ? &*it : nullptr;
  }

  template <class S>
  void read_rows(std::string_view name, MatrixRef<S> out) const {
    const TensorInfo& t = info(name);
    if (!is_float_dtype(t.dtype))
      fail(name, "dtype ", dtype_name(t.dtype), " but expected F16, BF16, F32 or F64");
    if (out.rows() != t.rows() || out.cols() != t.cols())
      fail(name, "shape ", shape_text(t.shape), " reads as [", t.rows(), ", ", t.cols(),
           "] but the destination is [", out.rows(), ", ", out.cols(), "]");
    if (t.cols() == 0) return;
    const std::size_t row_bytes = static_cast<std::size_t>(t.cols()) * dtype_size(t.dtype);
    for (Index r = 0; r < out.rows(); ++r)
      moe::detail::convert_from(t.dtype, data_.data() + t.begin + static_cast<std::size_t>(r) * row_bytes,
                           static_cast<std::size_t>(t.cols()), &out(r, 0));
  }

  void parse(std::span<const std::byte> file) {
    if (file.size() < 8)
      fail_header("the file has ", file.size(), " bytes but expected at least 8 (the header length)");
    const auto n = moe::detail::load_le<std::uint64_t>(file.data());
    if (n > file.size() - 8)
      fail_header("header length ", n, " but expected at most ", file.size() - 8,
                  " (the bytes after the length field): truncated file?");
    if (n > kMaxHeaderBytes) fail_header("header length ", n, " but expected <= ", kMaxHeaderBytes);
    const std::string_view text(reinterpret_cast<const char*>(file.data()) + 8, n);
    const json::Value header = json::parse(text, origin_ + ": safetensors header");
    if (!header.is_object()) fail_header("expected a JSON object");
    data_ = file.subspan(8 + n);
    for (const auto& [name, entry] : header.members) {
      if (name == "__metadata__") parse_metadata(entry);
      else tensors_.push_back(parse_entry(name, entry));
    }
    // The tensors must tile the data section: sorted by offset, each begins where the last ended.
    std::vector<const TensorInfo*> by_offset;
    for (const auto& t : tensors_) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
      return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    std::size_t covered = 0;
    const TensorInfo* previous = nullptr;
    for (const TensorInfo* t : by_offset) {
      if (t->begin < covered)
        fail(t->name, "data_offsets [", t->begin, ", ", t->end, "] overlap tensor '",
             previous->name, "' (ends at ", covered, ")");
      if (t->begin > covered)
        fail(t->name, "data_offsets [", t->begin, ", ", t->end, "] but expected it to begin at ",
             covered, " (a gap after ", previous ? "'" + previous->name + "'" : "the header", ")");
      covered = t->end;
      previous = t;
    }
    if (covered != data_.size())
      fail_header("the data section has ", data_.size(), " bytes but the tensors cover ", covered);
  }

  void parse_metadata(const json::Value& entry) {
    if (!entry.is_object()) fail_header("\"__metadata__\" must be an object of strings");
    for (const auto& [key, value] : entry.members) {
      if (!value.is_string())
        fail_header("\"__metadata__\" value of \"", key, "\" must be a string");
      metadata_.emplace(key, value.text);
    }
  }

  TensorInfo parse_entry(const std::string& name, const json::Value& entry) const {
    TensorInfo t;
    t.name = name;
    if (!entry.is_object()) fail(name, "expected an object {\"dtype\", \"shape\", \"data_offsets\"}");
    const json::Value* dtype = entry.find("dtype");
    const json::Value* shape = entry.find("shape");
    const json::Value* offsets = entry.find("data_offsets");
    if (!dtype || !shape || !offsets) fail(name, "expected \"dtype\", \"shape\" and \"data_offsets\"");
    const auto parsed = dtype->is_string() ? parse_dtype(dtype->text) : std::nullopt;
    if (!parsed) fail(name, "unknown dtype ", json::quote(dtype->is_string() ? dtype->text : "?"),
                      " (expected a safetensors dtype such as \"F32\", \"F16\", \"BF16\")");
    t.dtype = *parsed;
    if (!shape->is_array()) fail(name, "expected \"shape\" to be an array of integers");
    // Every partial product of the nonzero dims must fit an Index, so rows() and numel() cannot
    // overflow even when a zero dim makes the tensor empty.
    constexpr auto limit = static_cast<std::uint64_t>(Eigen::NumTraits<Index>::highest());
    std::uint64_t elements = 1;
    bool empty = false;
    for (const auto& d : shape->items) {
      const auto v = d.as_uint();
      if (!v || *v > limit) fail(name, "expected \"shape\" to hold integers in [0, 2^63)");
      t.shape.push_back(static_cast<Index>(*v));
      if (*v == 0) empty = true;
      else if (elements > limit / *v) fail(name, "shape ", shape_text(t.shape), "... overflows");
      else elements *= *v;
    }
    if (empty) elements = 0;
    const auto begin = offsets->is_array() && offsets->items.size() == 2 ? offsets->items[0].as_uint()
                                                                          : std::nullopt;
    const auto end = begin ? offsets->items[1].as_uint() : std::nullopt;
    if (!begin || !end || *begin > *end)
      fail(name, "expected \"data_offsets\" to be [begin, end] with 0 <= begin <= end");
    if (*end > data_.size())
      fail(name, "data_offsets [", *begin, ", ", *end, "] but the data section has only ",
           data_.size(), " bytes");
    const std::size_t esize = dtype_size(t.dtype), bytes = *end - *begin;
    if (elements > bytes / esize || elements * esize != bytes)
      fail(name, "data_offsets [", *begin, ", ", *end, "] hold ", bytes, " bytes but shape ",
           shape_text(t.shape), " of ", dtype_name(t.dtype), " needs ", elements, " × ", esize);
    t.begin = static_cast<std::size_t>(*begin);
    t.end = static_cast<std::size_t>(*end);
    return t;
  }

  std::shared_ptr<const moe::detail::ByteSource> source_;
  std::string origin_;
  std::span<const std::byte> data_;          // the data section, inside source_
  std::vector<TensorInfo> tensors_;          // sorted by name (the JSON parser sorts the keys)
  std::map<std::string, std::string, std::less<>> metadata_;
};

}  // namespace moe::io
