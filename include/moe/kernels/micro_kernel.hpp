// The register-blocked micro-kernels of the packed products (kernels/packed_product.hpp,
// kernels/gemm.hpp): an mr × kNR tile of C stays in registers while a micro-panel of packed A and
// a block of a packed B panel stream past once. Every element of a tile is one sum over the depth
// in a fixed order, whatever tiles or threads the callers use.
//
// One table of kernels per ISA (kernels/tile_kernels.inc compiled for each), chosen at run time:
// tile_kernels<S>(isa) is the best table at or below `isa` that this build has.
#pragma once

#include "moe/isa.hpp"
#include "moe/kernels/blocking.hpp"
#include "moe/kernels/vectors.hpp"
#include "moe/types.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <utility>

namespace moe::kernels::detail {

// Cache lines to prefetch: `count` lines from `at`, in runs of `run` bytes that start `stride`
// bytes apart (rows of a matrix; one contiguous run has run = count · kLine).
struct Lines {
  const char* at = nullptr;
  Index count = 0, run = 0, stride = 0;
};

// One ISA's kernels for tiles of S.
//   micro[mr − 1](depth, a, b, tile, tile_stride, accumulate, ahead), mr ≤ kMR:
//     tile[i][c] (+)= Σ_k a[k·mr + i] · b[k·kNR + c] (see micro_kernel in tile_kernels.inc);
//   decode, for m ≤ stream_rows rows: stream_panels() reads stream_width panels at a time, so that
//     several streams from memory are in flight (benchmarks/README.md has the measurements behind
//     the choice); each tile has the same bits as micro[m − 1]'s over the whole depth.
template <class S>
struct TileKernels {
  using Micro = void (*)(Index, const S*, const S*, S*, Index, bool, const Lines&);
  using Stream = void (*)(Index, const S*, const S*, Index, S*);
  static constexpr int kMR = Blocking<S>::kMR, kNR = Blocking<S>::kNR;

  Isa isa;
  std::array<Micro, kMR> micro;
  int stream_width, stream_rows;
  std::array<Stream, kMR> stream;  // [m − 1] for m ≤ stream_rows

  // store(0, m, p, tile) for the panels [p_begin, p_begin + stream_width·⌊(p_end − p_begin) /
  // stream_width⌋) of B (packed panels of `depth` rows), m ≤ stream_rows; returns where it stopped.
  template <class Store>
  Index stream_panels(Index m, Index depth, const S* a, const S* b, Index p_begin, Index p_end, Store&& store) const {
    alignas(64) S tiles[kMR * kNR];  // stream_width · stream_rows ≤ kMR
    for (; p_begin + stream_width <= p_end; p_begin += stream_width) {
      stream[static_cast<std::size_t>(m - 1)](depth, a, b + p_begin * depth * kNR, depth * kNR, tiles);
      for (int w = 0; w < stream_width; ++w) store(Index(0), m, p_begin + w, static_cast<const S*>(tiles + w * m * kNR));
    }
    return p_begin;
  }
};

namespace generic {
#include "moe/kernels/tile_kernels.inc"
}  // namespace generic

#if MOE_X86_KERNELS
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace avx2 {
#include "moe/kernels/tile_kernels.inc"
}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#endif
namespace avx512 {
#include "moe/kernels/tile_kernels.inc"
}  // namespace avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // MOE_X86_KERNELS

// The best kernels for S at or below `isa` that this build has.
template <class S>
const TileKernels<S>& tile_kernels(Isa isa) {
  constexpr auto rows = std::make_index_sequence<Blocking<S>::kMR>{};
#if MOE_X86_KERNELS
  if (isa >= Isa::avx512) {
    static constexpr TileKernels<S> kernels = avx512::make_tile_kernels<Avx512Vec<S>>(Isa::avx512, rows);
    return kernels;
  }
  if (isa >= Isa::avx2) {
    static constexpr TileKernels<S> kernels = avx2::make_tile_kernels<Avx2Vec<S>>(Isa::avx2, rows);
    return kernels;
  }
#endif
  static constexpr TileKernels<S> kernels = generic::make_tile_kernels<GenericVec<S>>(Isa::generic, rows);
  return kernels;
}

}  // namespace moe::kernels::detail
