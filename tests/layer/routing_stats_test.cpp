// RoutingStats after SparseMoE::forward: every field recomputed from last_plan(), on a hand-made
// plan with known answers, and at the two extremes (all scores equal, total collapse).
#include "layer/layer_cases.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace moe {
namespace MOE_TEST_FILE_ID {

using test::random_matrix;
using namespace test::cases;

template <class S>
double entropy_tolerance() {
  return sizeof(S) == sizeof(float) ? 1e-6 : 1e-12;
}

// Router entropy from its definition: mean over tokens of −Σ_e p log p, p = scores[t] / Σ scores[t].
template <class S>
double reference_entropy(const RoutingPlan<S>& plan) {
  const Index T = plan.num_tokens();
  if (T == 0) return 0.0;
  double sum = 0;
  for (Index t = 0; t < T; ++t) {
    const Eigen::RowVectorXd scores = plan.scores.row(t).template cast<double>();
    const Eigen::RowVectorXd p = scores / scores.sum();
    for (Index e = 0; e < p.size(); ++e)
      if (p[e] > 0) sum -= p[e] * std::log(p[e]);
  }
  return sum / double(T);
}

// Every statistic recomputed from the plan the layer acted on.
template <class S>
void expect_stats_describe_plan(const RoutingStats& stats, const RoutingPlan<S>& plan) {
  const Index T = plan.num_tokens(), k = plan.slots_per_token(), E = plan.num_experts;
  std::vector<Index> count(static_cast<std::size_t>(E), 0);
  Index dropped = 0;
  for (Index t = 0; t < T; ++t)
    for (Index j = 0; j < k; ++j) {
      if (plan.active(t, j)) ++count[plan.expert(t, j)];
      dropped += plan.dropped(t, j) != 0;
    }
  const Index assignments = std::accumulate(count.begin(), count.end(), Index{0});
  ASSERT_GT(assignments, 0);
  EXPECT_EQ(stats.num_tokens, T);
  EXPECT_EQ(stats.tokens_per_expert, count);
  EXPECT_EQ(stats.assignments, assignments);
  EXPECT_EQ(stats.dropped, dropped);
  EXPECT_EQ(stats.unused_experts, std::count(count.begin(), count.end(), Index{0}));
  ASSERT_EQ(stats.load_fraction.size(), static_cast<std::size_t>(E));
  for (Index e = 0; e < E; ++e) EXPECT_DOUBLE_EQ(stats.load_fraction[e], double(count[e]) / double(assignments));
  EXPECT_NEAR(std::accumulate(stats.load_fraction.begin(), stats.load_fraction.end(), 0.0), 1.0, 1e-12);
  const double max_load = double(*std::max_element(count.begin(), count.end()));
  const double mean_load = double(assignments) / double(E);
  EXPECT_EQ(stats.max_load, max_load);
  EXPECT_DOUBLE_EQ(stats.mean_load, mean_load);
  EXPECT_DOUBLE_EQ(stats.imbalance(), max_load / mean_load);
  EXPECT_NEAR(stats.router_entropy, reference_entropy(plan), entropy_tolerance<S>());
}

template <class S>
class RoutingStatsTest : public ::testing::Test {};
TYPED_TEST_SUITE(RoutingStatsTest, test::Scalars);

TYPED_TEST(RoutingStatsTest, DescribeTheLastPlan) {
  using S = TypeParam;
  auto layer = mixtral_layer<S>();
  RowMatrix<S> y(kManyTokens, kDModel);
  layer.forward(random_matrix<S>(kManyTokens, kDModel, 2001), y);
  expect_stats_describe_plan(layer.last_stats(), layer.last_plan());
  EXPECT_EQ(layer.last_stats().assignments, kManyTokens * kTopK);  // dropless
  EXPECT_EQ(layer.last_stats().dropped, 0);
  EXPECT_DOUBLE_EQ(layer.last_stats().mean_load, double(kManyTokens * kTopK) / kExperts);

  // A second, smaller batch replaces the statistics instead of adding to them.
  RowMatrix<S> y_small(kTokens, kDModel);
  layer.forward(random_matrix<S>(kTokens, kDModel, 2002), y_small);
  expect_stats_describe_plan(layer.last_stats(), layer.last_plan());
  EXPECT_EQ(layer.last_stats().assignments, kTokens * kTopK);
}

TYPED_TEST(RoutingStatsTest, CountCapacityDrops) {
  using S = TypeParam;
  auto layer = switch_layer<S>(/*factor=*/0.5);
  RowMatrix<S> y(kManyTokens, kDModel);
  layer.forward(random_matrix<S>(kManyTokens, kDModel, 2003), y);
  const RoutingStats& stats = layer.last_stats();
  expect_stats_describe_plan(stats, layer.last_plan());
  const Index capacity = expert_capacity({.factor = 0.5}, kManyTokens, 1, kExperts);  // 38
  EXPECT_GE(stats.dropped, kManyTokens - kExperts * capacity);
  EXPECT_EQ(stats.assignments + stats.dropped, kManyTokens);  // k = 1: a slot is computed or dropped
  for (const Index n : stats.tokens_per_expert) EXPECT_LE(n, capacity);
}

TYPED_TEST(RoutingStatsTest, EntropyOfSigmoidScoresIsNormalised) {
  using S = TypeParam;
  auto config = mixtral_config();
  config.scoring = Scoring::sigmoid;
  auto layer = mixtral_layer<S>(config);
  RowMatrix<S> y(kTokens, kDModel);
  layer.forward(random_matrix<S>(kTokens, kDModel, 2004), y);
  expect_stats_describe_plan(layer.last_stats(), layer.last_plan());
  // Sigmoid scores do not sum to 1; normalised, entropy lies in (0, ln E].
  EXPECT_GT(layer.last_stats().router_entropy, 0.0);
  EXPECT_LE(layer.last_stats().router_entropy, std::log(double(kExperts)) + 1e-12);
}

TYPED_TEST(RoutingStatsTest, EqualScoresHaveEntropyLogE) {
  using S = TypeParam;
  for (const Scoring scoring : {Scoring::softmax, Scoring::sigmoid}) {
    auto config = mixtral_config();
    config.scoring = scoring;
    auto layer = mixtral_layer<S>(config);
    layer.gate().router().weight().setZero();
    RowMatrix<S> y(kTokens, kDModel);
    layer.forward(random_matrix<S>(kTokens, kDModel, 2005), y);
    const RoutingStats& stats = layer.last_stats();
    EXPECT_NEAR(stats.router_entropy, std::log(double(kExperts)), entropy_tolerance<S>());
    // Ties go to experts 0 and 1: half the experts idle, twice the mean load on the others.
    EXPECT_EQ(stats.tokens_per_expert, (std::vector<Index>{kTokens, kTokens, 0, 0}));
    EXPECT_EQ(stats.unused_experts, 2);
    EXPECT_DOUBLE_EQ(stats.imbalance(), 2.0);
  }
}

TYPED_TEST(RoutingStatsTest, CollapseOntoOneExpert) {
  using S = TypeParam;
  auto config = mixtral_config(/*top_k=*/1);
  config.router_bias = true;
  auto layer = mixtral_layer<S>(config);
  layer.gate().router().weight().setZero();
  layer.gate().router().bias() << S(0), S(0), S(0), S(50);
  RowMatrix<S> y(kTokens, kDModel);
  layer.forward(random_matrix<S>(kTokens, kDModel, 2006), y);
  const RoutingStats& stats = layer.last_stats();
  expect_stats_describe_plan(stats, layer.last_plan());
  EXPECT_EQ(stats.tokens_per_expert, (std::vector<Index>{0, 0, 0, kTokens}));
  EXPECT_EQ(stats.load_fraction, (std::vector<double>{0, 0, 0, 1}));
  EXPECT_EQ(stats.unused_experts, kExperts - 1);
  EXPECT_EQ(stats.max_load, double(kTokens));
  EXPECT_DOUBLE_EQ(stats.imbalance(), double(kExperts));  // total collapse
  EXPECT_NEAR(stats.router_entropy, 0.0, 1e-18);           // p = (e⁻⁵⁰, e⁻⁵⁰, e⁻⁵⁰, ≈1)
}

TYPED_TEST(RoutingStatsTest, HandMadePlan) {
  using S = TypeParam;
  // T = 3, k = 2, E = 4:  token 0 → experts 2, 0;  token 1 → expert 2 and an empty slot;
  // token 2 → expert 1 (dropped) and expert 2.
  RoutingPlan<S> plan;
  plan.reset(3, 2, 4);
  plan.expert << 2, 0, 2, kEmptySlot, 1, 2;
  plan.dropped(2, 0) = 1;
  plan.logits.setZero();
  plan.scores << S(0.5), S(0.5), S(0), S(0),     // ln 2
      S(0.25), S(0.25), S(0.25), S(0.25),        // ln 4
      S(1), S(1), S(0), S(0);                    // not normalised (sigmoid-like): ln 2
  RoutingStats stats;
  stats.tokens_per_expert.assign(9, 99);  // stale contents must be replaced
  compute_routing_stats(plan, stats);
  EXPECT_EQ(stats.num_tokens, 3);
  EXPECT_EQ(stats.assignments, 4);
  EXPECT_EQ(stats.dropped, 1);
  EXPECT_EQ(stats.tokens_per_expert, (std::vector<Index>{1, 0, 3, 0}));
  EXPECT_EQ(stats.load_fraction, (std::vector<double>{0.25, 0, 0.75, 0}));
  EXPECT_EQ(stats.unused_experts, 2);
  EXPECT_EQ(stats.max_load, 3.0);
  EXPECT_EQ(stats.mean_load, 1.0);
  EXPECT_EQ(stats.imbalance(), 3.0);
  EXPECT_NEAR(stats.router_entropy, 4.0 / 3.0 * std::log(2.0), entropy_tolerance<S>());
}

}  // namespace
}  // namespace moe
