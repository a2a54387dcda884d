// The forward's products, weights stationary: an expert's weights are B, packed once into panels
// (kept by the experts as long as the weights do not change) and reused for every batch, and each
// tile of the product goes to a store functor instead of C, so that the experts apply their
// activation, bias and routing weight as the tile is stored (the "epilogue"). Decode (one or a
// few tokens per expert) reads each weight once for all of the expert's tokens, a stream at memory
// bandwidth, where a generic GEMM would repack the weights on every call. Every function is
// templated on a weight format (kernels/format.hpp); every element of a product is one sum over
// the depth in a fixed order, whatever panels or tiles a caller asks for.
#pragma once

#include "moe/detail/aligned_allocator.hpp"
#include "moe/kernels/format.hpp"
#include "moe/kernels/micro_kernel.hpp"
#include "moe/types.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

namespace moe::kernels {

// Memory to bring into L2 while a product runs: up to two contiguous runs of bytes.
struct Ahead {
  std::array<const char*, 2> data{};
  std::array<Index, 2> bytes{};
};

namespace detail {

// For every panel p ∈ [p_begin, p_end) of the packed B and every micro-panel of the packed A (m rows):
// tile = A[rows i0 … i0 + mr) · B[panel p], then store(i0, mr, p, tile), tile being [mr][kNR]
// row-major. The depth is walked in blocks of kKC, so that the block of the B panel in use stays in
// L1 while every row of A passes by; partial sums wait in tiles[m][kNR] (workspace of the caller,
// m · kNR scalars), and each tile is stored as soon as its last block is done. The order of the
// sum over k does not depend on p_begin, p_end or m.
//
// The panels are contiguous, so B is read as one stream, block after block. While the tiles of a
// block run, each prefetches its share of the block two ahead (64 KB, well inside L2): memory
// stays busy at an even pace when B comes from DRAM, whether a block is used by one tile (decode)
// or by several (a few dozen tokens per expert, where a burst for the first tile and none for the
// others would leave the multiplications and the memory taking turns).
// With `ahead`, the tiles prefetch those bytes instead, spread evenly over the call (a tile's share
// that straddles the two runs is cut at the end of the first): the sources of the next panel when
// each panel is packed just before it is used (multiply_packing_panels).
template <class F, class Store>
void multiply_packed(Index m, Index depth, const typename F::Input* a, const typename F::Weight* b, Index p_begin,
                     Index p_end, typename F::Scalar* tiles, Store&& store, const Ahead* ahead = nullptr) {
  using S = typename F::Scalar;
  constexpr int MR = F::kMR, NR = F::kNR;
  if (m == 0) return;
  depth = F::packed_depth(depth);
  const auto& kernels = F::kernels();
  // Few rows: B is not reused across row tiles and the product is a read of B from memory, which
  // several streams in flight keep busier than one.
  if (m <= kernels.stream_rows) p_begin = kernels.stream_panels(m, depth, a, b, p_begin, p_end, store);
  const Index row_tiles = (m + MR - 1) / MR, b_rows = p_end * depth;  // B: rows of kNR weights
  constexpr Index KC = F::kKC;
  const Index blocks = (p_end - p_begin) * ((depth + KC - 1) / KC);
  const Index run0 = ahead ? ahead->bytes[0] / kLine : 0, ahead_lines = ahead ? run0 + ahead->bytes[1] / kLine : 0;
  for (Index p = p_begin, block = 0; p < p_end; ++p) {
    const typename F::Weight* panel = b + p * depth * NR;
    for (Index k0 = 0; k0 < depth; k0 += KC, ++block) {
      const Index kc = std::min(KC, depth - k0), two_ahead = p * depth + k0 + kc + KC;
      const Index lines = std::clamp<Index>(b_rows - two_ahead, 0, kc) * NR * Index(sizeof(*b)) / kLine;
      const char* next = lines > 0 ? reinterpret_cast<const char*>(b + two_ahead * NR) : nullptr;
      for (Index t = 0, i0 = 0; i0 < m; ++t, i0 += MR) {
        const Index mr = std::min<Index>(MR, m - i0);
        const char* from = nullptr;  // this tile's share of the lines to prefetch
        Index count = 0;
        if (ahead) {  // a share of the runs, cut at the end of the run it starts in
          const Index share = block * row_tiles + t, shares = blocks * row_tiles;
          const Index first = ahead_lines * share / shares, last = ahead_lines * (share + 1) / shares;
          count = first < run0 ? std::min(last, run0) - first : last - first;
          from = first < run0 ? ahead->data[0] + first * kLine : ahead->data[1] + (first - run0) * kLine;
        } else if (next) {
          const Index first = lines * t / row_tiles;
          count = lines * (t + 1) / row_tiles - first;
          from = next + first * kLine;
        }
        kernels.micro[static_cast<std::size_t>(mr - 1)](kc, a + i0 * depth + k0 * mr, panel + k0 * NR, tiles + i0 * NR,
                                                        NR, k0 > 0, {from, count, count * kLine, 0});
        if (k0 + kc == depth) store(i0, mr, p, static_cast<const S*>(tiles + i0 * NR));
      }
    }
  }
}

// multiply_packed over the panels [p_begin, p_end) of a B packed one panel at a time, by
// pack(p, panel), into `panel` (depth · kNR weights) just before it is used: for weights that change
// between calls (training), where a packed copy would be written to memory only to be read once.
// source(p) says where pack(p, ·) reads (an Ahead), so that panel p + 1's source is on its way from
// memory while panel p is multiplied. The same sums as multiply_packed over the whole packed B.
template <class F, class Pack, class Source, class Store>
void multiply_packing_panels(Index m, Index depth, const typename F::Input* a, Index p_begin, Index p_end,
                             typename F::Weight* panel, typename F::Scalar* tiles, Pack&& pack, Source&& source,
                             Store&& store) {
  using S = typename F::Scalar;
  for (Index p = p_begin; p < p_end; ++p) {
    pack(p, panel);
    const Ahead next = p + 1 < p_end ? source(p + 1) : Ahead{};
    multiply_packed<F>(m, depth, a, panel, 0, 1, tiles,
                       [&](Index i0, Index mr, Index, const S* tile) { store(i0, mr, p, tile); }, &next);
  }
}

}  // namespace detail

// One projection's weights of every expert, packed as B operands (pack_b's panels) expert by expert
// on first use and kept until clear(): whoever owns the weights calls clear() whenever they may
// have changed. Experts never used are never packed (nor allocated).
template <class F>
class PackedBank {
 public:
  explicit PackedBank(Index num_experts = 0)
      : panels_(static_cast<std::size_t>(num_experts)), fresh_(static_cast<std::size_t>(num_experts), 0) {}

  using Weight = typename F::Weight;

  // Packs expert e with pack(out), out having `size` weights, unless it is packed already. Calls
  // for different e may run concurrently.
  template <class Pack>
  void ensure(Index e, Index size, Pack&& pack) {
    const auto i = static_cast<std::size_t>(e);
    if (fresh_[i]) return;
    panels_[i].resize(static_cast<std::size_t>(size));
    pack(panels_[i].data());
    fresh_[i] = 1;
  }
  bool packed(Index e) const { return fresh_[static_cast<std::size_t>(e)] != 0; }
  const Weight* operator[](Index e) const { return panels_[static_cast<std::size_t>(e)].data(); }
  // The memory the packed copies hold (kept for reuse after clear()).
  std::size_t bytes() const {
    std::size_t total = 0;
    for (const auto& panels : panels_) total += panels.size() * sizeof(Weight);
    return total;
  }
  void clear() { std::fill(fresh_.begin(), fresh_.end(), std::uint8_t{0}); }
  void drop(Index e) { fresh_[static_cast<std::size_t>(e)] = 0; }

 private:
  std::vector<moe::detail::AlignedVector<Weight>> panels_;
  std::vector<std::uint8_t> fresh_;
};

// A torch.nn.Linear weight w [out, in] (rows contiguous) as the B of x·wᵀ: panel p holds the
// outputs [p·kNR, p·kNR + kNR) as columns, [in][kNR], zeros past the last output. w: a matrix of
// F::Scalar, or any rows F::pack_weight_rows takes (Bf16Format: Bf16Rows).
template <class F, class W>
void pack_weight_panel(const W& w, Index p, typename F::Weight* panel) {
  constexpr int NR = F::kNR;
  const Index rows = std::min<Index>(NR, w.rows() - p * NR);
  if (rows < NR) std::fill_n(panel, F::packed_depth(w.cols()) * NR, typename F::Weight(0));
  F::pack_weight_rows(w.middleRows(p * NR, rows), panel, 0);
}

// The rows of w that pack_weight_panel(w, p, ·) reads.
template <class F>
Ahead weight_panel_source(ConstMatrixRef<typename F::Scalar> w, Index p) {
  using S = typename F::Scalar;
  constexpr int NR = F::kNR;
  const Index rows = std::min<Index>(NR, w.rows() - p * NR);
  return {{reinterpret_cast<const char*>(w.data() + p * NR * w.outerStride())},
          {rows * w.outerStride() * Index(sizeof(S))}};
}

// Scalars of work multiply_bank needs for m rows of A and the given depth: the tiles [m][kNR], then
// room for one panel of weights.
template <class F>
constexpr Index bank_work_size(Index m, Index depth) {
  constexpr auto scalar = Index(sizeof(typename F::Scalar)), weight = Index(sizeof(typename F::Weight));
  return m * F::kNR + (F::packed_depth(depth) * F::kNR * weight + scalar - 1) / scalar;
}

// store(i0, mr, p, tile) for the panels [p_begin, p_end) of expert e's B (m rows of the packed A):
// from the bank if e is packed there, or else (training) each panel packed by pack(p, panel) as it
// is used, the next one's source(p) on its way meanwhile (multiply_packing_panels; work holds
// m · kNR scalars of tiles, then one panel of weights). The same panels and the same sums either way.
template <class F, class Pack, class Source, class Store>
void multiply_bank(const PackedBank<F>& bank, Index e, Index m, Index depth, const typename F::Input* a, Index p_begin,
                   Index p_end, typename F::Scalar* work, Pack&& pack, Source&& source, Store&& store) {
  if (bank.packed(e)) return detail::multiply_packed<F>(m, depth, a, bank[e], p_begin, p_end, work, store);
  auto* const panel = reinterpret_cast<typename F::Weight*>(work + m * F::kNR);
  detail::multiply_packing_panels<F>(m, depth, a, p_begin, p_end, panel, work, pack, source, store);
}

// The store of an output projection's tile: rows [i0, i0 + mr) of y, columns [p·kNR, …) =
// scale[row] · (tile + bias) — scale (the routing weights, per row from i0) and bias optional.
template <class F>
void store_output_tile(MatrixRef<typename F::Scalar> y, Index i0, Index mr, Index p, const typename F::Scalar* tile,
                       const typename F::Scalar* scale, const typename F::Scalar* bias) {
  using S = typename F::Scalar;
  constexpr int NR = F::kNR;
  const Index j0 = p * NR, cols = std::min<Index>(NR, y.cols() - j0);
  for (Index i = 0; i < mr; ++i) {
    const S s = scale ? scale[i0 + i] : S(1);
    S* const row = &y(i0 + i, j0);
    if (bias)
      for (Index j = 0; j < cols; ++j) row[j] = s * (tile[i * NR + j] + bias[j0 + j]);
    else
      for (Index j = 0; j < cols; ++j) row[j] = s * tile[i * NR + j];
  }
}

}  // namespace moe::kernels
