// A plain per-token reference for SparseMoE::forward, written from the layer's definition and not
// from its code: no dispatch buffer, no grouping by expert, no threads — one token at a time, in
// double.
//
//   y[t] = Σ_{j : plan.active(t, j)} weight(t, j) · expert_{expert(t, j)}(x[t])
//        + g_t · Σ_s shared_s(x[t]),      g_t = σ(⟨x[t], w_gate⟩) if the shared experts are gated, else 1
//
// The routing decision is taken from the layer's last_plan() (the gates have their own tests), and
// each expert is evaluated by calling the library expert's forward on that single row (the experts
// have their own tests). Everything else — the weighted sum, the skipping of empty and dropped
// slots, the shared experts and their gate — is recomputed here in double.
#pragma once

#include <moe/layer/shared_experts.hpp>
#include <moe/routing.hpp>
#include <moe/types.hpp>

#include <cmath>
#include <vector>

namespace moe::test {

// expert_e(x_row) through the library expert, as a double row vector [1, d_model].
template <class X>
Eigen::RowVectorXd reference_expert_row(const X& experts, Index e, const auto& x_row) {
  using S = typename X::Scalar;
  const Index d = experts.d_model();
  RowMatrix<S> in = x_row;  // a [1, d_model] copy: the expert sees exactly one token
  RowMatrix<S> out(1, d);
  std::vector<S> scratch(static_cast<std::size_t>(experts.scratch_size(1)));
  experts.forward(e, in, out, scratch);
  return out.row(0).template cast<double>();
}

// g_t · Σ_s shared_s(x[t]) for one token, in double.
template <class X>
Eigen::RowVectorXd reference_shared_row(const SharedExperts<X>& shared, const auto& x_row) {
  Eigen::RowVectorXd sum = Eigen::RowVectorXd::Zero(shared.d_model());
  for (Index s = 0; s < shared.num_experts(); ++s) sum += reference_expert_row(shared.experts(), s, x_row);
  if (shared.gated()) {
    const double logit = x_row.template cast<double>().dot(shared.gate_weight().row(0).template cast<double>());
    sum *= 1.0 / (1.0 + std::exp(-logit));
  }
  return sum;
}

// The routed part of y from a plan, in double: [T, d_model].
template <class X, class S>
RowMatrix<double> reference_routed(const RoutingPlan<S>& plan, const X& experts,
                                   ConstMatrixRef<typename X::Scalar> x) {
  RowMatrix<double> y = RowMatrix<double>::Zero(x.rows(), experts.d_model());
  for (Index t = 0; t < x.rows(); ++t)
    for (Index j = 0; j < plan.slots_per_token(); ++j)
      if (plan.active(t, j))
        y.row(t) += double(plan.weight(t, j)) * reference_expert_row(experts, plan.expert(t, j), x.row(t));
  return y;
}

// y of the layer's last forward, recomputed from last_plan(): [T, d_model] in double.
//   requires: layer.forward(x, ·) was the last call on layer.
template <class Layer>
RowMatrix<double> reference_layer_forward(const Layer& layer, ConstMatrixRef<typename Layer::Scalar> x) {
  RowMatrix<double> y = reference_routed(layer.last_plan(), layer.experts(), x);
  if (const auto* shared = layer.shared())
    for (Index t = 0; t < x.rows(); ++t) y.row(t) += reference_shared_row(*shared, x.row(t));
  return y;
}

}  // namespace moe::test
