// The kernels' register and cache blocking, and the packet operations they are written in: the
// one header that uses Eigen's internals (its packet types and primitives for SSE, AVX, AVX-512,
// NEON… whatever Eigen vectorises for). Every other kernel reaches the vector unit through detail::simd::.
#pragma once

#include "moe/types.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <type_traits>

namespace moe::kernels {

template <class S>
struct Blocking {
  using Packet = typename Eigen::internal::packet_traits<S>::type;
  static constexpr int kPacket = Eigen::internal::unpacket_traits<Packet>::size;
  // Columns of a tile: 128 bytes, two AVX-512 registers. The same on every CPU, so that packed
  // weights do not depend on the ISA the kernels pick at run time (kernels/micro_kernel.hpp): the
  // ISAs with narrower or fewer registers run a tile in sub-tiles.
  static constexpr int kNR = 128 / static_cast<int>(sizeof(S));
  // Rows of a tile: 2·kMR accumulators, plus two B registers and a broadcast, fit AVX-512's 32.
  static constexpr int kMR = 12;
  // Depth of a block of a B panel: 32 KB, which stays in L1 while the rows of A pass by.
  static constexpr Index kKC = 32768 / (kNR * static_cast<Index>(sizeof(S)));
};

inline constexpr Index kLine = 64;  // bytes of a cache line

// Panels of kNR columns needed for n columns (the last one zero-padded).
template <class S>
constexpr Index num_panels(Index n) {
  return (n + Blocking<S>::kNR - 1) / Blocking<S>::kNR;
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"  // Eigen's packets are attributed vector types
#endif

// One packet of S: loads and stores (unaligned), a broadcast, a multiply-add.
namespace detail::simd {

template <class S>
using Packet = typename Blocking<S>::Packet;

template <class S>
EIGEN_STRONG_INLINE Packet<S> load(const S* from) {
  return Eigen::internal::ploadu<Packet<S>>(from);
}
template <class S>
EIGEN_STRONG_INLINE void store(S* to, const Packet<S>& p) {
  Eigen::internal::pstoreu(to, p);
}
template <class S>
EIGEN_STRONG_INLINE Packet<S> broadcast(S value) {
  return Eigen::internal::pset1<Packet<S>>(value);
}
template <class S>
EIGEN_STRONG_INLINE Packet<S> multiply_add(const Packet<S>& a, const Packet<S>& b, const Packet<S>& c) {
  return Eigen::internal::pmadd(a, b, c);
}

// The P × P block at from (rows `stride` apart; rows from `rows` on read as zeros), transposed in
// registers: .packet[j] of the result is column j of the block.
template <class S>
auto load_transposed(const S* from, Index stride, Index rows) {
  constexpr int P = Blocking<S>::kPacket;
  Eigen::internal::PacketBlock<Packet<S>, P> block;
  for (int i = 0; i < P; ++i) block.packet[i] = i < rows ? load<S>(from + i * stride) : broadcast<S>(S(0));
  Eigen::internal::ptranspose(block);
  return block;
}

// A store that bypasses the caches (non-temporal) where the ISA has one and `to` is aligned to a
// packet; a plain store otherwise. See stream_fence().
template <class S>
EIGEN_STRONG_INLINE void store_streaming(S* to, const Packet<S>& p, bool aligned) {
  if (aligned) {
#if defined(EIGEN_VECTORIZE_AVX512)
    if constexpr (std::is_same_v<Packet<S>, Eigen::internal::Packet16f>) return _mm512_stream_ps(to, p);
    if constexpr (std::is_same_v<Packet<S>, Eigen::internal::Packet8d>) return _mm512_stream_pd(to, p);
#elif defined(EIGEN_VECTORIZE_AVX)
    if constexpr (std::is_same_v<Packet<S>, Eigen::internal::Packet8f>) return _mm256_stream_ps(to, p);
    if constexpr (std::is_same_v<Packet<S>, Eigen::internal::Packet4d>) return _mm256_stream_pd(to, p);
#elif defined(EIGEN_VECTORIZE_SSE2)
    if constexpr (std::is_same_v<Packet<S>, Eigen::internal::Packet4f>) return _mm_stream_ps(to, p);
    if constexpr (std::is_same_v<Packet<S>, Eigen::internal::Packet2d>) return _mm_stream_pd(to, p);
#endif
  }
  store<S>(to, p);
}

// Asks for the cache line at p (into L2 where the compiler lets us say so: the block it belongs
// to is used after the one now in L1).
inline void prefetch_l2(const void* p) {
#if defined(__GNUC__)
  __builtin_prefetch(p, 0, 2);
#else
  Eigen::internal::prefetch(static_cast<const char*>(p));
#endif
}

// Orders store_streaming's stores before the stores that follow (another thread's reads of them
// come after some such store: a lock, an atomic, the end of a parallel region).
inline void stream_fence() {
#if defined(EIGEN_VECTORIZE_SSE2)
  _mm_sfence();
#endif
}

}  // namespace detail::simd

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace moe::kernels
