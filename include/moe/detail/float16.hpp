// IEEE binary16 (F16) and bfloat16 (BF16) <-> binary32, by hand: the library has no dependency that
// knows these formats, and the conversions must be exact and platform independent.
//   half_to_float, bf16_to_float: exact (every F16/BF16 value is a float), NaN payloads kept.
//   float_to_half, float_to_bf16: round to nearest, ties to even; overflow gives ±inf; NaN stays a
//   (quiet) NaN with the top payload bits kept.
#pragma once

#include <bit>
#include <cstdint>

namespace moe::detail {

inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  std::uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f)  // inf (mantissa 0) or NaN: all-ones exponent, payload in the top bits
    return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0)  // normal: rebias 15 -> 127
    return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
  if (mantissa == 0) return std::bit_cast<float>(sign);  // ±0
  // Subnormal: mantissa · 2^-24. Shift the leading 1 up to the implicit bit; each shift lowers the
  // exponent of the (normal) float result by one, starting from that of 2^-14.
  std::uint32_t float_exponent = 127 - 14;
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    --float_exponent;
  }
  return std::bit_cast<float>(sign | (float_exponent << 23) | ((mantissa & 0x3ffu) << 13));
}

inline std::uint16_t float_to_half(float f) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u)  // NaN: keep the top payload bits, force quiet so it stays a NaN
    return static_cast<std::uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
  if (magnitude >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (magnitude >= 0x38800000u) {  // >= 2^-14: normal half
    std::uint32_t half = ((magnitude >> 23) - 112) << 10 | ((magnitude >> 13) & 0x3ffu);
    const std::uint32_t rest = magnitude & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;  // a carry may reach 0x7c00
    return static_cast<std::uint16_t>(sign | half);
  }
  if (magnitude <= 0x33000000u) return sign;  // <= 2^-25: rounds to ±0 (2^-25 is a tie, to even)
  // Subnormal half: value / 2^-24 = (1.m · 2^23) · 2^(e - 126) with e < 113, so shift right.
  const std::uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
  const std::uint32_t shift = 126 - (magnitude >> 23);  // 14 ... 24
  std::uint32_t half = mantissa >> shift;
  const std::uint32_t rest = mantissa & ((1u << shift) - 1);
  const std::uint32_t tie = 1u << (shift - 1);
  if (rest > tie || (rest == tie && (half & 1u))) ++half;  // 0x400 is the smallest normal: fine
  return static_cast<std::uint16_t>(sign | half);
}

// bfloat16 is the top half of a binary32.
inline float bf16_to_float(std::uint16_t b) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

inline std::uint16_t float_to_bf16(float f) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u)  // NaN: truncating could clear the payload (-> inf)
    return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  const std::uint32_t rounded = bits + 0x7fffu + ((bits >> 16) & 1u);  // ties to even
  return static_cast<std::uint16_t>(rounded >> 16);
}

}  // namespace moe::detail
