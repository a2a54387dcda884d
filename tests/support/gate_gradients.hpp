// Finite-difference check of a gate's backward: the loss
//   L = Σ c_w ⊙ plan.weight + Σ c_p ⊙ plan.scores + Σ c_z ⊙ plan.logits (+ Σ c_σ ⊙ plan.noise_std)
// with seeded coefficients c, so that ∂L/∂(weight, scores, logits, noise_std) = c is what backward
// gets. d_x starts from seeded values: backward adds to it.
// Checks d_x and every parameter of collect_parameters() with moe::testing::check_gradients
// (central differences in double, ‖a − n‖/‖a + n‖ ≤ 1e-6). The selection must not change under
// the ±1e-6 steps: each step re-routes and the check fails if an expert id or drop mark flips;
// callers pick inputs whose k-th and (k+1)-th choices are well apart (checked by min_gap()).
#pragma once

#include <moe/concepts.hpp>
#include <moe/testing/gradient_check.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>

namespace moe::test {

// The smallest gap, over tokens, between consecutive sorted values of a [T, E] matrix: a lower
// bound on the margin of any top-k selection made from it.
inline double min_gap(const RowMatrix<double>& values) {
  double gap = 1e300;
  for (Index t = 0; t < values.rows(); ++t) {
    Vector<double> row = values.row(t).transpose();
    std::sort(row.data(), row.data() + row.size());
    for (Index e = 1; e < row.size(); ++e) gap = std::min(gap, row[e] - row[e - 1]);
  }
  return gap;
}

template <TrainableGate G>
moe::testing::GradCheckResult check_gate_gradients(G gate, RowMatrix<double> x, Mode mode, std::uint64_t seed = 5) {
  RoutingPlan<double> plan;
  const auto route = [&] {
    if constexpr (requires { gate.reseed(seed); }) gate.reseed(seed);  // the same noise every time
    gate.route(x, plan, mode);
  };
  route();
  const IndexMatrix chosen = plan.expert;
  const auto dropped = plan.dropped;
  const RowMatrix<double> c_w = random_matrix<double>(plan.weight.rows(), plan.weight.cols(), seed + 1);
  const RowMatrix<double> c_z = random_matrix<double>(plan.logits.rows(), plan.logits.cols(), seed + 2);
  const RowMatrix<double> c_s = random_matrix<double>(plan.noise_std.rows(), plan.noise_std.cols(), seed + 3);
  const RowMatrix<double> c_p = random_matrix<double>(plan.scores.rows(), plan.scores.cols(), seed + 4);

  RouterGradients<double> grads;
  grads.reset(plan);
  grads.d_weight = c_w;
  grads.d_scores = c_p;
  grads.d_logits = c_z;
  if (plan.noisy) grads.d_noise_std = c_s;
  const RowMatrix<double> d_x_before = random_matrix<double>(x.rows(), x.cols(), seed + 5);
  RowMatrix<double> d_x = d_x_before;
  typename G::Gradients param_grads = gate.make_gradients();
  gate.backward(x, plan, grads, d_x, param_grads);
  d_x -= d_x_before;

  ParameterList<double> params, analytic;
  gate.collect_parameters("", params);
  param_grads.collect_parameters("", analytic);
  params.push_back(view("x", x));
  analytic.push_back(view("x", d_x));

  bool selection_changed = false;
  const auto loss = [&] {
    route();
    selection_changed |= plan.expert != chosen || plan.dropped != dropped;
    double value = (c_w.array() * plan.weight.array()).sum() + (c_p.array() * plan.scores.array()).sum() +
                   (c_z.array() * plan.logits.array()).sum();
    if (plan.noisy) value += (c_s.array() * plan.noise_std.array()).sum();
    return value;
  };
  moe::testing::GradCheckResult result = moe::testing::check_gradients(loss, params, analytic);
  if (selection_changed) {
    result.ok = false;
    result.log += "a finite-difference step changed the selection: pick inputs with a wider gap\n";
  }
  return result;
}

}  // namespace moe::test
