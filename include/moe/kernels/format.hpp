// A weight format: the seam between the experts and the kernels' forward products. It names
//   Scalar  the activations, and the tiles the micro-kernel hands to the experts' stores
//           (activation, bias, routing weight) — the layer's own type whatever the format;
//   Weight  one weight as packed in a B panel ([depth][kNR]: the experts keep their weights so);
//   Input   one activation as packed in an A micro-panel ([depth][mr]);
// packed_depth(depth), the depth the kernels run over (a format may pad it: a panel holds
// packed_depth · kNR weights);
// how weights and activations are packed (pack_weight_rows, pack_input), and the kernels that
// multiply the two: kernels(), the table of micro-kernels for the ISA moe::active_isa() names
// (micro[mr − 1] for up to kMR rows, stream_panels for decode's few; kernels/micro_kernel.hpp).
// kernels/packed_product.hpp runs any format; an expert takes its format as a template argument.
// NativeFormat<S> stores and multiplies in S itself (fp32, or fp64 in tests); Bf16Format
// (kernels/bf16_format.hpp) stores bfloat16; int8 joins as a further traits type of this shape.
#pragma once

#include "moe/isa.hpp"
#include "moe/kernels/blocking.hpp"
#include "moe/kernels/micro_kernel.hpp"
#include "moe/kernels/packing.hpp"
#include "moe/types.hpp"

#include <type_traits>
#include <vector>

namespace moe::kernels {

template <class S>
struct NativeFormat {
  using Scalar = S;
  using Weight = S;
  using Input = S;
  static constexpr const char* name = std::is_same_v<S, float> ? "f32" : std::is_same_v<S, double> ? "f64" : "native";
  static constexpr int kMR = Blocking<S>::kMR, kNR = Blocking<S>::kNR;
  static constexpr Index kKC = Blocking<S>::kKC;  // depth of a B block that stays in L1

  // The depth the kernels run over (rows of a panel and of packed A): the depth itself.
  static constexpr Index packed_depth(Index depth) { return depth; }

  // Rows of w [count, depth] as columns [column, column + count) of a panel [depth][kNR].
  static void pack_weight_rows(ConstMatrixRef<S> w, Weight* panel, Index column) {
    detail::pack_rows_as_columns<S>(w, panel, column);
  }
  // Inputs pack_input writes for an m × depth A.
  static constexpr Index input_size(Index m, Index depth) { return m * depth; }
  static void pack_input(Strided<S> a, Index m, Index depth, Input* out) { detail::pack_a<S>(a, m, depth, out); }

  // The kernels for `isa` (the best this build has at or below it), or for the active one.
  static const detail::TileKernels<S>& kernels(Isa isa) { return detail::tile_kernels<S>(isa); }
  static const detail::TileKernels<S>& kernels() { return kernels(active_isa()); }
};

// The rungs of this machine's ISA ladder that have kernels of their own for format F, lowest first
// (a rung without them runs the one below): what a test of every kernel path runs, one cap each.
template <class F>
std::vector<Isa> isa_paths() {
  std::vector<Isa> paths;
  for (int rung = 0; rung <= static_cast<int>(detected_isa()); ++rung)
    if (F::kernels(static_cast<Isa>(rung)).isa == static_cast<Isa>(rung)) paths.push_back(static_cast<Isa>(rung));
  return paths;
}

}  // namespace moe::kernels
