// Routing statistics of the last forward pass: how evenly the gate spreads the work.
#pragma once

#include "moe/routing.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace moe {

struct RoutingStats {
  Index num_tokens = 0;
  Index assignments = 0;                  // active (token, expert) pairs that were computed
  Index dropped = 0;                      // assignments dropped by capacity
  std::vector<Index> tokens_per_expert;   // [E] computed assignments per expert
  std::vector<double> load_fraction;      // [E] tokens_per_expert / assignments (0 when none)
  Index unused_experts = 0;               // experts that received no token
  double max_load = 0;                    // max_e tokens_per_expert
  double mean_load = 0;                   // assignments / E
  double router_entropy = 0;              // mean over tokens of −Σ_e p log p, in nats, where p is
                                          // the token's scores normalised to sum 1

  // max_load / mean_load: 1 is perfect balance, E is total collapse onto one expert.
  double imbalance() const { return mean_load > 0 ? max_load / mean_load : 0.0; }
};

// stats of a routed plan (overwritten): its active slots are the computed assignments.
template <class S>
void compute_routing_stats(const RoutingPlan<S>& plan, RoutingStats& stats) {
  const Index T = plan.num_tokens(), E = plan.num_experts;
  stats.num_tokens = T;
  stats.dropped = static_cast<Index>((plan.dropped.array() != 0).count());
  stats.tokens_per_expert.assign(static_cast<std::size_t>(E), 0);
  for (Index t = 0; t < T; ++t)
    for (Index j = 0; j < plan.slots_per_token(); ++j)
      if (plan.active(t, j)) ++stats.tokens_per_expert[static_cast<std::size_t>(plan.expert(t, j))];
  stats.assignments = 0;
  for (const Index n : stats.tokens_per_expert) stats.assignments += n;
  stats.load_fraction.resize(static_cast<std::size_t>(E));
  stats.unused_experts = 0;
  stats.max_load = 0;
  for (Index e = 0; e < E; ++e) {
    const Index n = stats.tokens_per_expert[e];
    stats.load_fraction[e] = stats.assignments > 0 ? double(n) / double(stats.assignments) : 0.0;
    stats.unused_experts += n == 0;
    stats.max_load = std::max(stats.max_load, double(n));
  }
  stats.mean_load = E > 0 ? double(stats.assignments) / double(E) : 0.0;

  double entropy = 0;
  for (Index t = 0; t < T; ++t) {
    const double total = double(plan.scores.row(t).sum());
    if (!(total > 0)) continue;
    for (Index e = 0; e < E; ++e) {
      const double p = double(plan.scores(t, e)) / total;
      if (p > 0) entropy -= p * std::log(p);
    }
  }
  stats.router_entropy = T > 0 ? entropy / double(T) : 0.0;
}

}  // namespace moe
