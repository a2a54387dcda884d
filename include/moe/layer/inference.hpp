// A layer's inference call: LayerWorkspace, its memory (SparseMoE::Workspace), owned by the
// caller so that threads, each with a workspace of its own, can run the const forward of one
// layer at once — the weights are shared, the workspaces are not; and the pipeline that fills it
// (route → dispatch → experts → combine → shared experts → statistics), which the layer's
// forwards call with its parts. Buffers grow to the largest batch seen and are reused; a
// workspace copies as empty (it is memory, not state), and release() frees it.
#pragma once

#include "moe/concepts.hpp"
#include "moe/detail/parallel.hpp"
#include "moe/dispatch/expert_batch.hpp"
#include "moe/dispatch/runner.hpp"
#include "moe/layer/routing_stats.hpp"
#include "moe/layer/shared_experts.hpp"
#include "moe/routing.hpp"

#include <type_traits>

namespace moe {

template <class S, class Record, Expert X>
struct LayerWorkspace {
  RoutingPlan<S> plan;   // the last call's routing
  RoutingStats stats;    // and its statistics
  Record dispatch;       // the exchange's record
  ExpertBatch<S> batch;  // the routed experts' rows in and out
  ExpertRunner<X> runner;
  RowMatrix<S> routed;   // [≥ T, d_model] the routed output before the shared experts
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
                    const RoutingPlan<S>& plan, const typename Exchange::Record& record, const ExpertBatch<S>& batch,
                    RowMatrix<S>& buffer, AddShared&& add_shared) {
  if (!shared) return exchange.combine(plan, record, batch, y);
  if (buffer.rows() < x.rows() || buffer.cols() != x.cols()) buffer.resize(std::max(x.rows(), buffer.rows()), x.cols());
  auto routed = buffer.topRows(x.rows());
  exchange.combine(plan, record, batch, routed);
  add_shared(routed);
  y = routed;
}

// The inference forward over the layer's parts; route(plan) routes x. With non-const experts
// (the layer's plain forward), the experts that get rows, and the shared experts, pack their
// weights first; with const ones nothing but `work` is written.
template <class S, class Exchange, class X, class Shared, class Route>
void infer(const Exchange& exchange, X& experts, Shared& shared, Index num_experts, int threads, ConstMatrixRef<S> x,
           MatrixRef<S> y, LayerWorkspace<S, typename Exchange::Record, std::remove_const_t<X>>& work, Route&& route) {
  [[maybe_unused]] const EigenSingleThreaded single_threaded_eigen;
  route(work.plan);
  exchange.dispatch(work.plan, x, exchange.owned(num_experts), /*with_scales=*/true, work.dispatch, work.batch);
  work.runner.forward(experts, work.batch, threads);
  if constexpr (!std::is_const_v<X>)
    if (shared) shared->prepack();
  combine_output<S>(exchange, shared, x, y, work.plan, work.dispatch, work.batch, work.routed,
                    [&](MatrixRef<S> routed) { shared->forward_add(x, routed, threads, work.shared); });
  compute_routing_stats(work.plan, work.dispatch, work.stats);
}

}  // namespace detail
}  // namespace moe
