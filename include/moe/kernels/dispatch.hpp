// Dispatch: group the active (token, slot) assignments by expert, then copy token rows into
// the expert-major dispatch buffer (docs/architecture.md §4).
#pragma once

#include "moe/routing.hpp"

#include <cstdint>
#include <functional>
#include <vector>

namespace moe::kernels {

// Stable counting sort of the active slots of `plan` by expert — or by bucket(expert), a
// permutation of [0, E) (an exchange that groups experts by process: mpi/exchange.hpp); offset
// and rows_of are then per bucket.
//   plan: expert, dropped [T, k];  dispatch: offset [E + 1], token [rows], row [T * k] (overwritten)
// Inside an expert, rows are in token order (then slot order), so the result is unique.
template <class S, class Bucket = std::identity>
void build_dispatch(const RoutingPlan<S>& plan, DispatchPlan& dispatch, Bucket&& bucket = {}) {
  const Index T = plan.num_tokens(), k = plan.slots_per_token(), E = plan.num_experts;
  dispatch.offset.assign(static_cast<std::size_t>(E + 1), 0);
  for (Index t = 0; t < T; ++t)
    for (Index j = 0; j < k; ++j)
      if (plan.active(t, j)) ++dispatch.offset[bucket(Index(plan.expert(t, j))) + 1];
  for (Index e = 0; e < E; ++e) dispatch.offset[e + 1] += dispatch.offset[e];

  dispatch.token.resize(static_cast<std::size_t>(dispatch.offset[E]));
  dispatch.row.assign(static_cast<std::size_t>(T * k), kEmptySlot);
  std::vector<Index>& next = dispatch.cursor;
  next.assign(dispatch.offset.begin(), dispatch.offset.end() - 1);
  for (Index t = 0; t < T; ++t)
    for (Index j = 0; j < k; ++j) {
      if (!plan.active(t, j)) continue;
      const Index r = next[bucket(Index(plan.expert(t, j)))]++;
      dispatch.token[r] = static_cast<std::int32_t>(t);
      dispatch.row[t * k + j] = static_cast<std::int32_t>(r);
    }
}

// buffer[r] = x[token[r]] for every dispatch row r.
//   x: [T, d];  buffer: [rows, d] (overwritten)
template <class S>
void gather_rows(ConstMatrixRef<S> x, const std::vector<std::int32_t>& token, MatrixRef<S> buffer) {
  for (Index r = 0; r < static_cast<Index>(token.size()); ++r) buffer.row(r) = x.row(token[r]);
}

}  // namespace moe::kernels
