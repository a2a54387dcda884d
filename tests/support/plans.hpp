// Routing plans built by hand or from a seed, for the tests of the kernels that consume them.
#pragma once

#include <moe/random.hpp>
#include <moe/routing.hpp>

#include <cstdint>
#include <utility>
#include <vector>

namespace moe::test {

// T = 7, k = 2, E = 4: expert 2 gets no token, token 4 has no slot, token 2 has one empty slot,
// slot (3, 1) is dropped by capacity. Empty and dropped slots carry non-zero weights.
template <class S>
RoutingPlan<S> hand_plan() {
  constexpr Index T = 7, k = 2, E = 4;
  constexpr std::int32_t X = kEmptySlot;
  RoutingPlan<S> plan;
  plan.reset(T, k, E);
  const std::int32_t experts[T][k] = {{1, 0}, {3, 1}, {0, X}, {1, 3}, {X, X}, {0, 3}, {3, 0}};
  for (Index t = 0; t < T; ++t)
    for (Index j = 0; j < k; ++j) {
      plan.expert(t, j) = experts[t][j];
      plan.weight(t, j) = static_cast<S>(0.1 * static_cast<double>(t * k + j + 1));
    }
  plan.dropped(3, 1) = 1;
  return plan;
}

// Seeded plan: each token picks k distinct experts (partial Fisher–Yates with moe::uniform01, so
// the plan is the same on every standard library), weights U(−1, 1); about 10 % of the slots are
// then emptied and 15 % dropped.
template <class S>
RoutingPlan<S> random_plan(Index T, Index k, Index E, std::uint64_t seed) {
  Generator rng(seed);
  RoutingPlan<S> plan;
  plan.reset(T, k, E);
  std::vector<std::int32_t> pool(static_cast<std::size_t>(E));
  for (Index t = 0; t < T; ++t) {
    for (Index e = 0; e < E; ++e) pool[static_cast<std::size_t>(e)] = static_cast<std::int32_t>(e);
    for (Index j = 0; j < k; ++j) {
      const auto pick = j + static_cast<Index>(uniform01(rng) * static_cast<double>(E - j));
      std::swap(pool[static_cast<std::size_t>(j)], pool[static_cast<std::size_t>(pick)]);
      plan.expert(t, j) = pool[static_cast<std::size_t>(j)];
      plan.weight(t, j) = static_cast<S>(uniform(rng, -1.0, 1.0));
      const double fate = uniform01(rng);
      if (fate < 0.1) plan.expert(t, j) = kEmptySlot;
      else if (fate < 0.25) plan.dropped(t, j) = 1;
    }
  }
  return plan;
}

}  // namespace moe::test
