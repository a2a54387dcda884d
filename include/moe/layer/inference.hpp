// A layer's inference call: LayerWorkspace, its memory (SparseMoE::Workspace), owned by the
// caller so that threads, each with a workspace of its own, can run the const forward of one
// layer at once — the weights are shared, the workspaces are not; and the pipeline that fills it
// (route → dispatch → experts → combine → shared experts → statistics), which the layer's
// forwards call with its parts. Buffers grow to the largest batch (or chunk) seen and are reused;
// a workspace copies as empty (it is memory, not state), and release() frees it.
#pragma once

#include "moe/concepts.hpp"
#include "moe/detail/parallel.hpp"
#include "moe/detail/scratch.hpp"
#include "moe/dispatch/expert_batch.hpp"
#include "moe/dispatch/runner.hpp"
#include "moe/layer/routing_stats.hpp"
#include "moe/layer/shared_experts.hpp"
#include "moe/routing.hpp"

#include <algorithm>
#include <type_traits>

namespace moe {

template <class S, class Record, Expert X>
struct LayerWorkspace {
  RoutingPlan<S> plan;   // the last call's routing
  RoutingStats stats;    // and its statistics
  RoutingPlan<S> chunk;  // the slots of the tokens in the experts now, when the call is chunked
  Record dispatch;       // the exchange's record
  ExpertBatch<S> batch;  // the routed experts' rows in and out
  ExpertRunner<X> runner;
  RowMatrix<S> routed;   // [≥ chunk, d_model] the routed output before the shared experts
  typename SharedExperts<X>::Workspace shared;

  LayerWorkspace() = default;
  LayerWorkspace(const LayerWorkspace&) : LayerWorkspace() {}
  LayerWorkspace& operator=(const LayerWorkspace&) { return *this; }
  LayerWorkspace(LayerWorkspace&&) noexcept = default;
  LayerWorkspace& operator=(LayerWorkspace&&) noexcept = default;
  ~LayerWorkspace() = default;

  void release() { *this = LayerWorkspace(); }
};

namespace detail {

// y = the combined routed output, plus add_shared(routed) with shared experts (which read x: the
// routed output goes to `buffer` and y is written last, so y may be x).
template <class S, class Exchange, class Shared, class AddShared>
void combine_output(const Exchange& exchange, const Shared& shared, ConstMatrixRef<S> x, MatrixRef<S> y,
                    const RoutingPlan<S>& plan, typename Exchange::Record& record, const ExpertBatch<S>& batch,
                    RowMatrix<S>& buffer, AddShared&& add_shared) {
  if (!shared) return exchange.combine(plan, record, batch, y);
  grow_rows(buffer, x.rows(), x.cols());
  auto routed = buffer.topRows(x.rows());
  exchange.combine(plan, record, batch, routed);
  add_shared(routed);
  y = routed;
}

// The inference forward over the layer's parts; route(plan) routes x, all of it at once (a
// gate's choice may depend on the whole batch). The routed tokens then go through the experts
// `chunk` at a time (0: all at once), so that the rest of the workspace is sized by the chunk, not
// the batch: every token's output is one sum in a fixed order, whatever else shares its chunk, so
// the bits do not depend on it. With non-const experts (the layer's plain forward), the experts
// that get rows, and the shared experts, pack their weights first; with const ones nothing but
// `work` (a LayerWorkspace) is written.
template <class S, class Exchange, class X, class Shared, class Work, class Route>
void infer(const Exchange& exchange, X& experts, Shared& shared, Index num_experts, int threads, Index chunk,
           ConstMatrixRef<S> x, MatrixRef<S> y, Work& work, Route&& route) {
  [[maybe_unused]] const EigenSingleThreaded single_threaded_eigen;
  route(work.plan);
  compute_routing_stats(work.plan, work.stats, exchange);
  if constexpr (!std::is_const_v<X>)
    if (shared) shared->prepack();
  const Index T = x.rows();
  chunk = chunk > 0 ? chunk : std::max<Index>(T, 1);
  // At least one round (T = 0 too), and as many as the exchange's other processes run.
  const Index rounds = exchange.rounds(std::max<Index>((T + chunk - 1) / chunk, 1));
  for (Index round = 0, first = 0; round < rounds; ++round) {
    const Index count = std::clamp<Index>(T - first, 0, chunk);
    if (count < T) work.chunk.assign_slots(work.plan, first, count);
    const RoutingPlan<S>& plan = count < T ? work.chunk : work.plan;
    const auto x_part = x.middleRows(first, count);
    exchange.dispatch(plan, x_part, exchange.owned(num_experts), /*with_scales=*/true, work.dispatch, work.batch);
    work.runner.forward(experts, work.batch, threads);
    const auto add_shared = [&](MatrixRef<S> routed) { shared->forward_add(x_part, routed, threads, work.shared); };
    combine_output<S>(exchange, shared, x_part, y.middleRows(first, count), plan, work.dispatch, work.batch,
                      work.routed, add_shared);
    first += count;
  }
}

}  // namespace detail
}  // namespace moe
