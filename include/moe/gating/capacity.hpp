// Expert capacity: how many assignments an expert accepts, and which ones it drops.
//
//   capacity C = max(min_capacity, ceil(factor · T · k / E))       (GShard, Switch, DeepSpeed)
//
// An assignment past its expert's capacity is dropped: it stays in the plan (expert, weight and
// a `dropped` mark, for statistics and backward) but contributes zero to the output. Without a
// factor the layer is dropless. Worked example (the test of this header): E = 2, k = 1, T = 6,
// factor = 1 → C = 3; if every token chooses expert 0, tokens 3, 4, 5 are dropped in token order.
#pragma once

#include "moe/errors.hpp"
#include "moe/routing.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

namespace moe {

enum class DropPolicy {
  // First choices of every token in token order, then second choices, ... (GShard, DeepSpeed,
  // NLLB-MoE: a token's first choice outranks anyone's second choice).
  token_order,
  // Assignments by combine weight, highest first; equal weights keep the token_order priority (batch
  // prioritised routing, Riquelme et al. 2021).
  highest_score,
};

struct Capacity {
  std::optional<double> factor;  // none: dropless
  Index min_capacity = 0;
  DropPolicy policy = DropPolicy::token_order;
};

namespace detail {

inline void check_capacity(const Capacity& c, std::string_view who) {
  if (c.factor)
    check_config(std::isfinite(*c.factor) && *c.factor > 0, who, "capacity factor = ", *c.factor,
                 " but must be finite and > 0");
  check_config(c.min_capacity >= 0, who, "min_capacity = ", c.min_capacity, " but must be >= 0");
}

// ceil(v) that ignores the last bits of rounding: 1.1 · 100 / 2 is 55.000000000000007 in double,
// and a capacity factor of 1.1 must give 55 there, not 56.
inline Index ceil_exact(double v) { return static_cast<Index>(std::ceil(v * (1.0 - 1e-12))); }

}  // namespace detail

// C for T tokens with k slots each over E experts (the formula above); T·k when dropless.
inline Index expert_capacity(const Capacity& c, Index num_tokens, Index top_k, Index num_experts) {
  if (!c.factor) return num_tokens * top_k;
  const double ideal = *c.factor * static_cast<double>(num_tokens * top_k) / static_cast<double>(num_experts);
  return std::max(c.min_capacity, detail::ceil_exact(ideal));
}

// Marks plan.dropped for every active assignment past its expert's capacity.
//   plan: expert, weight [T, k] (dropped overwritten);  order: scratch, any size.
template <class S>
void apply_capacity(RoutingPlan<S>& plan, Index capacity, DropPolicy policy, std::vector<Index>& order,
                    std::vector<Index>& load) {
  const Index T = plan.num_tokens(), k = plan.slots_per_token();
  plan.dropped.setZero();
  // Slots in priority order, as flat indices t·k + j.
  order.clear();
  for (Index j = 0; j < k; ++j)
    for (Index t = 0; t < T; ++t)
      if (plan.expert(t, j) != kEmptySlot) order.push_back(t * k + j);
  if (policy == DropPolicy::highest_score) {
    const S* w = plan.weight.data();
    std::stable_sort(order.begin(), order.end(), [w](Index a, Index b) { return w[a] > w[b]; });
  }
  load.assign(static_cast<std::size_t>(plan.num_experts), 0);
  for (const Index slot : order) {
    const Index t = slot / k, j = slot % k;
    if (load[plan.expert(t, j)]++ >= capacity) plan.dropped(t, j) = 1;
  }
}

}  // namespace moe
