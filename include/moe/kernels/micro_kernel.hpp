// The register-blocked micro-kernels of the packed products (kernels/packed_product.hpp,
// kernels/gemm.hpp): an mr × kNR tile of C stays in registers while a micro-panel of packed A and
// a block of a packed B panel stream past once. Every element of a tile is one sum over the depth
// in a fixed order, whatever tiles or threads the callers use.
//
// One table of kernels per ISA (kernels/tile_kernels.inc compiled for each), chosen at run time:
// tile_kernels<S>(isa) is the best table at or below `isa` that this build has (avx512bf16 has
// its own only for bf16 weights: the others run avx512's).
#pragma once

#include "moe/isa.hpp"
#include "moe/kernels/blocking.hpp"
#include "moe/kernels/vectors.hpp"
#include "moe/types.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace moe::kernels::detail {

// Cache lines to prefetch: `count` lines from `at`, in runs of `run` bytes that start `stride`
// bytes apart (rows of a matrix; one contiguous run has run = count · kLine).
struct Lines {
  const char* at = nullptr;
  Index count = 0, run = 0, stride = 0;
};

// Depths per row of a weight panel: 1 when the weights are S, 2 for bfloat16 (std::uint16_t)
// panels, whose rows hold pairs of depths ([depth/2][kNR][2], so that the bf16 dot-product and
// matrix units can read them).
template <class S, class W>
inline constexpr int kSteps = std::is_same_v<S, W> ? 1 : 2;

// One ISA's kernels for tiles of S from weights W.
//   micro[mr − 1](depth, a, b, tile, tile_stride, accumulate, ahead), mr ≤ kMR:
//     tile[i][c] (+)= Σ_k a[k·mr + i] · B(k, c) (see micro_kernel in tile_kernels.inc);
//   decode, for m ≤ stream_rows rows: stream_panels() reads stream_width panels at a time, so that
//     several streams from memory are in flight (benchmarks/README.md has the measurements behind
//     the choice); each tile has the same bits as micro[m − 1]'s over the whole depth.
template <class S, class W = S>
struct TileKernels {
  using Micro = void (*)(Index, const S*, const W*, S*, Index, bool, const Lines&);
  using Stream = void (*)(Index, const S*, const W*, Index, S*);
  static constexpr int kMR = Blocking<S>::kMR, kNR = Blocking<S>::kNR;

  Isa isa;
  bool a_pairs;  // the packed A holds bf16 pairs (kDotPairs in tile_kernels.inc; Bf16Format::pack_input)
  std::array<Micro, kMR> micro;
  int stream_width, stream_rows;
  std::array<Stream, kMR> stream;  // [m − 1] for m ≤ stream_rows
  // out[i] = silu(h1[i]) · h3[i] for i < n (a SwiGLU tile's epilogue) at this ISA's width, or null
  // where the experts keep Eigen's (the generic path, double).
  using SiluGate = void (*)(Index n, const S* h1, const S* h3, S* out);
  SiluGate silu_gate;

  // store(0, m, p, tile) for the panels [p_begin, p_begin + stream_width·⌊(p_end − p_begin) /
  // stream_width⌋) of B (packed panels of `depth` rows), m ≤ stream_rows; returns where it stopped.
  template <class Store>
  Index stream_panels(Index m, Index depth, const S* a, const W* b, Index p_begin, Index p_end, Store&& store) const {
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
MOE_TARGET_BEGIN(MOE_TARGET_AVX2)
namespace avx2 {
#include "moe/kernels/tile_kernels.inc"
}  // namespace avx2
MOE_TARGET_END
MOE_TARGET_BEGIN(MOE_TARGET_AVX512)
namespace avx512 {
#include "moe/kernels/tile_kernels.inc"
}  // namespace avx512
MOE_TARGET_END
MOE_TARGET_BEGIN(MOE_TARGET_AVX512BF16)
namespace avx512bf16 {
#include "moe/kernels/tile_kernels.inc"
}  // namespace avx512bf16
MOE_TARGET_END
#endif  // MOE_X86_KERNELS

// The best kernels for S from weights W at or below `isa` that this build has.
template <class S, class W = S>
const TileKernels<S, W>& tile_kernels(Isa isa) {
  constexpr auto rows = std::make_index_sequence<Blocking<S>::kMR>{};
#if MOE_X86_KERNELS
  if constexpr (std::is_same_v<S, float> && std::is_same_v<W, std::uint16_t>)
    if (isa >= Isa::avx512bf16) {
      static constexpr TileKernels<S, W> kernels = avx512bf16::make_tile_kernels<Avx512Bf16Vec, W>(Isa::avx512bf16, rows);
      return kernels;
    }
  if (isa >= Isa::avx512) {
    static constexpr TileKernels<S, W> kernels = avx512::make_tile_kernels<Avx512Vec<S>, W>(Isa::avx512, rows);
    return kernels;
  }
  if (isa >= Isa::avx2) {
    static constexpr TileKernels<S, W> kernels = avx2::make_tile_kernels<Avx2Vec<S>, W>(Isa::avx2, rows);
    return kernels;
  }
#endif
  static constexpr TileKernels<S, W> kernels = generic::make_tile_kernels<GenericVec<S>, W>(Isa::generic, rows);
  return kernels;
}

}  // namespace moe::kernels::detail
