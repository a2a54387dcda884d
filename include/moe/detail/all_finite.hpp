// all_finite(p, n): whether n floats or doubles are all finite, read in order. An all-ones
// exponent is an infinity or a NaN; testing the bits rather than calling std::isfinite lets the
// compiler vectorise the loop (Eigen's allFinite() on a row-major block walks it column by column).
#pragma once

#include "moe/types.hpp"

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace moe::detail {

template <class S>
  requires std::is_same_v<S, float> || std::is_same_v<S, double>
bool all_finite(const S* p, Index n) {
  using Bits = std::conditional_t<sizeof(S) == 4, std::uint32_t, std::uint64_t>;
  constexpr Bits kExponent = sizeof(S) == 4 ? Bits(0x7f800000u) : Bits(0x7ff0000000000000ull);
  Bits bad = 0;
  for (Index i = 0; i < n; ++i) {
    Bits b;
    std::memcpy(&b, p + i, sizeof b);
    bad |= Bits((b & kExponent) == kExponent);
  }
  return bad == 0;
}

}  // namespace moe::detail
