// A weight format: the seam between the experts and the kernels' forward products. It names
//   Scalar  the activations, and the tiles the micro-kernel hands to the experts' stores
//           (activation, bias, routing weight) — the layer's own type whatever the format;
//   Weight  one weight as packed in a B panel ([depth][kNR]: the experts keep their weights so);
//   Input   one activation as packed in an A micro-panel ([depth][mr]);
// how weights and activations are packed (pack_weight_rows, pack_input), and the kernels that
// multiply the two: micro_kernels[mr − 1] for up to kMR rows, stream_panels for decode's few.
// kernels/packed_product.hpp runs any format; an expert takes its format as a template argument.
// NativeFormat<S> stores and multiplies in S itself (fp32, or fp64 in tests); narrower formats
// (bf16, int8) and their ISA-specific kernels join as further traits of this shape.
#pragma once

#include "moe/kernels/blocking.hpp"
#include "moe/kernels/micro_kernel.hpp"
#include "moe/kernels/packing.hpp"
#include "moe/types.hpp"

#include <type_traits>
#include <utility>

namespace moe::kernels {

template <class S>
struct NativeFormat {
  using Scalar = S;
  using Weight = S;
  using Input = S;
  static constexpr const char* name = std::is_same_v<S, float> ? "f32" : std::is_same_v<S, double> ? "f64" : "native";
  static constexpr int kMR = Blocking<S>::kMR, kNR = Blocking<S>::kNR;
  static constexpr Index kKC = Blocking<S>::kKC;  // depth of a B block that stays in L1

  // Rows of w [count, depth] as columns [column, column + count) of a panel [depth][kNR].
  static void pack_weight_rows(ConstMatrixRef<S> w, Weight* panel, Index column) {
    detail::pack_rows_as_columns<S>(w, panel, column);
  }
  // Inputs pack_input writes for an m × depth A.
  static constexpr Index input_size(Index m, Index depth) { return m * depth; }
  static void pack_input(Strided<S> a, Index m, Index depth, Input* out) { detail::pack_a<S>(a, m, depth, out); }

  // micro_kernels[mr − 1](depth, a, b, tile, tile_stride, accumulate, ahead): see micro_kernel.hpp.
  static constexpr auto micro_kernels = detail::micro_kernels<S>(std::make_index_sequence<kMR>{});
  // Decode, for m ≤ kMR / detail::kStreams rows: see detail::stream_panels.
  template <class Store>
  static Index stream_panels(Index m, Index depth, const Input* a, const Weight* b, Index p_begin, Index p_end,
                             Store&& store) {
    return detail::stream_panels<S>(m, depth, a, b, p_begin, p_end, store);
  }
};

}  // namespace moe::kernels
