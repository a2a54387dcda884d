// The register-blocked micro-kernels of the packed products (kernels/packed_product.hpp,
// kernels/gemm.hpp): an mr × kNR tile of C stays in registers while a micro-panel of packed A and
// a block of a packed B panel stream past once. Every element of a tile is one sum over the depth
// in a fixed order, whatever tiles or threads the callers use.
#pragma once

#include "moe/kernels/blocking.hpp"
#include "moe/types.hpp"

#include <array>
#include <cstddef>
#include <utility>

namespace moe::kernels::detail {

// Decode: with at most kMR / kStreams rows, kStreams panels are read at a time (as many
// accumulators as the main kernel), so that several streams from memory are in flight; above
// that, the main kernel (benchmarks/README.md has the measurements behind the choice).
inline constexpr int kStreams = 4;

// Cache lines to prefetch: `count` lines from `at`, in runs of `run` bytes that start `stride`
// bytes apart (rows of a matrix; one contiguous run has run = count · kLine).
struct Lines {
  const char* at = nullptr;
  Index count = 0, run = 0, stride = 0;
};

// tile[i][c] (+)= Σ_k a[k·MR + i] · b[k·kNR + c]   for i < MR, c < kNR; row i of the tile starts
// at tile + i · tile_stride, and is added to when accumulate, overwritten otherwise. On the way it
// prefetches the lines `ahead`, spread evenly over its depth.
template <class S, int MR>
void micro_kernel(Index depth, const S* __restrict a, const S* __restrict b, S* __restrict tile, Index tile_stride,
                  bool accumulate, const Lines& ahead) {
  using simd::broadcast;
  using simd::load;
  using simd::multiply_add;
  using Packet = simd::Packet<S>;
  constexpr int P = Blocking<S>::kPacket;
  Packet c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    c0[i] = accumulate ? load<S>(tile + i * tile_stride) : broadcast<S>(S(0));
    c1[i] = accumulate ? load<S>(tile + i * tile_stride + P) : broadcast<S>(S(0));
  }
  // `ahead` comes by reference: a struct passed by value is copied through a vector register from
  // the caller's scalar stores, a load that waits until the previous tile's stores have drained.
  const char* at = ahead.at;
  const Index count = ahead.count, run = ahead.run, stride = ahead.stride;
  Index owed = 0, offset = 0;  // lines owed, in units of 1/depth; where the next one is in its run
  for (Index k = 0; k < depth; ++k, a += MR, b += 2 * P) {
    for (owed += count; owed >= depth; owed -= depth) {
      simd::prefetch_l2(at + offset);
      if ((offset += kLine) == run) offset = 0, at += stride;
    }
    const Packet b0 = load<S>(b), b1 = load<S>(b + P);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const Packet ai = broadcast<S>(a[i]);
      c0[i] = multiply_add<S>(ai, b0, c0[i]);
      c1[i] = multiply_add<S>(ai, b1, c1[i]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    simd::store<S>(tile + i * tile_stride, c0[i]);
    simd::store<S>(tile + i * tile_stride + P, c1[i]);
  }
}

template <class S, std::size_t... I>
constexpr auto micro_kernels(std::index_sequence<I...>) {
  return std::array{&micro_kernel<S, static_cast<int>(I) + 1>...};
}

// Decode's kernel: the [MR][kNR] tiles of W = kStreams adjacent panels (b, b + panel_size, …) over
// the whole depth, into tiles [W][MR][kNR]. With a few rows the product is a read of B; W streams in
// flight keep more of it on its way from memory than one.
template <class S, int MR>
void stream_kernel(Index depth, const S* __restrict a, const S* __restrict b, Index panel_size, S* __restrict tiles) {
  using simd::broadcast;
  using simd::load;
  using simd::multiply_add;
  using Packet = simd::Packet<S>;
  constexpr int P = Blocking<S>::kPacket, W = kStreams;
  Packet c[W][MR][2];
#pragma GCC unroll 16
  for (int w = 0; w < W; ++w)
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) c[w][i][0] = c[w][i][1] = broadcast<S>(S(0));
  for (Index k = 0; k < depth; ++k, a += MR, b += 2 * P) {
#pragma GCC unroll 16
    for (int w = 0; w < W; ++w) {
      const Packet b0 = load<S>(b + w * panel_size), b1 = load<S>(b + w * panel_size + P);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const Packet ai = broadcast<S>(a[i]);
        c[w][i][0] = multiply_add<S>(ai, b0, c[w][i][0]);
        c[w][i][1] = multiply_add<S>(ai, b1, c[w][i][1]);
      }
    }
  }
#pragma GCC unroll 16
  for (int w = 0; w < W; ++w)
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      simd::store<S>(tiles + (w * MR + i) * 2 * P, c[w][i][0]);
      simd::store<S>(tiles + (w * MR + i) * 2 * P + P, c[w][i][1]);
    }
}

template <class S, std::size_t... I>
constexpr auto stream_kernels(std::index_sequence<I...>) {
  return std::array{&stream_kernel<S, static_cast<int>(I) + 1>...};
}

// store(0, m, p, tile) for the panels [p_begin, p_begin + kStreams·⌊(p_end − p_begin) / kStreams⌋),
// m ≤ kMR / kStreams; returns where it stopped.
template <class S, class Store>
Index stream_panels(Index m, Index depth, const S* a, const S* b, Index p_begin, Index p_end, Store&& store) {
  constexpr int NR = Blocking<S>::kNR, W = kStreams, kRows = Blocking<S>::kMR / W;
  static constexpr auto kernels = stream_kernels<S>(std::make_index_sequence<kRows>{});
  alignas(64) S tiles[W * kRows * NR];
  for (; p_begin + W <= p_end; p_begin += W) {
    kernels[static_cast<std::size_t>(m - 1)](depth, a, b + p_begin * depth * NR, depth * NR, tiles);
    for (int w = 0; w < W; ++w) store(Index(0), m, p_begin + w, static_cast<const S*>(tiles + w * m * NR));
  }
  return p_begin;
}

}  // namespace moe::kernels::detail
