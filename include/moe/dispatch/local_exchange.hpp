// LocalExchange: how tokens reach the experts and come back when every expert lives in this
// process — the layer's exchange seam (docs/architecture.md §5), whose four functions an exchange
// over MPI implements with all-to-all messages instead of copies.
//
//   dispatch           plan + x → batch: the active (token, slot) pairs sorted by expert, stably
//                      (token order, then slot order, inside an expert), x's rows gathered; the
//                      record keeps where each slot went
//   combine            batch outputs → y[t] = Σ_j w[t, j] · out[row(t, j)], j ascending (a fixed
//                      order: no atomics, the same bits whatever ran the experts)
//   combine_backward   d_y → d_out[row(t, j)] = w[t, j] · d_y[t] and d_weight[t, j] = ⟨d_y[t], out[row(t, j)]⟩
//   dispatch_backward  d_in (batch order) → d_x[t] = Σ_j d_in[row(t, j)], j ascending
#pragma once

#include "moe/dispatch/expert_batch.hpp"
#include "moe/errors.hpp"
#include "moe/kernels/combine.hpp"
#include "moe/kernels/dispatch.hpp"
#include "moe/routing.hpp"

#include <span>
#include <type_traits>

namespace moe {

// A contiguous range of a layer's experts.
struct ExpertRange {
  Index first = 0, count = 0;
};

struct LocalExchange {
  using Record = DispatchPlan;  // per token slot: its batch row

  // The experts this process runs: all of them.
  ExpertRange owned(Index num_experts) const { return {0, num_experts}; }
  // Exchanges to run when this process needs `rounds` (chunked inference): an exchange between
  // processes agrees on the most any of them needs.
  Index rounds(Index rounds) const { return rounds; }
  // values = their sum over the processes (one process: as they are).
  void sum(std::span<Index>) const {}
  void sum(std::span<double>) const {}
  // config_error on every process unless all pass the same value (one process: nothing to check).
  void check_same(const char*, const char*, long long) const {}
  // A step of the layer: checks() (its arguments), then body() (its collectives). An exchange
  // between processes first agrees that every process's checks passed, so that a bad argument on
  // one process is an exception on all of them rather than a collective that never completes.
  template <class Checks, class Body>
  decltype(auto) collective(Checks&& checks, Body&& body) const {
    checks();
    return body();
  }

  // batch = the rows of x routed to the experts `owned`, expert-major; with_scales: batch.scale =
  // the routing weight of each row.
  //   plan: [T, k] over E experts;  x: [T, d_model];  record: overwritten
  template <class S>
  void dispatch(const RoutingPlan<S>& plan, std::type_identity_t<ConstMatrixRef<S>> x, ExpertRange owned, bool with_scales, Record& record,
                ExpertBatch<S>& batch) const {
    MOE_ASSERT(owned.first == 0 && owned.count == plan.num_experts);  // a local exchange owns every expert
    kernels::build_dispatch(plan, record);
    batch.gathered();
    batch.first_expert = owned.first;
    batch.offset.assign(record.offset.begin() + owned.first, record.offset.begin() + owned.first + owned.count + 1);
    batch.reserve(x.cols());
    kernels::gather_rows<S>(x, record.token, batch.rows.topRows(batch.num_rows()));
    batch.scale.clear();
    if (!with_scales) return;
    const Index k = plan.slots_per_token();
    batch.scale.resize(static_cast<std::size_t>(batch.num_rows()));
    for (Index slot = 0; slot < plan.weight.size(); ++slot)
      if (const auto r = record.row[slot]; r != kEmptySlot) batch.scale[r] = plan.weight(slot / k, slot % k);
  }

  // y[t] = Σ_j w[t, j] · out[row(t, j)] (w = 1 when the outputs are scaled already).
  //   y: [T, d_model] (overwritten)
  template <class S>
  void combine(const RoutingPlan<S>& plan, const Record& record, const ExpertBatch<S>& batch,
               std::type_identity_t<MatrixRef<S>> y) const {
    const auto out = batch.out.topRows(batch.num_rows());
    if (batch.scaled)
      kernels::sum_slots<S>(record, plan.slots_per_token(), out, y);
    else
      kernels::combine<S>(plan.weight, record, out, y);
  }

  // d_out[row(t, j)] = w[t, j] · d_y[t]; d_weight[t, j] = ⟨d_y[t], out[row(t, j)]⟩ (0 for a slot with
  // no row).  requires: batch from a training forward (its outputs unscaled);
  //   d_y: [T, d_model];  d_out: [num_rows, d_model], d_weight: [T, k] (overwritten)
  template <class S>
  void combine_backward(const RoutingPlan<S>& plan, const Record& record, const ExpertBatch<S>& batch,
                        std::type_identity_t<ConstMatrixRef<S>> d_y, std::type_identity_t<MatrixRef<S>> d_out,
                        std::type_identity_t<MatrixRef<S>> d_weight) const {
    MOE_ASSERT(!batch.scaled);
    const Index T = plan.num_tokens(), k = plan.slots_per_token();
    d_weight.setZero();
    for (Index t = 0; t < T; ++t)
      for (Index j = 0; j < k; ++j)
        if (const auto r = record.row[t * k + j]; r != kEmptySlot) {
          d_weight(t, j) = d_y.row(t).dot(batch.out.row(r));
          d_out.row(r) = plan.weight(t, j) * d_y.row(t);
        }
  }

  // d_x[t] = Σ_j d_in[row(t, j)].  d_in: [num_rows, d_model] batch order;  d_x: [T, d_model] (overwritten)
  template <class S>
  void dispatch_backward(const RoutingPlan<S>& plan, const Record& record, const ExpertBatch<S>&,
                         std::type_identity_t<ConstMatrixRef<S>> d_in, std::type_identity_t<MatrixRef<S>> d_x) const {
    kernels::sum_slots<S>(record, plan.slots_per_token(), d_in, d_x);
  }
};

}  // namespace moe
