// The public checkers of a gate and of an auxiliary loss, beside check_expert (gradient_check.hpp):
// central differences in double, a log with one line per tensor and per contract check, every
// comparison (contract checks included) a relative error ‖a − b‖ / ‖a + b‖ within
// options.tolerance, so that a user can check a custom gate or loss in three lines:
//
//   #include <moe/testing/router_check.hpp>
//   const auto result = moe::testing::check_gate(MyGate<double>(config), x);  // or check_aux_loss(loss, plan)
//   EXPECT_TRUE(result.ok) << result.log;
//
// Not included by moe.hpp.
#pragma once

#include "moe/concepts.hpp"
#include "moe/errors.hpp"
#include "moe/parameters.hpp"
#include "moe/random.hpp"
#include "moe/routing.hpp"
#include "moe/testing/gradient_check.hpp"

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <iomanip>
#include <span>
#include <sstream>
#include <string>
#include <vector>

namespace moe::testing {

namespace detail {

// A [rows, cols] matrix of U(−scale, scale) draws from rng.
inline RowMatrix<double> uniform_matrix(Generator& rng, Index rows, Index cols, double scale = 1) {
  RowMatrix<double> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = scale * uniform(rng, -1.0, 1.0);
  return m;
}

inline std::span<const double> values_of(const RowMatrix<double>& m) {
  return {m.data(), static_cast<std::size_t>(m.size())};
}

// Which step call number `call` of check_gradients' loss makes: check_gradients walks the tensors in
// order, each entry by entry, and evaluates the loss at +h, then at −h.
inline std::string step_of_call(const ParameterList<double>& tensors, std::size_t call) {
  std::size_t entry = call / 2;
  for (const auto& t : tensors) {
    if (entry < static_cast<std::size_t>(t.size()))
      return moe::detail::concat(call % 2 == 0 ? "+h" : "-h", " on ", t.name, " (", static_cast<Index>(entry) / t.cols,
                                 ", ", static_cast<Index>(entry) % t.cols, ")");
    entry -= static_cast<std::size_t>(t.size());
  }
  return "a step past the last tensor";
}

// False, with a FAIL line, unless grads lists the names and shapes of params, all zero.
inline bool zero_gradients_like(GradCheckResult& result, const ParameterList<double>& params,
                                const ParameterList<double>& grads) {
  try {
    check_matching(params, grads, "make_gradients()");
  } catch (const shape_error& error) {
    result.ok = false;
    result.log += moe::detail::concat("FAIL: ", error.what(), "\n");
    return false;
  }
  for (const auto& g : grads)
    if (!g.matrix().isZero(0)) {
      result.ok = false;
      result.log += moe::detail::concat("FAIL: make_gradients() gave a non-zero ", g.name, "\n");
    }
  return result.ok;
}

}  // namespace detail

// check_gate(gate, x, mode, seed, options)
//   requires: G a TrainableGate of Scalar double, copyable (a copy is routed and perturbed through
//             its collect_parameters() views, so a copy must own its parameters); x: [T, d_model()].
//             The gate's selection must not change under ±step (see below).
//   ensures:  returns ok = false with a FAIL line for each failed check, ok = true if all pass:
//     - make_gradients() lists the names and shapes of collect_parameters(), all zero;
//     - route(x, plan, mode), then backward with RouterGradients c (seeded U(−1, 1): c_w, c_p, c_z,
//       and c_σ when plan.noisy) against central differences of
//         L = Σ c_w ⊙ plan.weight + Σ c_p ⊙ plan.scores + Σ c_z ⊙ plan.logits (+ Σ c_σ ⊙ plan.noise_std)
//       over every parameter (its name) and over x ("x", the d_x of a backward into zeros);
//     - d_x is accumulated: a second backward adds to a d_x of seeded values what the first wrote
//       into zeros ("d_x: accumulated (+=)");
//     - parameter gradients are accumulated: that second backward, into the first one's
//       gradients, makes them twice the first;
//     - no finite-difference step changes the selection (plan.expert, plan.dropped): the first
//       step that does is named in a FAIL line (move the inputs apart or take a smaller step).
//   A gate with reseed(seed) (one that draws noise or jitter) is reseeded before every route, so
//   that every route draws the same noise. The log starts with the settings (to reproduce a run).
//   throws:   config_error for bad options; whatever the gate throws.
template <TrainableGate G>
  requires std::same_as<typename G::Scalar, double> && std::copy_constructible<G>
GradCheckResult check_gate(const G& gate, ConstMatrixRef<double> x, Mode mode = Mode::inference,
                           std::uint64_t seed = 5, GradCheckOptions options = {}) {
  const Index T = x.rows(), d = x.cols();
  GradCheckResult result;
  result.log += moe::detail::concat("check_gate: num_tokens = ", T, ", d_model = ", d, ", num_experts = ",
                                    gate.num_experts(), ", slots_per_token = ", gate.slots_per_token(), ", mode = ",
                                    mode == Mode::training ? "training" : "inference", ", seed = ", seed,
                                    ", step = ", options.step, ", tolerance = ", options.tolerance, "\n");
  G copy = gate;  // never moved after collect_parameters
  ParameterList<double> params, analytic;
  copy.collect_parameters("", params);
  typename G::Gradients param_grads = copy.make_gradients();
  param_grads.collect_parameters("", analytic);
  if (!detail::zero_gradients_like(result, params, analytic)) return result;

  RowMatrix<double> x_probe = x;
  RoutingPlan<double> plan, probe;
  const auto route = [&](RoutingPlan<double>& into) {
    if constexpr (requires { copy.reseed(seed); }) copy.reseed(seed);
    copy.route(x_probe, into, mode);
  };
  route(plan);
  Generator rng(seed);
  RouterGradients<double> c;
  c.reset(plan);
  c.d_weight = detail::uniform_matrix(rng, c.d_weight.rows(), c.d_weight.cols());
  c.d_scores = detail::uniform_matrix(rng, c.d_scores.rows(), c.d_scores.cols());
  c.d_logits = detail::uniform_matrix(rng, c.d_logits.rows(), c.d_logits.cols());
  c.d_noise_std = detail::uniform_matrix(rng, c.d_noise_std.rows(), c.d_noise_std.cols());
  RowMatrix<double> d_x_alone = RowMatrix<double>::Zero(T, d);
  copy.backward(x_probe, plan, c, d_x_alone, param_grads);

  // Central differences; each loss call routes into probe, so plan stays for the second backward.
  ParameterList<double> checked = params;
  checked.push_back(view("x", x_probe));
  analytic.push_back(view("x", d_x_alone));
  std::size_t calls = 0, flips = 0, first_flip = 0;
  const auto loss = [&] {
    route(probe);
    if ((probe.expert != plan.expert || probe.dropped != plan.dropped) && flips++ == 0) first_flip = calls;
    ++calls;
    double value = (c.d_weight.array() * probe.weight.array()).sum() +
                   (c.d_scores.array() * probe.scores.array()).sum() +
                   (c.d_logits.array() * probe.logits.array()).sum();
    if (probe.noisy) value += (c.d_noise_std.array() * probe.noise_std.array()).sum();
    return value;
  };
  const std::string accumulated = "d_x: accumulated (+=)", twice = "parameter grads again: accumulated, twice";
  const std::size_t width = std::max({detail::label_width(checked), accumulated.size(), twice.size()});
  detail::merge(result, detail::check_gradients(loss, checked, analytic, options, "", width));
  if (flips > 0) {
    result.ok = false;
    result.log += moe::detail::concat("FAIL: ", flips, " of ", calls, " finite-difference steps changed the selection",
                                      " (expert ids or drop marks), first the step ",
                                      detail::step_of_call(checked, first_flip),
                                      ": use inputs whose choices are further apart than the step\n");
  }

  // The second backward, after routing x again (the last step left the gate's scratch at x − h):
  // into the first one's gradients, and into a d_x of seeded values of the size of d_x_alone's (so
  // that rounding in (start + added) − start stays at added's own level).
  std::vector<double> twice_first, second;
  for (std::size_t i = 0; i + 1 < analytic.size(); ++i)
    for (const double v : analytic[i].values()) twice_first.push_back(2 * v);
  const double size = T * d > 0 ? d_x_alone.cwiseAbs().maxCoeff() : 0;
  const RowMatrix<double> d_x_start = detail::uniform_matrix(rng, T, d, size > 0 ? size : 1);
  RowMatrix<double> d_x = d_x_start;
  route(plan);
  copy.backward(x_probe, plan, c, d_x, param_grads);
  const RowMatrix<double> d_x_added = d_x - d_x_start;
  for (std::size_t i = 0; i + 1 < analytic.size(); ++i)
    for (const double v : analytic[i].values()) second.push_back(v);
  std::ostringstream log;
  detail::record(result, log, "", accumulated, width,
                 relative_error(detail::values_of(d_x_added), detail::values_of(d_x_alone)), options.tolerance);
  detail::record(result, log, "", twice, width, relative_error(second, twice_first), options.tolerance);
  result.log += log.str();
  return result;
}

// check_aux_loss(loss, plan, mask, seed, options)
//   requires: L an AuxLoss of Scalar double; plan: a routing plan the loss accepts (as a gate fills
//             it, noise and noise_std [T, E] when plan.noisy); mask: empty or [T].
//   ensures:  returns ok = false with a FAIL line for each failed check, ok = true if all pass:
//     - evaluate(plan, mask, &grads), grads.reset(plan) done, keeps the shapes of grads;
//     - it returns the value of evaluate(plan, mask, nullptr) ("value with grads = without");
//     - grads.d_weight, d_scores, d_logits (and d_noise_std when plan.noisy) against central
//       differences of evaluate(plan, mask, nullptr) in plan.weight, plan.scores, plan.logits (and
//       plan.noise_std), each perturbed with the others held fixed (the selection, plan.expert, is
//       part of the plan and never changes);
//     - gradients are accumulated: evaluate into grads prefilled with seeded values (of the size
//       of the fresh gradients) adds the fresh gradients, per tensor ("d_scores: accumulated (+=)").
//   The log starts with the settings, then has one line per checked tensor and per check.
//   throws:   config_error for bad options; whatever the loss throws.
template <AuxLoss L>
  requires std::same_as<typename L::Scalar, double>
GradCheckResult check_aux_loss(const L& loss, const RoutingPlan<double>& plan, std::span<const std::uint8_t> mask = {},
                               std::uint64_t seed = 7, GradCheckOptions options = {}) {
  GradCheckResult result;
  const auto padding = std::count(mask.begin(), mask.end(), std::uint8_t{0});
  result.log += moe::detail::concat("check_aux_loss: num_tokens = ", plan.num_tokens(), ", slots_per_token = ",
                                    plan.slots_per_token(), ", num_experts = ", plan.num_experts, ", noisy = ",
                                    plan.noisy ? "yes" : "no", ", mask = ",
                                    mask.empty() ? "none" : moe::detail::concat(padding, " padding tokens"),
                                    ", seed = ", seed, ", step = ", options.step, ", tolerance = ", options.tolerance,
                                    "\n");
  RouterGradients<double> grads, shapes;
  grads.reset(plan);
  shapes.reset(plan);
  const double value = loss.evaluate(plan, mask, &grads);
  const double bare = loss.evaluate(plan, mask, nullptr);

  RoutingPlan<double> probe = plan;
  ParameterList<double> checked{view("plan.weight", probe.weight), view("plan.scores", probe.scores),
                                view("plan.logits", probe.logits)};
  ParameterList<double> analytic{view("plan.weight", grads.d_weight), view("plan.scores", grads.d_scores),
                                 view("plan.logits", grads.d_logits)};
  ParameterList<double> expected{view("plan.weight", shapes.d_weight), view("plan.scores", shapes.d_scores),
                                 view("plan.logits", shapes.d_logits)};
  if (plan.noisy) {
    checked.push_back(view("plan.noise_std", probe.noise_std));
    analytic.push_back(view("plan.noise_std", grads.d_noise_std));
    expected.push_back(view("plan.noise_std", shapes.d_noise_std));
  }
  const std::string kept = "grads keep the plan's shapes", same = "value with grads = without";
  const std::size_t width = std::max({detail::label_width(checked), kept.size(), same.size(),
                                      std::string("d_noise_std: accumulated (+=)").size()});
  std::ostringstream log;
  for (std::size_t i = 0; i < analytic.size(); ++i)
    if (analytic[i].rows != expected[i].rows || analytic[i].cols != expected[i].cols) {
      result.ok = false;
      log << "FAIL: evaluate resized the gradient of " << analytic[i].name << " to "
          << detail::shape_text(analytic[i].rows, analytic[i].cols) << "; reset(plan) made it "
          << detail::shape_text(expected[i].rows, expected[i].cols) << "\n";
    }
  if (!result.ok) {
    result.log += log.str();
    return result;
  }
  log << std::left << std::setw(static_cast<int>(width)) << kept << "  ok\n";
  detail::record(result, log, "", same, width, relative_error(std::span(&value, 1), std::span(&bare, 1)),
                 options.tolerance);
  result.log += log.str();

  const auto evaluate = [&] { return loss.evaluate(probe, mask, nullptr); };
  detail::merge(result, detail::check_gradients(evaluate, checked, analytic, options, "", width));

  // Accumulation: prefilled values of each fresh gradient's size, so that rounding in
  // (prefill + fresh) − prefill stays at the level of the fresh gradient's own.
  Generator rng(seed);
  RouterGradients<double> prefilled = shapes;
  ParameterList<double> filled{view("d_weight", prefilled.d_weight), view("d_scores", prefilled.d_scores),
                               view("d_logits", prefilled.d_logits), view("d_noise_std", prefilled.d_noise_std)};
  filled.resize(analytic.size());
  std::vector<RowMatrix<double>> before;
  for (std::size_t i = 0; i < filled.size(); ++i) {
    const double size = analytic[i].size() > 0 ? analytic[i].matrix().cwiseAbs().maxCoeff() : 0;
    filled[i].matrix() = detail::uniform_matrix(rng, filled[i].rows, filled[i].cols, size > 0 ? size : 1);
    before.push_back(filled[i].matrix());
  }
  loss.evaluate(plan, mask, &prefilled);
  log.str("");
  for (std::size_t i = 0; i < filled.size(); ++i) {
    const RowMatrix<double> added = filled[i].matrix() - before[i];
    detail::record(result, log, "", filled[i].name + ": accumulated (+=)", width,
                   relative_error(detail::values_of(added), analytic[i].values()), options.tolerance);
  }
  result.log += log.str();
  return result;
}

}  // namespace moe::testing
