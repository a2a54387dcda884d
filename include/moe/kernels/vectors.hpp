// One vector register of S per ISA, the vocabulary the micro-kernels (kernels/tile_kernels.inc)
// are written in: Reg, kWidth (scalars per register), kRegisters (in the register file),
// zero / load / store / broadcast / fma (a·b + c, one rounding where the ISA has FMA), and, for
// float, widen_bf16_pairs (kWidth pairs of bfloat16, [j][2], into a register of their first
// halves and one of their second: how the bf16 kernels read a weight panel) — or, where the ISA
// multiplies bf16 pairs itself, dot_pairs (Avx512Bf16Vec) — and the arithmetic of exp_of in
// tile_kernels.inc (add, sub, mul, div, min, max, round, pow2) for the activations' kernels. GenericVec is
// Eigen's packet for whatever the compiler targets; the x86 ones are compiled for their ISA
// whatever the build's flags (MOE_TARGET_BEGIN), and only called once moe::active_isa() says the
// CPU has it.
#pragma once

#include "moe/detail/float16.hpp"
#include "moe/isa.hpp"
#include "moe/kernels/blocking.hpp"
#include "moe/types.hpp"

#include <cstdint>
#include <cstring>

#if MOE_X86_KERNELS
#include <immintrin.h>
#endif

namespace moe::kernels::detail {

template <class S>
struct GenericVec {
  using Scalar = S;
  using Reg = simd::Packet<S>;
  static constexpr int kWidth = Blocking<S>::kPacket;
  static constexpr int kRegisters = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS;
  static Reg zero() { return simd::broadcast<S>(S(0)); }
  static Reg load(const S* from) { return simd::load<S>(from); }
  static void store(S* to, const Reg& r) { simd::store<S>(to, r); }
  static Reg broadcast(S value) { return simd::broadcast<S>(value); }
  static Reg fma(const Reg& a, const Reg& b, const Reg& c) { return simd::multiply_add<S>(a, b, c); }
  static void widen_bf16_pairs(const std::uint16_t* from, Reg& first, Reg& second) {
    alignas(64) S firsts[kWidth], seconds[kWidth];
    for (int j = 0; j < kWidth; ++j) {
      firsts[j] = moe::detail::bf16_to_float(from[2 * j]);
      seconds[j] = moe::detail::bf16_to_float(from[2 * j + 1]);
    }
    first = load(firsts);
    second = load(seconds);
  }
};

#if MOE_X86_KERNELS

// A region of code compiled for an ISA whatever the build's flags: every function defined between
// MOE_TARGET_BEGIN(features) and MOE_TARGET_END gets the `target` attribute.
#define MOE_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define MOE_TARGET_BEGIN(features) MOE_PRAGMA(clang attribute push(__attribute__((target(features))), apply_to = function))
#define MOE_TARGET_END MOE_PRAGMA(clang attribute pop)
#else
#define MOE_TARGET_BEGIN(features) MOE_PRAGMA(GCC push_options) MOE_PRAGMA(GCC target(features))
#define MOE_TARGET_END MOE_PRAGMA(GCC pop_options)
#endif
#define MOE_TARGET_AVX2 "avx2,fma"
#define MOE_TARGET_AVX512 "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"
#define MOE_TARGET_AVX512BF16 "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma"

#define MOE_VEC_OP __attribute__((always_inline)) static inline

MOE_TARGET_BEGIN(MOE_TARGET_AVX2)

template <class S>
struct Avx2Vec;
template <>
struct Avx2Vec<float> {
  using Scalar = float;
  using Reg = __m256;
  static constexpr int kWidth = 8, kRegisters = 16;
  MOE_VEC_OP Reg zero() { return _mm256_setzero_ps(); }
  MOE_VEC_OP Reg load(const float* from) { return _mm256_loadu_ps(from); }
  MOE_VEC_OP void store(float* to, Reg r) { _mm256_storeu_ps(to, r); }
  MOE_VEC_OP Reg broadcast(float value) { return _mm256_set1_ps(value); }
  MOE_VEC_OP Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  MOE_VEC_OP Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  MOE_VEC_OP Reg sub(Reg a, Reg b) { return _mm256_sub_ps(a, b); }
  MOE_VEC_OP Reg mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
  MOE_VEC_OP Reg div(Reg a, Reg b) { return _mm256_div_ps(a, b); }
  MOE_VEC_OP Reg min(Reg a, Reg b) { return _mm256_min_ps(a, b); }
  MOE_VEC_OP Reg max(Reg a, Reg b) { return _mm256_max_ps(a, b); }
  MOE_VEC_OP Reg round(Reg a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // 2^n for lanes holding integers n in [−126, 127]: the exponent field of a float.
  MOE_VEC_OP Reg pow2(Reg n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  }
  // A pair is one 32-bit lane, its first bf16 in the low half: shifted up, or masked, it is a float.
  MOE_VEC_OP void widen_bf16_pairs(const std::uint16_t* from, Reg& first, Reg& second) {
    const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from));
    first = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
    second = _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
};
template <>
struct Avx2Vec<double> {
  using Scalar = double;
  using Reg = __m256d;
  static constexpr int kWidth = 4, kRegisters = 16;
  MOE_VEC_OP Reg zero() { return _mm256_setzero_pd(); }
  MOE_VEC_OP Reg load(const double* from) { return _mm256_loadu_pd(from); }
  MOE_VEC_OP void store(double* to, Reg r) { _mm256_storeu_pd(to, r); }
  MOE_VEC_OP Reg broadcast(double value) { return _mm256_set1_pd(value); }
  MOE_VEC_OP Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_pd(a, b, c); }
};

MOE_TARGET_END

MOE_TARGET_BEGIN(MOE_TARGET_AVX512)

template <class S>
struct Avx512Vec;
template <>
struct Avx512Vec<float> {
  using Scalar = float;
  using Reg = __m512;
  static constexpr int kWidth = 16, kRegisters = 32;
  static constexpr __mmask16 kAll = 0xFFFF;
  MOE_VEC_OP Reg zero() { return _mm512_setzero_ps(); }
  MOE_VEC_OP Reg load(const float* from) { return _mm512_loadu_ps(from); }
  MOE_VEC_OP void store(float* to, Reg r) { _mm512_storeu_ps(to, r); }
  MOE_VEC_OP Reg broadcast(float value) { return _mm512_set1_ps(value); }
  MOE_VEC_OP Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  MOE_VEC_OP Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  MOE_VEC_OP Reg sub(Reg a, Reg b) { return _mm512_sub_ps(a, b); }
  MOE_VEC_OP Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
  MOE_VEC_OP Reg div(Reg a, Reg b) { return _mm512_div_ps(a, b); }
  // (the maskz forms with every lane kept: see widen_bf16_pairs)
  MOE_VEC_OP Reg min(Reg a, Reg b) { return _mm512_maskz_min_ps(kAll, a, b); }
  MOE_VEC_OP Reg max(Reg a, Reg b) { return _mm512_maskz_max_ps(kAll, a, b); }
  MOE_VEC_OP Reg round(Reg a) {
    return _mm512_maskz_roundscale_ps(kAll, a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  MOE_VEC_OP Reg pow2(Reg n) {  // as Avx2Vec's
    const __m512i biased = _mm512_add_epi32(_mm512_maskz_cvtps_epi32(kAll, n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, biased, 23));
  }
  MOE_VEC_OP void widen_bf16_pairs(const std::uint16_t* from, Reg& first, Reg& second) {
    const __m512i pairs = _mm512_loadu_si512(from);
    // (maskz with every lane kept is vpslld: the plain form makes GCC 12 warn about its own
    // undefined pass-through register in every user build with -Wall)
    first = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, pairs, 16));
    second = _mm512_castsi512_ps(_mm512_and_si512(pairs, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
};
template <>
struct Avx512Vec<double> {
  using Scalar = double;
  using Reg = __m512d;
  static constexpr int kWidth = 8, kRegisters = 32;
  MOE_VEC_OP Reg zero() { return _mm512_setzero_pd(); }
  MOE_VEC_OP Reg load(const double* from) { return _mm512_loadu_pd(from); }
  MOE_VEC_OP void store(double* to, Reg r) { _mm512_storeu_pd(to, r); }
  MOE_VEC_OP Reg broadcast(double value) { return _mm512_set1_pd(value); }
  MOE_VEC_OP Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_pd(a, b, c); }
};

MOE_TARGET_END

MOE_TARGET_BEGIN(MOE_TARGET_AVX512BF16)

// AVX-512 with the bf16 dot product: dot_pairs(a, b, c) adds to each fp32 lane of c the products
// of the bf16 pair in that lane of a with the pair in that lane of b (vdpbf16ps: both products
// exact, DAZ/FTZ, rounded to nearest). The weights stay pairs (load_pairs) and the activations
// come as pairs too, one 32-bit word broadcast to every lane (broadcast_pair).
struct Avx512Bf16Vec : Avx512Vec<float> {
  MOE_VEC_OP Reg load_pairs(const std::uint16_t* from) { return _mm512_castsi512_ps(_mm512_loadu_si512(from)); }
  MOE_VEC_OP Reg broadcast_pair(const float* pair) {
    std::int32_t word;
    std::memcpy(&word, pair, sizeof word);
    return _mm512_castsi512_ps(_mm512_set1_epi32(word));
  }
  MOE_VEC_OP Reg dot_pairs(Reg a, Reg b, Reg c) { return _mm512_dpbf16_ps(c, (__m512bh)a, (__m512bh)b); }
};

MOE_TARGET_END

#undef MOE_VEC_OP

#endif  // MOE_X86_KERNELS

}  // namespace moe::kernels::detail
