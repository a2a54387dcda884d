// What every auxiliary loss (include/moe/loss/) checks and shares: the token mask, the
// coefficient, the shapes of the plan and of the gradients, and how its sums over the tokens
// reach the other processes of a batch split over processes (LocalSums, global_count).
#pragma once

#include "moe/errors.hpp"
#include "moe/routing.hpp"

#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>

namespace moe::detail {

// A loss's sums over the tokens, completed with the other processes' (the layer passes its
// exchange's sum: over MPI ranks for expert parallelism, the same bits on every rank, so that
// every rank's loss is the loss of the whole batch). LocalSums: the batch is all here.
struct LocalSums {
  void operator()(std::span<double>) const {}
};

// n summed over the processes (exact: counts stay far below 2⁵³).
template <class Sums>
Index global_count(const Sums& sums, Index n) {
  double value = static_cast<double>(n);
  sums(std::span<double>(&value, 1));
  return static_cast<Index>(value);
}

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
  check_dim(where, "grads.d_scores.rows()", grads.d_scores.rows(), "num_tokens", T);
  check_dim(where, "grads.d_scores.cols()", grads.d_scores.cols(), "num_experts", E);
  check_dim(where, "grads.d_logits.rows()", grads.d_logits.rows(), "num_tokens", T);
  check_dim(where, "grads.d_logits.cols()", grads.d_logits.cols(), "num_experts", E);
  check_dim(where, "grads.d_weight.rows()", grads.d_weight.rows(), "num_tokens", T);
  check_dim(where, "grads.d_weight.cols()", grads.d_weight.cols(), "top_k", k);
  if (noise_std) {
    check_dim(where, "grads.d_noise_std.rows()", grads.d_noise_std.rows(), "num_tokens", T);
    check_dim(where, "grads.d_noise_std.cols()", grads.d_noise_std.cols(), "num_experts", E);
  }
}

}  // namespace moe::detail
