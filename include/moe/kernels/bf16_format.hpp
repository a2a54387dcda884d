// Bf16Format: expert weights stored as bfloat16 (rounded to nearest even from fp32), multiplied
// with fp32 accumulation into fp32 tiles, so that the experts' stores and the layer stay fp32.
// Half the bytes of fp32 weights: decode, a read of the weights, takes about half the time.
//
// Layout: a weight panel row holds a pair of depths, [depth/2][kNR][2] (an odd depth is padded
// with a zero), the layout of the CPU's bf16 dot-product (vdpbf16ps) and matrix (AMX) units.
// Activations are rounded to bf16 once per block as they are packed (stored as fp32, [depth][mr]
// like NativeFormat's), so every path multiplies bf16 by bf16 — exactly, in fp32 — and differs
// from another only in how it sums. Kernels per ISA: AVX512-BF16 multiplies the pairs as they are
// (vdpbf16ps, with the activations packed as pairs too); AVX-512 and AVX2 widen the pairs to fp32
// as they load them (kernels/vectors.hpp) and use FMA; the generic path widens them one by one.
#pragma once

#include "moe/detail/float16.hpp"
#include "moe/isa.hpp"
#include "moe/kernels/blocking.hpp"
#include "moe/kernels/micro_kernel.hpp"
#include "moe/kernels/packing.hpp"
#include "moe/types.hpp"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace moe::kernels {

// bfloat16 values as a file stores them: little-endian, at any alignment; row r starts `stride`
// values after row r − 1. What a loader hands Bf16Format to pack a BF16 tensor without a detour
// through fp32.
struct Bf16Rows {
  const std::byte* data = nullptr;
  Index num_rows = 0, num_cols = 0, stride = 0;

  Index rows() const { return num_rows; }
  Index cols() const { return num_cols; }
  Bf16Rows middleRows(Index first, Index count) const { return {data + 2 * first * stride, count, num_cols, stride}; }
  std::uint16_t operator()(Index r, Index c) const {
    const std::byte* at = data + 2 * (r * stride + c);
    if constexpr (std::endian::native == std::endian::little) {
      std::uint16_t v;
      std::memcpy(&v, at, 2);
      return v;
    } else {
      return static_cast<std::uint16_t>(std::to_integer<unsigned>(at[0]) | std::to_integer<unsigned>(at[1]) << 8);
    }
  }
};

struct Bf16Format {
  using Scalar = float;
  using Weight = std::uint16_t;  // the bits of a bfloat16
  using Input = float;           // an activation rounded to bf16
  static constexpr const char* name = "bf16";
  static constexpr int kMR = Blocking<float>::kMR, kNR = Blocking<float>::kNR;
  static constexpr Index kKC = 32768 / (kNR * Index(sizeof(Weight)));  // 32 KB of a panel; even

  // The depth the kernels run over (and the rows of packed A): even.
  static constexpr Index packed_depth(Index depth) { return (depth + 1) / 2 * 2; }

  // Rows of w [count, depth] as columns [column, column + count) of a panel [depth/2][kNR][2]:
  // fp32 rounded here, or bf16 as it is.
  static void pack_weight_rows(ConstMatrixRef<float> w, Weight* panel, Index column) {
    pack_pairs(w, panel, column, [](float v) { return moe::detail::float_to_bf16(v); });
  }
  static void pack_weight_rows(const Bf16Rows& w, Weight* panel, Index column) {
    pack_pairs(w, panel, column, [](Weight v) { return v; });
  }

  // Inputs pack_input writes for an m × depth A: micro-panels [packed_depth][mr], for the kernels
  // of the active ISA: each activation rounded to bf16, as a float — or, for the kernels that
  // multiply pairs (TileKernels::a_pairs), the pair of depths 2q and 2q + 1 as one 32-bit word
  // (bf16 bits, the first in the low half) in the slot of depth 2q, and 0 in the slot of 2q + 1.
  static constexpr Index input_size(Index m, Index depth) { return m * packed_depth(depth); }
  static void pack_input(Strided<float> a, Index m, Index depth, Input* out) {
    const Index padded = packed_depth(depth);
    const bool pairs = kernels().a_pairs;
    for (Index q0 = 0; q0 < m; q0 += kMR) {
      const Index mr = std::min<Index>(kMR, m - q0);
      Input* const panel = out + q0 * padded;
      for (Index i = 0; i < mr; ++i) {
        const auto bf16 = [&](Index k) { return k < depth ? moe::detail::float_to_bf16(a(q0 + i, k)) : Weight(0); };
        for (Index k = 0; k < padded; k += 2) {
          const Weight first = bf16(k), second = bf16(k + 1);
          if (pairs) {
            const std::uint32_t word = first | std::uint32_t(second) << 16;
            std::memcpy(&panel[k * mr + i], &word, sizeof word);
            panel[(k + 1) * mr + i] = 0;
          } else {
            panel[k * mr + i] = moe::detail::bf16_to_float(first);
            panel[(k + 1) * mr + i] = moe::detail::bf16_to_float(second);
          }
        }
      }
    }
  }

  // The kernels for `isa` (the best this build has at or below it), or for the active one.
  static const detail::TileKernels<float, Weight>& kernels(Isa isa) { return detail::tile_kernels<float, Weight>(isa); }
  static const detail::TileKernels<float, Weight>& kernels() { return kernels(active_isa()); }
 private:
  // The depth in blocks of kPairs pairs, every row through each block: the block's panel lines
  // (kPairs · 128 bytes) stay in L1 while the rows pass by, instead of a row's stores spanning the
  // whole panel.
  template <class Rows, class Bf16Of>
  static void pack_pairs(const Rows& w, Weight* panel, Index column, Bf16Of&& bf16_of) {
    constexpr Index kPairs = 16;
    const Index depth = w.cols(), whole = depth / 2;
    for (Index q0 = 0; q0 < whole; q0 += kPairs) {
      const Index q1 = std::min(whole, q0 + kPairs);
      for (Index r = 0; r < w.rows(); ++r) {
        Weight* const to = panel + 2 * (column + r);
        for (Index q = q0; q < q1; ++q) {
          to[q * 2 * kNR] = bf16_of(w(r, 2 * q));
          to[q * 2 * kNR + 1] = bf16_of(w(r, 2 * q + 1));
        }
      }
    }
    if (depth % 2)
      for (Index r = 0; r < w.rows(); ++r) {
        panel[whole * 2 * kNR + 2 * (column + r)] = bf16_of(w(r, depth - 1));
        panel[whole * 2 * kNR + 2 * (column + r) + 1] = 0;
      }
  }
};

}  // namespace moe::kernels
