// Element types of stored tensors (safetensors dtypes; .npy descrs map onto the float ones), and
// the conversions between stored little-endian bytes and the caller's scalar (float or double).
#pragma once

#include "moe/detail/float16.hpp"
#include "moe/errors.hpp"

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>
#include <type_traits>

namespace moe::io {

static_assert(std::endian::native == std::endian::little,
              "moe::io reads and writes little-endian files by reinterpreting bytes");

// Every dtype the safetensors format names, so that a file holding integer tensors still opens
// (its float tensors can be read; reading an integer one is an io_error).
enum class Dtype {
  BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64
};

}  // namespace moe::io

namespace moe::detail {
struct DtypeEntry {
  io::Dtype dtype;
  std::string_view name;
  std::size_t size;
};
inline constexpr std::array<DtypeEntry, 15> kDtypes{{
    {io::Dtype::BOOL, "BOOL", 1}, {io::Dtype::U8, "U8", 1},     {io::Dtype::I8, "I8", 1},
    {io::Dtype::F8_E5M2, "F8_E5M2", 1}, {io::Dtype::F8_E4M3, "F8_E4M3", 1}, {io::Dtype::I16, "I16", 2},
    {io::Dtype::U16, "U16", 2},   {io::Dtype::F16, "F16", 2},   {io::Dtype::BF16, "BF16", 2},
    {io::Dtype::I32, "I32", 4},   {io::Dtype::U32, "U32", 4},   {io::Dtype::F32, "F32", 4},
    {io::Dtype::F64, "F64", 8},   {io::Dtype::I64, "I64", 8},   {io::Dtype::U64, "U64", 8},
}};
}  // namespace moe::detail

namespace moe::io {

// "F32", "BF16", ... as written in safetensors headers.
constexpr std::string_view dtype_name(Dtype d) {
  for (const auto& e : moe::detail::kDtypes)
    if (e.dtype == d) return e.name;
  return "?";
}

// Bytes per element.
constexpr std::size_t dtype_size(Dtype d) {
  for (const auto& e : moe::detail::kDtypes)
    if (e.dtype == d) return e.size;
  return 0;
}

constexpr std::optional<Dtype> parse_dtype(std::string_view name) {
  for (const auto& e : moe::detail::kDtypes)
    if (e.name == name) return e.dtype;
  return std::nullopt;
}

// The dtypes moe can convert to and from float / double.
constexpr bool is_float_dtype(Dtype d) {
  return d == Dtype::F16 || d == Dtype::BF16 || d == Dtype::F32 || d == Dtype::F64;
}

}  // namespace moe::io

namespace moe::detail {

template <class T>
T load_le(const std::byte* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));  // no alignment assumed
  return value;
}

// out[i] = element i of `count` elements of float dtype `d` stored at `src` (any alignment).
//   F16 and BF16 widen exactly; F32 -> double exactly; F64 -> float rounds to nearest.
template <class S>
void convert_from(io::Dtype d, const std::byte* src, std::size_t count, S* out) {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>);
  if constexpr (std::is_same_v<S, float>) {
    if (d == io::Dtype::F32) {
      if (count != 0) std::memcpy(out, src, count * sizeof(float));
      return;
    }
  }
  switch (d) {
    case io::Dtype::F16:
      for (std::size_t i = 0; i < count; ++i)
        out[i] = static_cast<S>(half_to_float(load_le<std::uint16_t>(src + 2 * i)));
      return;
    case io::Dtype::BF16:
      for (std::size_t i = 0; i < count; ++i)
        out[i] = static_cast<S>(bf16_to_float(load_le<std::uint16_t>(src + 2 * i)));
      return;
    case io::Dtype::F32:
      for (std::size_t i = 0; i < count; ++i) out[i] = static_cast<S>(load_le<float>(src + 4 * i));
      return;
    case io::Dtype::F64:
      for (std::size_t i = 0; i < count; ++i) out[i] = static_cast<S>(load_le<double>(src + 8 * i));
      return;
    default:
      MOE_ASSERT(false && "convert_from: not a float dtype");
  }
}

// dst (count · dtype_size(d) bytes) = the elements of `in` stored as float dtype `d`.
//   double -> F16 / BF16 rounds to float first (a double rounding, off by one ulp in rare ties).
template <class S>
void convert_to(io::Dtype d, const S* in, std::size_t count, std::byte* dst) {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>);
  for (std::size_t i = 0; i < count; ++i) {
    switch (d) {
      case io::Dtype::F16: {
        const std::uint16_t h = float_to_half(static_cast<float>(in[i]));
        std::memcpy(dst + 2 * i, &h, 2);
        break;
      }
      case io::Dtype::BF16: {
        const std::uint16_t b = float_to_bf16(static_cast<float>(in[i]));
        std::memcpy(dst + 2 * i, &b, 2);
        break;
      }
      case io::Dtype::F32: {
        const auto f = static_cast<float>(in[i]);
        std::memcpy(dst + 4 * i, &f, 4);
        break;
      }
      case io::Dtype::F64: {
        const auto v = static_cast<double>(in[i]);
        std::memcpy(dst + 8 * i, &v, 8);
        break;
      }
      default:
        MOE_ASSERT(false && "convert_to: not a float dtype");
        return;
    }
  }
}

}  // namespace moe::detail
