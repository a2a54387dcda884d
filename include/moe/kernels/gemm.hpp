// Packed matrix products for the experts, on Eigen's packet primitives (SSE, AVX, AVX-512, NEON…
// whatever Eigen vectorises for; no intrinsics of our own).
//
// The structure is GotoBLAS/BLIS's (Goto & van de Geijn 2008, "Anatomy of high-performance matrix
// multiplication"): B is packed into panels of kNR columns stored k-major ([depth][kNR]), A into
// micro-panels of at most kMR rows stored k-major ([depth][mr]), and a register-blocked micro-kernel
// keeps an mr × kNR tile of C in registers while it streams both once. What differs from a BLAS:
//   - the experts' weights are B, packed once and reused for every batch (the experts keep them);
//   - the micro-kernel hands its tile to a store functor instead of writing C, so the activation of a
//     gated expert or the routing weight is applied as the tile is stored (the "epilogue");
//   - decode (one or a few tokens per expert) reads each weight once for all of the expert's tokens
//     — a stream at memory bandwidth, where a generic GEMM would repack the weights on every call:
//     tiles of mr = n_e rows, and up to 3 rows (AVX-512) four panels at a time, as four streams.
// Every element of C is one dot product over the whole depth in a fixed order, whatever tiles or
// threads the caller uses: results are bit-identical for any partition of the work.
#pragma once

#include "moe/detail/aligned_allocator.hpp"
#include "moe/detail/parallel.hpp"
#include "moe/errors.hpp"
#include "moe/types.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

namespace moe::kernels {

template <class S>
struct Blocking {
  using Packet = typename Eigen::internal::packet_traits<S>::type;
  static constexpr int kPacket = Eigen::internal::unpacket_traits<Packet>::size;
  static constexpr int kNR = 2 * kPacket;  // columns of a tile: two packets
  // Rows of a tile: 2·kMR accumulators, plus two B packets and a broadcast, fit the register file.
  static constexpr int kMR = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32 ? 12 : 6;
  // Depth of a block of a B panel: 32 KB, which stays in L1 while the rows of A pass by.
  static constexpr Index kKC = 32768 / (kNR * static_cast<Index>(sizeof(S)));
};

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

// Panels of kNR columns needed for n columns (the last one zero-padded).
template <class S>
constexpr Index num_panels(Index n) {
  return (n + Blocking<S>::kNR - 1) / Blocking<S>::kNR;
}

// The P × P block at from (rows `stride` apart; rows from `rows` on read as zeros), transposed in
// registers with Eigen's ptranspose: packet j of the result is column j of the block.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"  // Eigen's packets are attributed vector types
#endif
template <class S>
auto load_transposed(const S* from, Index stride, Index rows) {
  using Packet = typename Blocking<S>::Packet;
  constexpr int P = Blocking<S>::kPacket;
  Eigen::internal::PacketBlock<Packet, P> block;
  for (int i = 0; i < P; ++i)
    block.packet[i] = i < rows ? Eigen::internal::ploadu<Packet>(from + i * stride) : Eigen::internal::pset1<Packet>(S(0));
  Eigen::internal::ptranspose(block);
  return block;
}

// to[i·to_stride + c] = from[i·from_stride + c] for i < rows, c < kPacket, with non-temporal
// stores where the rows of `to` are aligned to a packet: for results that are read much later
// (what a training forward keeps for backward), which ordinary stores would first read from memory
// (a store to a line not in cache fetches it) and which would push the data in use out of cache.
// Call stream_fence() before anything else reads them. Plain stores where there is no such
// instruction (or `to` is not aligned).
template <class S>
void stream_rows(const S* from, Index from_stride, Index rows, S* to, Index to_stride) {
  using Packet = typename Blocking<S>::Packet;
  const auto store = [](S* at, Packet p) {
#if defined(EIGEN_VECTORIZE_AVX512)
    if constexpr (std::is_same_v<Packet, Eigen::internal::Packet16f>) return _mm512_stream_ps(at, p);
    if constexpr (std::is_same_v<Packet, Eigen::internal::Packet8d>) return _mm512_stream_pd(at, p);
#elif defined(EIGEN_VECTORIZE_AVX)
    if constexpr (std::is_same_v<Packet, Eigen::internal::Packet8f>) return _mm256_stream_ps(at, p);
    if constexpr (std::is_same_v<Packet, Eigen::internal::Packet4d>) return _mm256_stream_pd(at, p);
#elif defined(EIGEN_VECTORIZE_SSE2)
    if constexpr (std::is_same_v<Packet, Eigen::internal::Packet4f>) return _mm_stream_ps(at, p);
    if constexpr (std::is_same_v<Packet, Eigen::internal::Packet2d>) return _mm_stream_pd(at, p);
#endif
    Eigen::internal::pstore(at, p);
  };
  const bool aligned = reinterpret_cast<std::uintptr_t>(to) % sizeof(Packet) == 0 &&
                       to_stride * Index(sizeof(S)) % Index(sizeof(Packet)) == 0;
  for (Index i = 0; i < rows; ++i) {
    const Packet p = Eigen::internal::ploadu<Packet>(from + i * from_stride);
    if (aligned)
      store(to + i * to_stride, p);
    else
      Eigen::internal::pstoreu(to + i * to_stride, p);
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// Orders stream_rows' stores before the stores that follow (another thread's reads of them
// come after some such store: a lock, an atomic, the end of a parallel region).
inline void stream_fence() {
#if defined(EIGEN_VECTORIZE_SSE2)
  _mm_sfence();
#endif
}

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
      const auto block = load_transposed<S>(w.data() + r0 * w.outerStride() + k0, w.outerStride(), P);
      for (int j = 0; j < P; ++j) Eigen::internal::pstoreu(panel + (k0 + j) * NR + column + r0, block.packet[j]);
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
    // Row by row, so X is read in order (a micro-panel at a time read a line of every row of X, a
    // page apart: packing d_h1ᵀ for d_w1 += d_h1ᵀ·x took 2.6 cycles a value, now 2.1).
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
          const auto block = load_transposed<S>(a.data + (q0 + r0) * a.row_stride + k0, a.row_stride, rb);
          for (int j = 0; j < P; ++j) {
            alignas(64) S column[P];
            Eigen::internal::pstore(column, block.packet[j]);
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

// Decode: with at most kMR / kStreams rows, kStreams panels are read at a time (as many
// accumulators as the main kernel). Measured in bench_layer (mixtral-mini, alternating builds):
// T:1 6.8/6.5/7.0 ms with one stream, 6.3/5.7/6.4 with four, and no difference at T:16 from
// extending it to 6 rows with two streams — so four streams up to 3 rows (AVX-512), and the
// main kernel above that.
inline constexpr int kStreams = 4;

inline constexpr Index kLine = 64;  // bytes of a cache line

// Cache lines to prefetch: `count` lines from `at`, in runs of `run` bytes that start `stride`
// bytes apart (rows of a matrix; one contiguous run has run = count · kLine).
struct Lines {
  const char* at = nullptr;
  Index count = 0, run = 0, stride = 0;
};

namespace micro {

// Asks for the cache line at p (into L2 where the compiler lets us say so: the block it belongs
// to is used after the one now in L1).
inline void prefetch_l2(const void* p) {
#if defined(__GNUC__)
  __builtin_prefetch(p, 0, 2);
#else
  Eigen::internal::prefetch(static_cast<const char*>(p));
#endif
}

// tile[i][c] (+)= Σ_k a[k·MR + i] · b[k·kNR + c]   for i < MR, c < kNR; row i of the tile starts
// at tile + i · tile_stride, and is added to when accumulate, overwritten otherwise. On the way it
// prefetches the lines `ahead`, spread evenly over its depth.
template <class S, int MR>
void micro_kernel(Index depth, const S* __restrict a, const S* __restrict b, S* __restrict tile, Index tile_stride,
                  bool accumulate, const Lines& ahead) {
  using Eigen::internal::ploadu;
  using Eigen::internal::pmadd;
  using Eigen::internal::pset1;
  using Packet = typename Blocking<S>::Packet;
  constexpr int P = Blocking<S>::kPacket;
  Packet c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    c0[i] = accumulate ? ploadu<Packet>(tile + i * tile_stride) : pset1<Packet>(S(0));
    c1[i] = accumulate ? ploadu<Packet>(tile + i * tile_stride + P) : pset1<Packet>(S(0));
  }
  // By reference: a 32-byte struct passed by value was copied through a vector register from the
  // caller's scalar stores, a load that waits until the previous tile's stores have drained (the
  // forward's kernels, 256 rows per expert: 2.6-2.9 % slower in an in-process A/B).
  const char* at = ahead.at;
  const Index count = ahead.count, run = ahead.run, stride = ahead.stride;
  Index owed = 0, offset = 0;  // lines owed, in units of 1/depth; where the next one is in its run
  for (Index k = 0; k < depth; ++k, a += MR, b += 2 * P) {
    for (owed += count; owed >= depth; owed -= depth) {
      prefetch_l2(at + offset);
      if ((offset += kLine) == run) offset = 0, at += stride;
    }
    const Packet b0 = ploadu<Packet>(b), b1 = ploadu<Packet>(b + P);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const Packet ai = pset1<Packet>(a[i]);
      c0[i] = pmadd(ai, b0, c0[i]);
      c1[i] = pmadd(ai, b1, c1[i]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    Eigen::internal::pstoreu(tile + i * tile_stride, c0[i]);
    Eigen::internal::pstoreu(tile + i * tile_stride + P, c1[i]);
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
  using Eigen::internal::ploadu;
  using Eigen::internal::pmadd;
  using Eigen::internal::pset1;
  using Packet = typename Blocking<S>::Packet;
  constexpr int P = Blocking<S>::kPacket, W = kStreams;
  Packet c[W][MR][2];
#pragma GCC unroll 16
  for (int w = 0; w < W; ++w)
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) c[w][i][0] = c[w][i][1] = pset1<Packet>(S(0));
  for (Index k = 0; k < depth; ++k, a += MR, b += 2 * P) {
#pragma GCC unroll 16
    for (int w = 0; w < W; ++w) {
      const Packet b0 = ploadu<Packet>(b + w * panel_size), b1 = ploadu<Packet>(b + w * panel_size + P);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const Packet ai = pset1<Packet>(a[i]);
        c[w][i][0] = pmadd(ai, b0, c[w][i][0]);
        c[w][i][1] = pmadd(ai, b1, c[w][i][1]);
      }
    }
  }
#pragma GCC unroll 16
  for (int w = 0; w < W; ++w)
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      Eigen::internal::pstoreu(tiles + (w * MR + i) * 2 * P, c[w][i][0]);
      Eigen::internal::pstoreu(tiles + (w * MR + i) * 2 * P + P, c[w][i][1]);
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

}  // namespace micro

// Memory to bring into L2 while a product runs: up to two contiguous runs of bytes.
struct Ahead {
  std::array<const char*, 2> data{};
  std::array<Index, 2> bytes{};
};

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
template <class S, class Store>
void multiply_packed(Index m, Index depth, const S* a, const S* b, Index p_begin, Index p_end, S* tiles,
                     Store&& store, const Ahead* ahead = nullptr) {
  constexpr int MR = Blocking<S>::kMR, NR = Blocking<S>::kNR;
  constexpr Index KC = Blocking<S>::kKC;
  static constexpr auto kernels = micro::micro_kernels<S>(std::make_index_sequence<MR>{});
  if (m == 0) return;
  // Few rows: B is not reused across row tiles and the product is a read of B from memory, which
  // several streams in flight keep busier than one.
  if (m <= MR / kStreams) p_begin = micro::stream_panels<S>(m, depth, a, b, p_begin, p_end, store);
  const Index row_tiles = (m + MR - 1) / MR, stream_rows = p_end * depth;  // B: rows of kNR scalars
  const Index blocks = (p_end - p_begin) * ((depth + KC - 1) / KC);
  const Index run0 = ahead ? ahead->bytes[0] / kLine : 0, ahead_lines = ahead ? run0 + ahead->bytes[1] / kLine : 0;
  for (Index p = p_begin, block = 0; p < p_end; ++p) {
    const S* panel = b + p * depth * NR;
    for (Index k0 = 0; k0 < depth; k0 += KC, ++block) {
      const Index kc = std::min(KC, depth - k0), two_ahead = p * depth + k0 + kc + KC;
      const Index lines = std::clamp<Index>(stream_rows - two_ahead, 0, kc) * NR * Index(sizeof(S)) / kLine;
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
        kernels[static_cast<std::size_t>(mr - 1)](kc, a + i0 * depth + k0 * mr, panel + k0 * NR, tiles + i0 * NR, NR,
                                                  k0 > 0, {from, count, count * kLine, 0});
        if (k0 + kc == depth) store(i0, mr, p, static_cast<const S*>(tiles + i0 * NR));
      }
    }
  }
}

// multiply_packed over the panels [p_begin, p_end) of a B packed one panel at a time, by
// pack(p, panel), into `panel` (depth · kNR scalars) just before it is used: for weights that change
// between calls (training), where a packed copy would be written to memory only to be read once.
// source(p) says where pack(p, ·) reads (an Ahead), so that panel p + 1's source is on its way from
// memory while panel p is multiplied. The same sums as multiply_packed over the whole packed B.
template <class S, class Pack, class Source, class Store>
void multiply_packing_panels(Index m, Index depth, const S* a, Index p_begin, Index p_end, S* panel, S* tiles,
                             Pack&& pack, Source&& source, Store&& store) {
  for (Index p = p_begin; p < p_end; ++p) {
    pack(p, panel);
    const Ahead next = p + 1 < p_end ? source(p + 1) : Ahead{};
    multiply_packed<S>(m, depth, a, panel, 0, 1, tiles,
                       [&](Index i0, Index mr, Index, const S* tile) { store(i0, mr, p, tile); }, &next);
  }
}

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
  static constexpr auto kernels = micro::micro_kernels<S>(std::make_index_sequence<MR>{});
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
        kernels[static_cast<std::size_t>(mr - 1)](kc, a_tile, b_block, tile, NR, false, next);
        const Eigen::Map<const RowMatrix<S>, 0, Eigen::OuterStride<>> t(tile, mr, cols, Eigen::OuterStride<>(NR));
        Eigen::Map<RowMatrix<S>, 0, Eigen::OuterStride<>> to(c_panel + i0 * c_stride, mr, cols, Eigen::OuterStride<>(c_stride));
        if (add)
          to += t;
        else
          to = t;
      }
    }
  }
}

// gemm()'s blocks (GotoBLAS's loop nest): a kc × nc block of B is packed once and stays in L2
// while kMC × kc blocks of A pass through L1/L2.
//   kc ≤ kKC, twice the micro-kernel's L1 block: a weight gradient's depth is one expert's tokens,
//     ~256 at mixtral-mini T=1024 and more for the busiest experts, and every depth block is one
//     more pass over C in memory (8 experts with 270 tokens, d_w1 += d_h1ᵀ·x: 142 ms with blocks
//     of 256, 128 with 512);
//   nc: as many panels as keep the B block within 1 MB, so that a shallow product (a weight
//     gradient again) packs A once for all of a 1024-wide C rather than once per 512 columns
//     (d_w1 + d_w3, 8 experts: −8 %, with the fixed-size copies in pack_a and pack_b).
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

// Scratch scalars gemm() needs for C [m, n] and the given depth (on `threads` threads: a share per
// thread when the columns are split, one workspace when they are too few to split).
template <class S>
constexpr Index gemm_workspace_size(Index m, Index n, Index depth, int threads = 1) {
  if (const Index range = gemm_column_range<S>(n, threads); range < n)
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
  constexpr Index KC = GemmBlocks<S>::kKC, MC = GemmBlocks<S>::kMC;
  const Index m = c.rows(), n = c.cols();
  if (m == 0 || n == 0) return;
  if (const Index range = gemm_column_range<S>(n, threads); range < n) {
    const auto share = static_cast<std::size_t>(gemm_workspace_size<S>(m, range, depth));
    MOE_ASSERT(workspace.size() >= share * static_cast<std::size_t>(threads));
    detail::parallel_for((n + range - 1) / range, threads, [&](Index r, int thread) {
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
      pack_b(Strided<S>{b.data + k0 * b.row_stride + j0 * b.col_stride, b.row_stride, b.col_stride}, kc, nc, packed_b);
      for (Index i0 = 0; i0 < m; i0 += MC) {
        const Index mc = std::min(MC, m - i0);
        pack_a(Strided<S>{a.data + i0 * a.row_stride + k0 * a.col_stride, a.row_stride, a.col_stride}, mc, kc, packed_a);
        multiply_into<S>(mc, nc, kc, packed_a, packed_b, &c(i0, j0), c.outerStride(), add, tile);
      }
    }
  }
}


// One projection's weights of every expert, packed as B operands (pack_b's panels) expert by expert
// on first use and kept until clear(): whoever owns the weights calls clear() whenever they may
// have changed. Experts never used are never packed (nor allocated).
template <class S>
class PackedBank {
 public:
  explicit PackedBank(Index num_experts = 0)
      : panels_(static_cast<std::size_t>(num_experts)), fresh_(static_cast<std::size_t>(num_experts), 0) {}

  // Packs expert e with pack(out), out having `size` scalars, unless it is packed already. Calls
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
  const S* operator[](Index e) const { return panels_[static_cast<std::size_t>(e)].data(); }
  void clear() { std::fill(fresh_.begin(), fresh_.end(), std::uint8_t{0}); }

 private:
  std::vector<moe::detail::AlignedVector<S>> panels_;
  std::vector<std::uint8_t> fresh_;
};

// A torch.nn.Linear weight w [out, in] (rows contiguous) as the B of x·wᵀ: panel p holds the
// outputs [p·kNR, p·kNR + kNR) as columns, [in][kNR], zeros past the last output.
template <class S>
void pack_weight_panel(ConstMatrixRef<S> w, Index p, S* panel) {
  constexpr int NR = Blocking<S>::kNR;
  pack_b<S>(Strided<S>{w.data() + p * NR * w.outerStride(), 1, w.outerStride()}, w.cols(),
            std::min<Index>(NR, w.rows() - p * NR), panel);
}

// The rows of w that pack_weight_panel(w, p, ·) reads.
template <class S>
Ahead weight_panel_source(ConstMatrixRef<S> w, Index p) {
  constexpr int NR = Blocking<S>::kNR;
  const Index rows = std::min<Index>(NR, w.rows() - p * NR);
  return {{reinterpret_cast<const char*>(w.data() + p * NR * w.outerStride())},
          {rows * w.outerStride() * Index(sizeof(S))}};
}

// store(i0, mr, p, tile) for the panels [p_begin, p_end) of expert e's B (m rows of the packed A):
// from the bank if e is packed there, or else (training) each panel packed by pack(p, panel) as it
// is used, the next one's source(p) on its way meanwhile (multiply_packing_panels; work holds
// m · kNR scalars of tiles, then one panel). The same panels and the same sums either way.
template <class S, class Pack, class Source, class Store>
void multiply_bank(const PackedBank<S>& bank, Index e, Index m, Index depth, const S* a, Index p_begin, Index p_end,
                   S* work, Pack&& pack, Source&& source, Store&& store) {
  if (bank.packed(e)) return multiply_packed<S>(m, depth, a, bank[e], p_begin, p_end, work, store);
  multiply_packing_panels<S>(m, depth, a, p_begin, p_end, work + m * Blocking<S>::kNR, work, pack, source, store);
}

// The store of an output projection's tile: rows [i0, i0 + mr) of y, columns [p·kNR, …) =
// scale[row] · (tile + bias) — scale (the routing weights, per row from i0) and bias optional.
template <class S>
void store_output_tile(MatrixRef<S>& y, Index i0, Index mr, Index p, const S* tile, const S* scale, const S* bias) {
  constexpr int NR = Blocking<S>::kNR;
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
