// Packing the operands of the kernels' products, GotoBLAS/BLIS style (Goto & van de Geijn 2008,
// "Anatomy of high-performance matrix multiplication"): B into panels of kNR columns stored
// k-major ([depth][kNR]), A into micro-panels of at most kMR rows stored k-major ([depth][mr]), so
// that the micro-kernel reads both as two contiguous streams. Packing copies values: it changes
// no bits.
#pragma once

#include "moe/kernels/blocking.hpp"
#include "moe/types.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace moe::kernels {

// element (i, j) = data[i·row_stride + j·col_stride]: a row-major matrix, or its transpose.
template <class S>
struct Strided {
  const S* data;
  Index row_stride, col_stride;
  S operator()(Index i, Index j) const { return data[i * row_stride + j * col_stride]; }
  Strided transposed() const { return {data, col_stride, row_stride}; }
};

template <class S>
Strided<S> strided(ConstMatrixRef<S> m) {
  return {m.data(), m.outerStride(), 1};
}

namespace detail {

// to[0, N) = from[0, N) as a few vector moves (a loop over N elements becomes scalar moves, as the
// compiler must assume the two overlap; std::copy_n of a run-time count is a memmove call).
template <int N, class S>
void copy_fixed(const S* from, S* to) {
  std::memcpy(to, from, N * sizeof(S));
}

// Writes the rows of w [count, depth] as columns [column, column + count) of a panel [depth][kNR]
// (the panel's other columns are left alone): whole P × P blocks through registers, the edges
// element by element.
template <class S>
void pack_rows_as_columns(ConstMatrixRef<S> w, S* panel, Index column) {
  constexpr int P = Blocking<S>::kPacket, NR = Blocking<S>::kNR;
  const Index rows = w.rows(), depth = w.cols(), whole_rows = rows / P * P, whole_depth = depth / P * P;
  for (Index r0 = 0; r0 < whole_rows; r0 += P)
    for (Index k0 = 0; k0 < whole_depth; k0 += P) {
      const auto block = simd::load_transposed<S>(w.data() + r0 * w.outerStride() + k0, w.outerStride(), P);
      for (int j = 0; j < P; ++j) simd::store<S>(panel + (k0 + j) * NR + column + r0, block.packet[j]);
    }
  for (Index k = 0; k < depth; ++k)
    for (Index r = k < whole_depth ? whole_rows : 0; r < rows; ++r) panel[k * NR + column + r] = w(r, k);
}

// Packs the depth × n matrix B into num_panels(n) panels [depth][kNR] at out (num_panels(n) · depth
// · kNR scalars; the last panel's missing columns are zeros).
template <class S>
void pack_b(Strided<S> b, Index depth, Index n, S* out) {
  constexpr int NR = Blocking<S>::kNR;
  if (b.col_stride == 1) {  // rows of B are contiguous: each row of a panel is a copy
    constexpr Index kBlock = 16;  // rows per pass, so that reading down the panels stays on few pages
    for (Index k0 = 0; k0 < depth; k0 += kBlock)
      for (Index p = 0; p * NR < n; ++p) {
        const Index cols = std::min<Index>(NR, n - p * NR);
        for (Index k = k0; k < std::min(depth, k0 + kBlock); ++k) {
          const S* from = b.data + k * b.row_stride + p * NR;
          S* to = out + p * depth * NR + k * NR;
          if (cols == NR) {
            copy_fixed<NR>(from, to);
          } else {
            std::copy(from, from + cols, to);
            std::fill(to + cols, to + NR, S(0));
          }
        }
      }
    return;
  }
  for (Index p = 0; p * NR < n; ++p) {
    const Index cols = std::min<Index>(NR, n - p * NR);
    S* panel = out + p * depth * NR;
    if (cols < NR) Eigen::Map<RowMatrix<S>>(panel, depth, NR).setZero();
    if (b.row_stride == 1) {  // columns of B are rows of a row-major W (B = Wᵀ, as in x·Wᵀ)
      const Eigen::Map<const RowMatrix<S>, 0, Eigen::OuterStride<>> w(b.data + p * NR * b.col_stride, cols, depth,
                                                                     Eigen::OuterStride<>(b.col_stride));
      pack_rows_as_columns<S>(w, panel, 0);
    } else {
      for (Index k = 0; k < depth; ++k)
        for (Index c = 0; c < cols; ++c) panel[k * NR + c] = b(k, p * NR + c);
    }
  }
}

// Packs the m × depth matrix A into micro-panels of kMR rows (the last one has m mod kMR rows):
// micro-panel q holds rows [q·kMR, q·kMR + mr) as [depth][mr] at out + q·kMR·depth, so the packed
// A takes exactly m · depth scalars.
template <class S>
void pack_a(Strided<S> a, Index m, Index depth, S* out) {
  constexpr int MR = Blocking<S>::kMR, P = Blocking<S>::kPacket;
  const Index whole_depth = depth / P * P;
  if (a.row_stride == 1) {  // A = Xᵀ of a row-major X: row k of X holds depth k of every micro-panel
    // Row by row, so X is read in order (a micro-panel at a time would read a line of every row of
    // X, a page apart).
    const Index whole = m / MR * MR;
    for (Index k = 0; k < depth; ++k) {
      const S* from = a.data + k * a.col_stride;
      for (Index q0 = 0; q0 < whole; q0 += MR) copy_fixed<MR>(from + q0, out + q0 * depth + k * MR);
      if (whole < m) std::copy_n(from + whole, m - whole, out + whole * depth + k * (m - whole));
    }
    return;
  }
  for (Index q0 = 0; q0 < m; q0 += MR) {
    const Index mr = std::min<Index>(MR, m - q0);
    S* panel = out + q0 * depth;
    if (a.col_stride == 1) {  // rows of A contiguous: P × P blocks through registers
      for (Index k0 = 0; k0 < whole_depth; k0 += P)
        for (Index r0 = 0; r0 < mr; r0 += P) {
          const Index rb = std::min<Index>(P, mr - r0);
          const auto block = simd::load_transposed<S>(a.data + (q0 + r0) * a.row_stride + k0, a.row_stride, rb);
          for (int j = 0; j < P; ++j) {
            alignas(64) S column[P];
            simd::store<S>(column, block.packet[j]);
            if (MR <= P && rb == MR) {  // a whole micro-panel (kMR ≤ the packet size)
              copy_fixed<MR>(column, panel + (k0 + j) * MR);
            } else {
              std::copy_n(column, rb, panel + (k0 + j) * mr + r0);
            }
          }
        }
      for (Index k = whole_depth; k < depth; ++k)
        for (Index i = 0; i < mr; ++i) panel[k * mr + i] = a(q0 + i, k);
    } else {
      for (Index i = 0; i < mr; ++i)
        for (Index k = 0; k < depth; ++k) panel[k * mr + i] = a(q0 + i, k);
    }
  }
}

}  // namespace detail

// to[i·to_stride + c] = from[i·from_stride + c] for i < rows, c < cols (a multiple of kPacket), with non-temporal
// stores where the rows of `to` are aligned to a packet: for results that are read much later
// (what a training forward keeps for backward), which ordinary stores would first read from memory
// (a store to a line not in cache fetches it) and which would push the data in use out of cache.
// Call stream_fence() before anything else reads them.
template <class S>
void stream_rows(const S* from, Index from_stride, Index rows, Index cols, S* to, Index to_stride) {
  namespace simd = detail::simd;
  constexpr auto bytes = Index(sizeof(simd::Packet<S>));
  const bool aligned = reinterpret_cast<std::uintptr_t>(to) % bytes == 0 && to_stride * Index(sizeof(S)) % bytes == 0;
  for (Index i = 0; i < rows; ++i)
    for (Index c = 0; c < cols; c += Blocking<S>::kPacket)
      simd::store_streaming<S>(to + i * to_stride + c, simd::load<S>(from + i * from_stride + c), aligned);
}

// Orders stream_rows' stores before the stores that follow (another thread reads them after one).
inline void stream_fence() { detail::simd::stream_fence(); }

}  // namespace moe::kernels
