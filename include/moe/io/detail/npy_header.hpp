// The .npy header: "\x93NUMPY", version (1|2|3).0, header length (u16 for 1.0, u32 otherwise),
// then a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), } padded
// with spaces and a '\n'. The parser accepts exactly that grammar (single- or double-quoted keys
// without escapes, True/False, tuples of integers with a trailing comma where Python needs one),
// never reads outside the bytes and checks that the data that follows has the right size.
#pragma once

#include "moe/errors.hpp"
#include "moe/io/dtype.hpp"
#include "moe/types.hpp"

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moe::detail {

struct NpyHeader {
  io::Dtype dtype = io::Dtype::F32;
  std::vector<Index> shape;
  Index rows = 1, cols = 1;      // leading axes folded into rows; the last axis is the columns
  std::size_t data_offset = 0;  // where the data starts in the file
};

// Python's repr of a shape tuple: "()", "(3,)", "(3, 4)".
inline std::string npy_shape(std::span<const Index> shape) {
  std::string out = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

class NpyHeaderParser {
 public:
  NpyHeaderParser(std::string_view text, std::string_view origin) : s_(text), origin_(origin) {}

  // Fills dtype and shape from the dict.
  void parse(NpyHeader& h) {
    bool seen_descr = false, seen_order = false, seen_shape = false;
    skip_space();
    expect('{', "expected '{' to open the header dict");
    while (skip_space(), !at('}')) {
      const std::string_view key = parse_str("expected a quoted key or '}'");
      skip_space();
      expect(':', "expected ':' after a key");
      skip_space();
      if (key == "descr" && !seen_descr) {
        const std::string_view descr = parse_str("expected 'descr' to be a quoted string");
        if (descr == "<f2") h.dtype = io::Dtype::F16;
        else if (descr == "<f4") h.dtype = io::Dtype::F32;
        else if (descr == "<f8") h.dtype = io::Dtype::F64;
        else fail(concat("unsupported descr '", descr, "' (expected '<f2', '<f4' or '<f8')"));
        seen_descr = true;
      } else if (key == "fortran_order" && !seen_order) {
        if (s_.substr(pos_, 5) == "False") pos_ += 5;
        else if (s_.substr(pos_, 4) == "True") fail("fortran_order True but expected False (C order)");
        else fail("expected fortran_order False");
        seen_order = true;
      } else if (key == "shape" && !seen_shape) {
        parse_shape(h.shape);
        seen_shape = true;
      } else {
        fail(concat("unexpected key '", key, "' (expected descr, fortran_order, shape once each)"));
      }
      skip_space();
      if (at(',')) ++pos_;
      else if (!at('}')) fail("expected ',' or '}' in the header dict");
    }
    ++pos_;
    if (!(seen_descr && seen_order && seen_shape))
      fail("expected the keys 'descr', 'fortran_order' and 'shape'");
    skip_space();
    if (pos_ != s_.size()) fail("expected only spaces and '\\n' after the header dict");
  }

 private:
  [[noreturn]] void fail(std::string_view what) const {
    moe::detail::raise(io_error(concat(origin_, ": .npy header at byte ", pos_, ": ", what)));
  }
  bool at(char c) const { return pos_ < s_.size() && s_[pos_] == c; }
  void expect(char c, std::string_view what) {
    if (!at(c)) fail(what);
    ++pos_;
  }
  void skip_space() {
    while (at(' ') || at('\n') || at('\t') || at('\r')) ++pos_;
  }
  std::string_view parse_str(std::string_view what) {
    if (!at('\'') && !at('"')) fail(what);
    const char quote = s_[pos_++];
    const std::size_t begin = pos_;
    while (pos_ < s_.size() && s_[pos_] != quote && s_[pos_] != '\n') {
      if (s_[pos_] == '\\') fail("expected a plain string without escapes");
      ++pos_;
    }
    if (!at(quote)) fail("expected a closing quote");
    return s_.substr(begin, pos_++ - begin);
  }
  void parse_shape(std::vector<Index>& shape) {
    constexpr auto limit = static_cast<std::uint64_t>(Eigen::NumTraits<Index>::highest());
    expect('(', "expected 'shape' to be a tuple");
    bool comma = false;
    while (skip_space(), !at(')')) {
      if (!(pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9')) fail("expected a dimension");
      std::uint64_t d = 0;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
        const auto digit = static_cast<std::uint64_t>(s_[pos_] - '0');
        if (d > (limit - digit) / 10) fail("expected a dimension < 2^63");
        d = d * 10 + digit;
        ++pos_;
      }
      shape.push_back(static_cast<Index>(d));
      skip_space();
      comma = at(',');
      if (comma) ++pos_;
      else if (!at(')')) fail("expected ',' or ')' in the shape");
    }
    if (shape.size() == 1 && !comma) fail("expected '(n,)' for a 1-D shape ('(n)' is not a tuple)");
    ++pos_;
  }

  std::string_view s_;
  std::string_view origin_;
  std::size_t pos_ = 0;
};

inline NpyHeader parse_npy(std::span<const std::byte> file, std::string_view origin) {
  const auto fail = [&](const auto&... what) {
    MOE_THROW(io_error(concat(origin, ": ", what...)));
  };
  const auto byte = [&](std::size_t i) { return static_cast<unsigned>(file[i]); };
  constexpr std::string_view magic = "\x93NUMPY";
  if (file.size() < 10 || std::string_view(reinterpret_cast<const char*>(file.data()), 6) != magic)
    fail("expected a .npy file (magic \"\\x93NUMPY\")");
  const unsigned major = byte(6), minor = byte(7);
  if (major < 1 || major > 3 || minor != 0)
    fail(".npy version ", major, ".", minor, " but expected 1.0, 2.0 or 3.0");
  const std::size_t length_bytes = major == 1 ? 2 : 4;
  if (file.size() < 8 + length_bytes) fail("truncated .npy header");
  std::uint64_t length = 0;
  for (std::size_t i = 0; i < length_bytes; ++i) length |= std::uint64_t{byte(8 + i)} << (8 * i);
  const std::size_t start = 8 + length_bytes;
  if (length > file.size() - start)
    fail(".npy header length ", length, " but only ", file.size() - start, " bytes follow");
  NpyHeader h;
  NpyHeaderParser(std::string_view(reinterpret_cast<const char*>(file.data()) + start, length),
                  origin).parse(h);
  h.data_offset = start + length;
  // Every partial product of the nonzero dims fits an Index (so rows * cols cannot overflow).
  constexpr auto limit = static_cast<std::uint64_t>(Eigen::NumTraits<Index>::highest());
  std::uint64_t elements = 1;
  bool empty = false;
  for (const Index d : h.shape) {
    const auto u = static_cast<std::uint64_t>(d);
    if (u == 0) empty = true;
    else if (elements > limit / u) fail("shape ", npy_shape(h.shape), " has too many elements");
    else elements *= u;
  }
  if (empty) elements = 0;
  h.cols = h.shape.empty() ? 1 : h.shape.back();
  h.rows = 1;
  for (std::size_t i = 0; i + 1 < h.shape.size(); ++i) h.rows *= h.shape[i];
  const std::size_t available = file.size() - h.data_offset, esize = io::dtype_size(h.dtype);
  if (elements > available / esize || elements * esize != available)
    fail("shape ", npy_shape(h.shape), " of ", io::dtype_name(h.dtype), " needs ", elements, " × ",
         esize, " bytes of data but the file has ", available, elements * esize > available
             ? " (truncated)" : " (trailing bytes)");
  return h;
}

// numpy.save's header for a C-order array: the dict, keys sorted, spaces for the first axis to
// grow to 21 digits, padded so the data starts at a multiple of 64, and a '\n'; version 1.0 when
// the length fits 16 bits, else 2.0.
inline std::string npy_header_bytes(io::Dtype dtype, std::span<const Index> shape) {
  std::string dict = concat("{'descr': '", dtype == io::Dtype::F64 ? "<f8" : "<f4",
                            "', 'fortran_order': False, 'shape': ", npy_shape(shape), ", }");
  if (!shape.empty()) dict.append(21 - std::to_string(shape.front()).size(), ' ');
  const auto wrap = [&](unsigned major, std::size_t length_bytes) {
    const std::size_t used = 8 + length_bytes + dict.size() + 1;
    const std::size_t padding = 64 - used % 64;  // numpy pads 1..64 spaces, never 0
    const std::size_t length = dict.size() + padding + 1;
    std::string out = "\x93NUMPY";
    out += static_cast<char>(major);
    out += '\0';
    for (std::size_t i = 0; i < length_bytes; ++i) out += static_cast<char>((length >> (8 * i)) & 0xff);
    return out + dict + std::string(padding, ' ') + "\n";
  };
  std::string v1 = wrap(1, 2);
  return v1.size() - 10 < 65536 ? v1 : wrap(2, 4);
}

}  // namespace moe::detail
