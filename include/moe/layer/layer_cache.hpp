// LayerCache: what one forward pass of SparseMoE leaves behind — the routing, the dispatch, the
// gathered inputs and unweighted expert outputs, and (after a training forward) everything
// backward needs. The layer uses one internally for inference; for training the caller owns it:
//
//   Layer::Cache cache;
//   double aux = layer.forward(x, y, cache);     // fills cache
//   layer.backward(cache, d_y, d_x, grads);      // reads it
#pragma once

#include "moe/detail/aligned_allocator.hpp"
#include "moe/routing.hpp"

#include <cstdint>
#include <vector>

namespace moe {

template <class S, class Shared>
struct LayerCache {
  RoutingPlan<S> plan;
  DispatchPlan dispatch;
  RowMatrix<S> gathered;             // [≥ rows, d_model]  x rows in dispatch order
  RowMatrix<S> expert_out;           // [≥ rows, d_model]  unweighted expert outputs, dispatch order
  // Training only.
  bool training = false;             // filled by a training forward (backward checks it)
  RowMatrix<S> x;                    // [T, d_model]  the input (router and shared-expert backward)
  std::vector<std::uint8_t> mask;    // [T] or empty: the padding mask of the auxiliary losses
  double aux = 0;                    // Σ of the auxiliary losses, each times its coefficient
  RouterGradients<S> aux_grads;      // their gradients
  detail::AlignedVector<S> saved;    // each expert block's forward working memory
  std::vector<Index> saved_offset;   // [E + 1]  expert e's part of saved
  typename Shared::Cache shared;     // the shared experts' own
};

}  // namespace moe
