// LayerCache: what one forward pass of a layer leaves behind, in two sides.
//   tokens   this process's tokens: the routing, the exchange's record of where each token slot
//            went, and (after a training forward) the input, the loss mask, the auxiliary losses'
//            value and gradients, and the shared experts' own cache;
//   experts  the experts this process runs: their batch (inputs and outputs) and the working
//            memory a training forward keeps for backward.
// The layer uses one internally for inference; for training the caller owns it:
//
//   Layer::Cache cache;
//   double aux = layer.forward(x, y, cache);     // fills cache
//   layer.backward(cache, d_y, d_x, grads);      // reads it
#pragma once

#include "moe/dispatch/expert_batch.hpp"
#include "moe/dispatch/runner.hpp"
#include "moe/routing.hpp"

#include <cstdint>
#include <vector>

namespace moe {

template <class S, class Record, class SharedCache>
struct LayerCache {
  struct Tokens {
    RoutingPlan<S> plan;
    Record dispatch;                  // the exchange's record (LocalExchange: the DispatchPlan)
    bool training = false;            // filled by a training forward (backward checks it)
    RowMatrix<S> x;                   // [T, d_model]  the input (router and shared-expert backward)
    std::vector<std::uint8_t> mask;   // [T] or empty: the padding mask of the auxiliary losses
    double aux = 0;                   // Σ of the auxiliary losses, each times its coefficient
    RouterGradients<S> aux_grads;     // their gradients
    SharedCache shared;               // the shared experts' own
  } tokens;
  struct Experts {
    ExpertBatch<S> batch;             // rows in and out, expert-major
    SavedBlocks<S> saved;             // each block's forward working memory (training)
  } experts;
};

namespace detail {

// The layer's own buffers for training forwards and backward (a copy of the layer does not copy
// them: detail::Scratch).
template <class S, class X>
struct TrainingBuffers {
  ExpertRunner<X> runner;
  RowMatrix<S> routed;  // [≥ T, d_model] routed output before the shared experts
  RowMatrix<S> d_weight, d_out, d_in;
  RouterGradients<S> router_grads;
};

}  // namespace detail

}  // namespace moe
