// Routing statistics of the last forward pass: how evenly the gate spreads the work.
#pragma once

#include "moe/dispatch/local_exchange.hpp"
#include "moe/routing.hpp"

#include <algorithm>
#include <cmath>
#include <span>
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

// stats of a routed plan (overwritten): its active slots are the computed assignments. The
// counts and the entropies' sum add up over `exchange`'s processes (every process calls it: the
// statistics of the whole batch; LocalExchange: this plan's). Token by token, in index order.
template <class S, class Exchange = LocalExchange>
void compute_routing_stats(const RoutingPlan<S>& plan, RoutingStats& stats, const Exchange& exchange = {}) {
  const Index T = plan.num_tokens(), E = plan.num_experts;
  Index totals[2] = {T, 0};  // tokens, dropped slots: integers, exact in any order
  stats.tokens_per_expert.assign(static_cast<std::size_t>(E), 0);
  double entropy = 0;
  for (Index t = 0; t < T; ++t) {
    for (Index j = 0; j < plan.slots_per_token(); ++j) {
      totals[1] += plan.dropped(t, j) != 0;
      if (plan.active(t, j)) ++stats.tokens_per_expert[static_cast<std::size_t>(plan.expert(t, j))];
    }
    double total = 0;
    for (Index e = 0; e < E; ++e) total += double(plan.scores(t, e));
    if (!(total > 0)) continue;
    for (Index e = 0; e < E; ++e) {
      const double p = double(plan.scores(t, e)) / total;
      if (p > 0) entropy -= p * std::log(p);
    }
  }
  exchange.sum(std::span<Index>(totals));
  exchange.sum(std::span<Index>(stats.tokens_per_expert));
  exchange.sum(std::span<double>(&entropy, 1));
  stats.num_tokens = totals[0];
  stats.dropped = totals[1];
  stats.assignments = 0;
  for (const Index n : stats.tokens_per_expert) stats.assignments += n;
  stats.load_fraction.resize(static_cast<std::size_t>(E));
  stats.unused_experts = 0;
  stats.max_load = 0;
  for (Index e = 0; e < E; ++e) {
    const Index n = stats.tokens_per_expert[static_cast<std::size_t>(e)];
    stats.load_fraction[static_cast<std::size_t>(e)] = stats.assignments > 0 ? double(n) / double(stats.assignments) : 0.0;
    stats.unused_experts += n == 0;
    stats.max_load = std::max(stats.max_load, double(n));
  }
  stats.mean_load = E > 0 ? double(stats.assignments) / double(E) : 0.0;
  stats.router_entropy = stats.num_tokens > 0 ? entropy / double(stats.num_tokens) : 0.0;
}

}  // namespace moe
