// One vector register of S per ISA, the vocabulary the micro-kernels (kernels/tile_kernels.inc)
// are written in: Reg, kWidth (scalars per register), kRegisters (in the register file), and
// zero / load / store / broadcast / fma (a·b + c, one rounding where the ISA has FMA). GenericVec
// is Eigen's packet for whatever the compiler targets; the x86 ones are compiled for their ISA
// whatever the build's flags (each region's `target`), and only called once moe::active_isa()
// says the CPU has it.
#pragma once

#include "moe/isa.hpp"
#include "moe/kernels/blocking.hpp"
#include "moe/types.hpp"

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
};

#if MOE_X86_KERNELS

#define MOE_VEC_OP __attribute__((always_inline)) static inline

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

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

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#endif

template <class S>
struct Avx512Vec;
template <>
struct Avx512Vec<float> {
  using Scalar = float;
  using Reg = __m512;
  static constexpr int kWidth = 16, kRegisters = 32;
  MOE_VEC_OP Reg zero() { return _mm512_setzero_ps(); }
  MOE_VEC_OP Reg load(const float* from) { return _mm512_loadu_ps(from); }
  MOE_VEC_OP void store(float* to, Reg r) { _mm512_storeu_ps(to, r); }
  MOE_VEC_OP Reg broadcast(float value) { return _mm512_set1_ps(value); }
  MOE_VEC_OP Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
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

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#undef MOE_VEC_OP

#endif  // MOE_X86_KERNELS

}  // namespace moe::kernels::detail
