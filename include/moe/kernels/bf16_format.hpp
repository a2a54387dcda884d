// Bf16Format: expert weights stored as bfloat16 (rounded to nearest even from fp32), multiplied
// with fp32 accumulation into fp32 tiles, so that the experts' stores and the layer stay fp32.
// Half the bytes of fp32 weights: decode, a read of the weights, takes about half the time.
//
// Layout: a weight panel row holds a pair of depths, [depth/2][kNR][2] (an odd depth is padded
// with a zero), the layout of the CPU's bf16 dot-product (vdpbf16ps) and matrix (AMX) units.
// Activations are rounded to bf16 once per block as they are packed (stored as fp32, [depth][mr]
// like NativeFormat's), so every path multiplies bf16 by bf16 — exactly, in fp32 — and differs
// from another only in how it sums. Kernels per ISA: AVX-512 and AVX2 widen the pairs to fp32 as
// they load them (kernels/vectors.hpp) and use FMA; the generic path widens them one by one.
#pragma once

#include "moe/detail/float16.hpp"
#include "moe/isa.hpp"
#include "moe/kernels/blocking.hpp"
#include "moe/kernels/micro_kernel.hpp"
#include "moe/kernels/packing.hpp"
#include "moe/types.hpp"

#include <algorithm>
#include <cstdint>

namespace moe::kernels {

struct Bf16Format {
  using Scalar = float;
  using Weight = std::uint16_t;  // the bits of a bfloat16
  using Input = float;           // an activation rounded to bf16
  static constexpr const char* name = "bf16";
  static constexpr int kMR = Blocking<float>::kMR, kNR = Blocking<float>::kNR;
  static constexpr Index kKC = 32768 / (kNR * Index(sizeof(Weight)));  // 32 KB of a panel; even

  // The depth the kernels run over (and the rows of packed A): even.
  static constexpr Index packed_depth(Index depth) { return (depth + 1) / 2 * 2; }

  // Rows of w [count, depth] as columns [column, column + count) of a panel [depth/2][kNR][2].
  static void pack_weight_rows(ConstMatrixRef<float> w, Weight* panel, Index column) {
    const Index depth = w.cols();
    for (Index r = 0; r < w.rows(); ++r) {
      Weight* const to = panel + 2 * (column + r);
      for (Index k = 0; k < depth; ++k) to[k / 2 * 2 * kNR + k % 2] = moe::detail::float_to_bf16(w(r, k));
      if (depth % 2) to[depth / 2 * 2 * kNR + 1] = 0;
    }
  }

  // Inputs pack_input writes for an m × depth A: micro-panels [packed_depth][mr].
  static constexpr Index input_size(Index m, Index depth) { return m * packed_depth(depth); }
  static void pack_input(Strided<float> a, Index m, Index depth, Input* out) {
    const Index padded = packed_depth(depth);
    for (Index q0 = 0; q0 < m; q0 += kMR) {
      const Index mr = std::min<Index>(kMR, m - q0);
      Input* const panel = out + q0 * padded;
      for (Index i = 0; i < mr; ++i) {
        for (Index k = 0; k < depth; ++k)
          panel[k * mr + i] = moe::detail::bf16_to_float(moe::detail::float_to_bf16(a(q0 + i, k)));
        if (padded > depth) panel[depth * mr + i] = 0;
      }
    }
  }

  // The kernels for `isa` (the best this build has at or below it), or for the active one.
  static const detail::TileKernels<float, Weight>& kernels(Isa isa) { return detail::tile_kernels<float, Weight>(isa); }
  static const detail::TileKernels<float, Weight>& kernels() { return kernels(active_isa()); }
};

}  // namespace moe::kernels
