// Combine: the weighted sum of each token's expert outputs, in slot order (no atomics, so the
// result does not depend on how expert work was scheduled).
#pragma once

#include "moe/routing.hpp"

namespace moe::kernels {

// y[t] = Σ_{j < k, active} weight[t, j] · expert_out[row[t·k + j]]     (j ascending)
//   weight: [T, k] (the plan's combine weights; all ones to sum a token's rows in backward)
//   expert_out: [rows, d] dispatch order;  y: [T, d] (overwritten)
template <class S>
void combine(ConstMatrixRef<S> weight, const DispatchPlan& dispatch, ConstMatrixRef<S> expert_out, MatrixRef<S> y) {
  const Index k = weight.cols();
  for (Index t = 0; t < y.rows(); ++t) {
    auto y_t = y.row(t);
    y_t.setZero();
    for (Index j = 0; j < k; ++j) {
      const auto r = dispatch.row[t * k + j];
      if (r != kEmptySlot) y_t.noalias() += weight(t, j) * expert_out.row(r);
    }
  }
}

// y[t] = Σ_{j < k, active} rows[row[t·k + j]]   (j ascending): combine with every weight 1 (outputs
// already scaled, or the adjoint of dispatch).
//   rows: [rows, d] dispatch order;  y: [T, d] (overwritten)
template <class S>
void sum_slots(const DispatchPlan& dispatch, Index k, ConstMatrixRef<S> rows, MatrixRef<S> y) {
  for (Index t = 0; t < y.rows(); ++t) {
    auto y_t = y.row(t);
    y_t.setZero();
    for (Index j = 0; j < k; ++j)
      if (const auto r = dispatch.row[t * k + j]; r != kEmptySlot) y_t += rows.row(r);
  }
}

}  // namespace moe::kernels
