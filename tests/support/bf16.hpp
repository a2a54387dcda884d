// Rounding to bfloat16 for the tests' references: the value (or every value) the library's bf16
// formats store, read back as fp32 — through moe/detail/float16.hpp, the one conversion there is.
#pragma once

#include <moe/detail/float16.hpp>
#include <moe/types.hpp>

namespace moe::test {

inline float to_bf16(float v) { return detail::bf16_to_float(detail::float_to_bf16(v)); }

inline RowMatrix<float> bf16_rounded(const RowMatrix<float>& m) {
  return m.unaryExpr([](float v) { return to_bf16(v); });
}

}  // namespace moe::test
