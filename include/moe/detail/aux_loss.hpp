// What every auxiliary loss (include/moe/loss/) checks and shares: the token mask, the
// coefficient, the shapes of the plan and of the gradients, and the backward step through the
// score function (scores = softmax(logits) or σ(logits)) to the logits.
#pragma once

#include "moe/errors.hpp"
#include "moe/gating/top_k_gate.hpp"  // moe::Scoring
#include "moe/routing.hpp"

#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>

namespace moe::detail {

// Whether token t counts: every token when the mask is empty, else mask[t] != 0.
inline bool token_counts(std::span<const std::uint8_t> mask, Index t) {
  return mask.empty() || mask[static_cast<std::size_t>(t)] != 0;
}

// The number of tokens that count.
//   throws: shape_error "<where>: mask.size() = m but num_tokens = T" unless m is 0 or T.
inline Index counted_tokens(std::string_view where, std::span<const std::uint8_t> mask, Index T) {
  if (mask.empty()) return T;
  check_dim(where, "mask.size()", static_cast<Index>(mask.size()), "num_tokens", T);
  Index n = 0;
  for (const std::uint8_t m : mask) n += m != 0;
  return n;
}

// throws: config_error "<where>: <name> = v but must be finite and > 0".
inline void check_coefficient(std::string_view where, std::string_view name, double value) {
  check_config(std::isfinite(value) && value > 0, where, name, " = ", value, " but must be finite and > 0");
}

// The plan's arrays agree with each other: logits, scores [T, E]; weight, dropped [T, k].
template <class S>
void check_plan(std::string_view where, const RoutingPlan<S>& plan) {
  const Index T = plan.num_tokens(), k = plan.slots_per_token(), E = plan.num_experts;
  check_dim(where, "plan.weight.rows()", plan.weight.rows(), "num_tokens", T);
  check_dim(where, "plan.weight.cols()", plan.weight.cols(), "top_k", k);
  check_dim(where, "plan.logits.rows()", plan.logits.rows(), "num_tokens", T);
  check_dim(where, "plan.logits.cols()", plan.logits.cols(), "num_experts", E);
  check_dim(where, "plan.scores.rows()", plan.scores.rows(), "num_tokens", T);
  check_dim(where, "plan.scores.cols()", plan.scores.cols(), "num_experts", E);
}

// The gradients have the plan's shapes (grads->reset(plan) was done); d_noise_std only when the
// loss writes it.
template <class S>
void check_gradients(std::string_view where, const RoutingPlan<S>& plan, const RouterGradients<S>& grads,
                     bool noise_std) {
  const Index T = plan.num_tokens(), k = plan.slots_per_token(), E = plan.num_experts;
  check_dim(where, "grads.d_logits.rows()", grads.d_logits.rows(), "num_tokens", T);
  check_dim(where, "grads.d_logits.cols()", grads.d_logits.cols(), "num_experts", E);
  check_dim(where, "grads.d_weight.rows()", grads.d_weight.rows(), "num_tokens", T);
  check_dim(where, "grads.d_weight.cols()", grads.d_weight.cols(), "top_k", k);
  if (noise_std) {
    check_dim(where, "grads.d_noise_std.rows()", grads.d_noise_std.rows(), "num_tokens", T);
    check_dim(where, "grads.d_noise_std.cols()", grads.d_noise_std.cols(), "num_experts", E);
  }
}

// A loss is told which score function made plan.scores (the plan does not record it) and its
// gradient is only right if it is told the truth, so the first token's scores are recomputed
// from its logits and compared: a softmax-configured loss given sigmoid scores throws instead
// of returning a wrong gradient. Scoring::softmax_selected scores are softmax(logits) too.
//   throws: config_error "<where>: scoring = softmax but plan.scores(0, e) = ... (expected ...)".
template <class S>
void check_scoring(std::string_view where, const RoutingPlan<S>& plan, Scoring scoring) {
  const Index E = plan.num_experts;
  if (plan.num_tokens() == 0 || E == 0) return;
  const auto z = plan.logits.row(0).template cast<double>();
  const double max = z.maxCoeff();
  const double sum = (z.array() - max).exp().sum();
  for (Index e = 0; e < E; ++e) {
    const double expected =
        scoring == Scoring::sigmoid ? 1.0 / (1.0 + std::exp(-z[e])) : std::exp(z[e] - max) / sum;
    const double got = static_cast<double>(plan.scores(0, e));
    check_config(std::abs(got - expected) <= 1e-4 + 1e-3 * std::abs(expected), where, "scoring = ",
                 scoring == Scoring::sigmoid ? "sigmoid" : "softmax", " but plan.scores(0, ", e, ") = ", got,
                 " is not that of plan.logits (", expected, "): set the loss's scoring to the gate's");
  }
}

// d_logits[t] += scale · J(t)ᵀ · d_scores, where J(t) = ∂scores[t]/∂logits[t]:
//   softmax: ∂/∂z_e = s_e · (g_e − Σ_j s_j g_j)        sigmoid: ∂/∂z_e = g_e · s_e (1 − s_e)
//   d_scores: [E] (∂value/∂scores[t]);  d_logits: [T, E] (accumulated)
template <class S>
void add_scores_backward(const RoutingPlan<S>& plan, Scoring scoring, Index t, const double* d_scores,
                         double scale, RowMatrix<S>& d_logits) {
  const Index E = plan.num_experts;
  if (scoring == Scoring::sigmoid) {
    for (Index e = 0; e < E; ++e) {
      const double s = static_cast<double>(plan.scores(t, e));
      d_logits(t, e) += static_cast<S>(scale * d_scores[e] * s * (1.0 - s));
    }
    return;
  }
  double dot = 0;
  for (Index e = 0; e < E; ++e) dot += static_cast<double>(plan.scores(t, e)) * d_scores[e];
  for (Index e = 0; e < E; ++e) {
    const double s = static_cast<double>(plan.scores(t, e));
    d_logits(t, e) += static_cast<S>(scale * s * (d_scores[e] - dot));
  }
}

}  // namespace moe::detail
