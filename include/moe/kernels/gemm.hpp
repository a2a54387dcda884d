// The backward's GEMM: C (+)= A·B for products with no operand worth keeping packed (weight
// gradients, and products by weights read by columns, which change on every step anyway). Both
// operands are packed block by block (GotoBLAS's loop nest) into a workspace the caller gives, so
// that a packed block is used while it is still in cache; C's columns can be split over threads
// with the same bits. Always in the layer's scalar type (training keeps fp32 master weights).
#pragma once

#include "moe/detail/parallel.hpp"
#include "moe/errors.hpp"
#include "moe/kernels/blocking.hpp"
#include "moe/kernels/micro_kernel.hpp"
#include "moe/kernels/packing.hpp"
#include "moe/types.hpp"

#include <algorithm>
#include <cstddef>
#include <span>
#include <utility>

namespace moe::kernels {
namespace detail {

// c (+)= A·B for one of gemm()'s blocks: A packed by pack_a (m × depth), B by pack_b (depth × n),
// c [m, n] with rows c_stride apart. As in multiply_packed, a block of a B panel stays in L1 while
// the micro-panels of A pass by; but whole tiles are summed straight from and into c, and each
// prefetches the rows of c the next tile will use (a weight gradient is tens of MB, so its tiles
// come from memory, and its rows are pages apart). Tiles at the edges go through `tile` (kMR · kNR
// scalars).
template <class S>
void multiply_into(Index m, Index n, Index depth, const S* a, const S* b, S* c, Index c_stride, bool accumulate,
                   S* tile) {
  constexpr int MR = Blocking<S>::kMR, NR = Blocking<S>::kNR;
  constexpr Index KC = Blocking<S>::kKC, row_bytes = std::max<Index>(kLine, NR * Index(sizeof(S)) / kLine * kLine);
  const auto& kernels = tile_kernels<S>(active_isa()).micro;
  const auto rows_of_c = [&](const S* at, Index rows) {
    return Lines{reinterpret_cast<const char*>(at), rows * row_bytes / kLine, row_bytes, c_stride * Index(sizeof(S))};
  };
  const Index panels = num_panels<S>(n);
  for (Index p = 0; p < panels; ++p) {
    S* const c_panel = c + p * NR;
    const Index cols = std::min<Index>(NR, n - p * NR);
    for (Index k0 = 0; k0 < depth; k0 += KC) {
      const Index kc = std::min(KC, depth - k0);
      const bool add = accumulate || k0 > 0, panel_done = k0 + kc == depth;
      for (Index i0 = 0; i0 < m; i0 += MR) {
        const Index mr = std::min<Index>(MR, m - i0);
        Lines next;  // the tile below, or the first of the next panel once this one is done
        if (i0 + MR < m)
          next = rows_of_c(c_panel + (i0 + MR) * c_stride, std::min<Index>(MR, m - i0 - MR));
        else if (panel_done && p + 1 < panels)
          next = rows_of_c(c_panel + NR, std::min<Index>(MR, m));
        const S* const a_tile = a + i0 * depth + k0 * mr;
        const S* const b_block = b + (p * depth + k0) * NR;
        if (mr == MR && cols == NR) {
          kernels[MR - 1](kc, a_tile, b_block, c_panel + i0 * c_stride, c_stride, add, next);
          continue;
        }
        // An edge tile goes through `tile` with the same arithmetic as a whole one (the partial sum
        // loaded, then every product added to it in turn), so that an element's bits do not depend
        // on whether it sits at an edge: a row of C is the same whatever other rows A has.
        Eigen::Map<RowMatrix<S>, 0, Eigen::OuterStride<>> t(tile, mr, cols, Eigen::OuterStride<>(NR));
        Eigen::Map<RowMatrix<S>, 0, Eigen::OuterStride<>> to(c_panel + i0 * c_stride, mr, cols, Eigen::OuterStride<>(c_stride));
        if (add) t = to;
        kernels[static_cast<std::size_t>(mr - 1)](kc, a_tile, b_block, tile, NR, add, next);
        to = t;
      }
    }
  }
}

// gemm()'s blocks (GotoBLAS's loop nest): a kc × nc block of B is packed once and stays in L2
// while kMC × kc blocks of A pass through L1/L2.
//   kc ≤ kKC, twice the micro-kernel's L1 block: a weight gradient's depth is one expert's tokens,
//     ~256 at mixtral-mini T=1024 and more for the busiest experts, and every depth block is one
//     more pass over C in memory;
//   nc: as many panels as keep the B block within 1 MB, so that a shallow product (a weight
//     gradient again) packs A once for all of a wide C rather than once per few hundred columns.
// (benchmarks/README.md, "How the layer gets there", has the measurements.)
template <class S>
struct GemmBlocks {
  static constexpr Index kMC = 12 * Blocking<S>::kMR;
  static constexpr Index kKC = 2 * Blocking<S>::kKC;
  static constexpr Index nc(Index kc) {
    constexpr Index kBytes = Index(1) << 20, NR = Blocking<S>::kNR;
    return std::max<Index>(1, kBytes / (std::max<Index>(kc, 1) * Index(sizeof(S)) * NR)) * NR;
  }
};

// Columns of C per thread of a gemm() on `threads` threads: whole panels, as evenly as they go.
template <class S>
constexpr Index gemm_column_range(Index n, int threads) {
  const Index panels = std::max<Index>(num_panels<S>(n), 1);
  const Index ranges = std::clamp<Index>(threads, 1, panels);
  return std::min(n, (panels + ranges - 1) / ranges * Blocking<S>::kNR);
}

}  // namespace detail

// Scratch scalars gemm() needs for C [m, n] and the given depth (on `threads` threads: a share per
// thread when the columns are split, one workspace when they are too few to split).
template <class S>
constexpr Index gemm_workspace_size(Index m, Index n, Index depth, int threads = 1) {
  using detail::GemmBlocks;
  if (const Index range = detail::gemm_column_range<S>(n, threads); range < n)
    return threads * gemm_workspace_size<S>(m, range, depth);
  const Index kc = std::min(GemmBlocks<S>::kKC, depth), mc = std::min(GemmBlocks<S>::kMC, m);
  const Index nc = num_panels<S>(std::min(GemmBlocks<S>::nc(kc), n)) * Blocking<S>::kNR;
  return kc * nc + mc * kc + Blocking<S>::kMR * Blocking<S>::kNR;
}

// C = A·B, or C += A·B when accumulate: A m × depth, B depth × n, C [m, n] (any strides), for
// products with no operand worth keeping packed (the backward's: weight gradients, and products by
// weights read by columns, which change on every step anyway). Both operands are packed
// block by block into workspace (≥ gemm_workspace_size(m, n, depth, threads) scalars), so a packed
// block is used while it is still in cache. The sum over the depth runs block after block in a fixed
// order. With threads > 1, C's columns are split into gemm_column_range()s, one gemm per range on
// its own share of the workspace: each element is the same sum, whatever the number of threads.
template <class S>
void gemm(Strided<S> a, Strided<S> b, Index depth, MatrixRef<S> c, bool accumulate, std::span<S> workspace,
          int threads = 1) {
  constexpr int NR = Blocking<S>::kNR;
  using detail::GemmBlocks;
  constexpr Index KC = GemmBlocks<S>::kKC, MC = GemmBlocks<S>::kMC;
  const Index m = c.rows(), n = c.cols();
  if (m == 0 || n == 0) return;
  if (const Index range = detail::gemm_column_range<S>(n, threads); range < n) {
    const auto share = static_cast<std::size_t>(gemm_workspace_size<S>(m, range, depth));
    MOE_ASSERT(workspace.size() >= share * static_cast<std::size_t>(threads));
    moe::detail::parallel_for((n + range - 1) / range, threads, [&](Index r, int thread) {
      const Index j0 = r * range;
      gemm<S>(a, Strided<S>{b.data + j0 * b.col_stride, b.row_stride, b.col_stride}, depth,
              c.middleCols(j0, std::min(range, n - j0)), accumulate,
              workspace.subspan(static_cast<std::size_t>(thread) * share, share));
    });
    return;
  }
  if (depth == 0) {
    if (!accumulate) c.setZero();
    return;
  }
  MOE_ASSERT(static_cast<Index>(workspace.size()) >= gemm_workspace_size<S>(m, n, depth));
  const Index NC = GemmBlocks<S>::nc(std::min(KC, depth));
  S* const packed_b = workspace.data();
  S* const packed_a = packed_b + std::min(KC, depth) * num_panels<S>(std::min(NC, n)) * NR;
  S* const tile = packed_a + std::min(MC, m) * std::min(KC, depth);
  for (Index j0 = 0; j0 < n; j0 += NC) {
    const Index nc = std::min(NC, n - j0);
    for (Index k0 = 0; k0 < depth; k0 += KC) {
      const Index kc = std::min(KC, depth - k0);
      const bool add = accumulate || k0 > 0;
      detail::pack_b(Strided<S>{b.data + k0 * b.row_stride + j0 * b.col_stride, b.row_stride, b.col_stride}, kc, nc, packed_b);
      for (Index i0 = 0; i0 < m; i0 += MC) {
        const Index mc = std::min(MC, m - i0);
        detail::pack_a(Strided<S>{a.data + i0 * a.row_stride + k0 * a.col_stride, a.row_stride, a.col_stride}, mc, kc, packed_a);
        detail::multiply_into<S>(mc, nc, kc, packed_a, packed_b, &c(i0, j0), c.outerStride(), add, tile);
      }
    }
  }
}

}  // namespace moe::kernels
