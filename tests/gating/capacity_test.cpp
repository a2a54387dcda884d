// Expert capacity: C = max(min_capacity, ceil(factor·T·k/E)), and which assignments are dropped
// under each policy — on hand-built plans, through TopKGate, and against the double reference.
#include <moe/gating/capacity.hpp>
#include <moe/gating/top_k_gate.hpp>

#include "support/compare.hpp"
#include "support/reference_gates.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Capacity;
using moe::DropPolicy;
using moe::Index;
using moe::Mode;

template <class S>
class CapacityTest : public ::testing::Test {};
TYPED_TEST_SUITE(CapacityTest, moe::test::Scalars);

// A plan of T tokens with the given [T, k] expert ids and weights.
template <class S>
moe::RoutingPlan<S> plan_of(Index E, const std::vector<std::vector<int>>& ids,
                            const std::vector<std::vector<double>>& weights) {
  moe::RoutingPlan<S> plan;
  const Index T = static_cast<Index>(ids.size()), k = T > 0 ? static_cast<Index>(ids[0].size()) : 1;
  plan.reset(T, k, E);
  for (Index t = 0; t < T; ++t)
    for (Index j = 0; j < k; ++j) {
      plan.expert(t, j) = ids[t][j];
      plan.weight(t, j) = S(weights[t][j]);
    }
  return plan;
}

template <class S>
std::vector<int> dropped_tokens(const moe::RoutingPlan<S>& plan, Index slot) {
  std::vector<int> out;
  for (Index t = 0; t < plan.num_tokens(); ++t)
    if (plan.dropped(t, slot)) out.push_back(static_cast<int>(t));
  return out;
}

// ---------------------------------------------------------------------------------------------
// expert_capacity()

TEST(ExpertCapacity, FormulaValues) {
  EXPECT_EQ(moe::expert_capacity({.factor = 1.25}, 10, 2, 4), 7);  // ceil(6.25)
  EXPECT_EQ(moe::expert_capacity({.factor = 1.0}, 6, 1, 2), 3);    // the header's worked example
  EXPECT_EQ(moe::expert_capacity({.factor = 1.0}, 8, 2, 4), 4);    // exact: no rounding up
  EXPECT_EQ(moe::expert_capacity({.factor = 1.25}, 7, 1, 4), 3);   // Switch on T = 7: ceil(2.1875)
  EXPECT_EQ(moe::expert_capacity({.factor = 2.0}, 7, 2, 8), 4);    // ceil(3.5)
  EXPECT_EQ(moe::expert_capacity({.factor = 0.1}, 6, 1, 2), 1);    // ceil(0.3)
  EXPECT_EQ(moe::expert_capacity({.factor = 1.0}, 0, 2, 4), 0);
}

TEST(ExpertCapacity, MinCapacityIsAFloor) {
  EXPECT_EQ(moe::expert_capacity({.factor = 0.1, .min_capacity = 4}, 6, 1, 2), 4);
  EXPECT_EQ(moe::expert_capacity({.factor = 1.25, .min_capacity = 4}, 10, 2, 4), 7) << "not a ceiling";
  EXPECT_EQ(moe::expert_capacity({.factor = 1.0, .min_capacity = 2}, 0, 2, 4), 2);
}

TEST(ExpertCapacity, DroplessWithoutFactorIsEveryAssignment) {
  EXPECT_EQ(moe::expert_capacity({}, 10, 2, 4), 20);
  EXPECT_EQ(moe::expert_capacity({.factor = std::nullopt, .min_capacity = 100}, 10, 2, 4), 20);
  EXPECT_EQ(moe::expert_capacity({}, 0, 2, 4), 0);
}

TEST(ExpertCapacity, MatchesTheReferenceFormula) {
  for (const double factor : {0.3, 0.5, 1.0, 1.25, 1.5, 2.0, 4.0})
    for (const Index T : {Index(0), Index(1), Index(7), Index(10), Index(33)})
      for (const Index k : {Index(1), Index(2)})
        for (const Index E : {Index(2), Index(4), Index(8)})
          for (const Index min_capacity : {Index(0), Index(3)}) {
            const Capacity c{.factor = factor, .min_capacity = min_capacity};
            EXPECT_EQ(moe::expert_capacity(c, T, k, E), moe::test::ref::capacity(c, T, k, E))
                << "factor " << factor << " T " << T << " k " << k << " E " << E << " min " << min_capacity;
          }
}

// ---------------------------------------------------------------------------------------------
// apply_capacity() on hand-built plans

TYPED_TEST(CapacityTest, WorkedExampleTokenOrderDropsTheLastTokens) {
  using S = TypeParam;
  // E = 2, k = 1, T = 6, factor 1 → C = 3; everyone chooses expert 0.
  auto plan = plan_of<S>(2, {{0}, {0}, {0}, {0}, {0}, {0}}, {{.1}, {.9}, {.2}, {.8}, {.3}, {.7}});
  const Index C = moe::expert_capacity({.factor = 1.0}, 6, 1, 2);
  ASSERT_EQ(C, 3);
  std::vector<Index> order, load;
  moe::apply_capacity(plan, C, DropPolicy::token_order, order, load);
  EXPECT_EQ(dropped_tokens(plan, 0), (std::vector<int>{3, 4, 5}));
  // A dropped slot keeps its expert and weight (statistics, backward) but is not active.
  EXPECT_EQ(plan.expert(4, 0), 0);
  EXPECT_EQ(plan.weight(4, 0), S(.3));
  EXPECT_FALSE(plan.active(4, 0));
  EXPECT_TRUE(plan.active(2, 0));
  EXPECT_EQ(load[0], 6) << "every assignment was offered to expert 0";
  EXPECT_EQ(load[1], 0) << "expert 1 has no tokens";
}

TYPED_TEST(CapacityTest, WorkedExampleHighestScoreKeepsTheBestWeights) {
  using S = TypeParam;
  auto plan = plan_of<S>(2, {{0}, {0}, {0}, {0}, {0}, {0}}, {{.1}, {.9}, {.2}, {.8}, {.3}, {.7}});
  std::vector<Index> order, load;
  moe::apply_capacity(plan, 3, DropPolicy::highest_score, order, load);
  EXPECT_EQ(dropped_tokens(plan, 0), (std::vector<int>{0, 2, 4})) << "kept: .9, .8, .7";
}

TYPED_TEST(CapacityTest, HighestScoreBreaksTiesByTokenOrderPriority) {
  using S = TypeParam;
  // All weights equal: highest_score degenerates to token_order, including first-before-second.
  auto plan = plan_of<S>(2, {{0, 1}, {1, 0}, {0, 1}, {1, 0}}, {{.5, .5}, {.5, .5}, {.5, .5}, {.5, .5}});
  std::vector<Index> order, load;
  moe::apply_capacity(plan, 2, DropPolicy::highest_score, order, load);
  EXPECT_EQ(dropped_tokens(plan, 0), std::vector<int>{});
  EXPECT_EQ(dropped_tokens(plan, 1), (std::vector<int>{0, 1, 2, 3}));
}

TYPED_TEST(CapacityTest, TokenOrderGivesFirstChoicesPriorityOverSecondChoices) {
  using S = TypeParam;
  // k = 2, E = 2, C = 2. First choices: t0→0, t1→1, t2→1, t3→0 fill both experts, so every second
  // choice is dropped — token 0's second choice loses to token 3's first choice.
  auto plan = plan_of<S>(2, {{0, 1}, {1, 0}, {1, 0}, {0, 1}}, {{.6, .4}, {.7, .3}, {.8, .2}, {.9, .1}});
  std::vector<Index> order, load;
  moe::apply_capacity(plan, 2, DropPolicy::token_order, order, load);
  EXPECT_EQ(dropped_tokens(plan, 0), std::vector<int>{});
  EXPECT_EQ(dropped_tokens(plan, 1), (std::vector<int>{0, 1, 2, 3}));
}

TYPED_TEST(CapacityTest, SecondChoicesFillWhatFirstChoicesLeave) {
  using S = TypeParam;
  // C = 3: expert 0 takes first choices of t0, t3 and then the second choice of t1; t2's second
  // choice (also expert 0) comes after it in token order and is dropped.
  auto plan = plan_of<S>(2, {{0, 1}, {1, 0}, {1, 0}, {0, 1}}, {{.6, .4}, {.7, .3}, {.8, .2}, {.9, .1}});
  std::vector<Index> order, load;
  moe::apply_capacity(plan, 3, DropPolicy::token_order, order, load);
  EXPECT_EQ(dropped_tokens(plan, 0), std::vector<int>{});
  EXPECT_EQ(dropped_tokens(plan, 1), (std::vector<int>{2, 3}));
}

TYPED_TEST(CapacityTest, EmptySlotsTakeNoCapacityAndStaleMarksAreCleared) {
  using S = TypeParam;
  auto plan = plan_of<S>(2, {{moe::kEmptySlot}, {0}, {moe::kEmptySlot}, {0}, {0}}, {{0}, {.5}, {0}, {.5}, {.5}});
  plan.dropped.setOnes();  // left over from an earlier call
  std::vector<Index> order, load;
  moe::apply_capacity(plan, 2, DropPolicy::token_order, order, load);
  EXPECT_EQ(dropped_tokens(plan, 0), (std::vector<int>{4}));
  EXPECT_EQ(load[0], 3);
}

TYPED_TEST(CapacityTest, EnoughCapacityDropsNothing) {
  using S = TypeParam;
  auto plan = plan_of<S>(2, {{0, 1}, {1, 0}, {1, 0}}, {{.6, .4}, {.7, .3}, {.8, .2}});
  std::vector<Index> order, load;
  for (const DropPolicy policy : {DropPolicy::token_order, DropPolicy::highest_score}) {
    moe::apply_capacity(plan, 3, policy, order, load);
    EXPECT_EQ(plan.dropped.template cast<int>().sum(), 0);
  }
}

TYPED_TEST(CapacityTest, ZeroTokens) {
  using S = TypeParam;
  moe::RoutingPlan<S> plan;
  plan.reset(0, 2, 4);
  std::vector<Index> order, load;
  moe::apply_capacity(plan, 0, DropPolicy::highest_score, order, load);
  EXPECT_EQ(plan.dropped.size(), 0);
}

// ---------------------------------------------------------------------------------------------
// Through TopKGate

// E = 2, k = 1, T = 6: expert 0's bias makes every token choose it; its probability varies by token.
template <class S>
moe::TopKGate<S> all_to_expert_zero(Capacity capacity, bool normalize) {
  moe::TopKGate<S> gate({.d_model = 8, .num_experts = 2, .top_k = 1, .normalize = normalize, .router_bias = true,
                         .capacity = capacity, .seed = 60});
  gate.router().weight().row(1).setZero();
  gate.router().bias() << S(3), S(0);
  return gate;
}

TYPED_TEST(CapacityTest, GateWorkedExampleTokenOrder) {
  using S = TypeParam;
  auto gate = all_to_expert_zero<S>({.factor = 1.0}, true);
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(6, 8, 61);
  moe::RoutingPlan<S> plan;
  gate.route(x, plan, Mode::inference);
  EXPECT_TRUE((plan.expert.array() == 0).all()) << plan.expert;
  EXPECT_EQ(dropped_tokens(plan, 0), (std::vector<int>{3, 4, 5}));
  moe::test::ref::expect_plan_matches(plan, moe::test::ref::top_k_gate(gate, x));
}

TYPED_TEST(CapacityTest, GateWorkedExampleHighestScore) {
  using S = TypeParam;
  auto gate = all_to_expert_zero<S>({.factor = 1.0, .policy = DropPolicy::highest_score}, false);
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(6, 8, 62);
  moe::RoutingPlan<S> plan;
  gate.route(x, plan, Mode::inference);
  ASSERT_TRUE((plan.expert.array() == 0).all()) << plan.expert;
  // The three kept tokens are the three with the highest weight.
  S lowest_kept = S(2), highest_dropped = S(-1);
  Index kept = 0;
  for (Index t = 0; t < 6; ++t) {
    if (plan.dropped(t, 0)) {
      highest_dropped = std::max(highest_dropped, plan.weight(t, 0));
    } else {
      lowest_kept = std::min(lowest_kept, plan.weight(t, 0));
      ++kept;
    }
  }
  EXPECT_EQ(kept, 3);
  EXPECT_GT(lowest_kept, highest_dropped);
  EXPECT_NE(dropped_tokens(plan, 0), (std::vector<int>{3, 4, 5})) << "this input should not drop in token order";
  moe::test::ref::expect_plan_matches(plan, moe::test::ref::top_k_gate(gate, x));
}

TYPED_TEST(CapacityTest, GateMinCapacity) {
  using S = TypeParam;
  // ceil(0.1·6/2) = 1, raised to 4.
  auto gate = all_to_expert_zero<S>({.factor = 0.1, .min_capacity = 4}, true);
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(6, 8, 63);
  moe::RoutingPlan<S> plan;
  gate.route(x, plan, Mode::inference);
  EXPECT_EQ(dropped_tokens(plan, 0), (std::vector<int>{4, 5}));
  moe::test::ref::expect_plan_matches(plan, moe::test::ref::top_k_gate(gate, x));
}

TYPED_TEST(CapacityTest, GateWithoutFactorIsDropless) {
  using S = TypeParam;
  auto gate = all_to_expert_zero<S>({}, true);
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(6, 8, 64);
  moe::RoutingPlan<S> plan;
  gate.route(x, plan, Mode::inference);
  EXPECT_TRUE((plan.expert.array() == 0).all());
  EXPECT_EQ(plan.dropped.template cast<int>().sum(), 0);
}

TYPED_TEST(CapacityTest, GateTopTwoTokenOrderAgainstTheReference) {
  using S = TypeParam;
  // T = 10, k = 2, E = 4, factor 1.25 → C = 7; a bias crowds experts 0 and 1 so that some drop.
  moe::TopKGate<S> gate({.d_model = 8, .num_experts = 4, .top_k = 2, .router_bias = true,
                         .capacity = {.factor = 1.25}, .seed = 65});
  gate.router().bias() << S(2), S(1.5), S(0), S(0);
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(10, 8, 66);
  moe::RoutingPlan<S> plan;
  gate.route(x, plan, Mode::inference);
  for (Index e = 0; e < 4; ++e) {
    Index kept = 0;
    for (Index t = 0; t < 10; ++t)
      for (Index j = 0; j < 2; ++j) kept += plan.expert(t, j) == e && plan.active(t, j);
    EXPECT_LE(kept, 7) << "expert " << e;
  }
  const auto expected = moe::test::ref::top_k_gate(gate, x);
  EXPECT_GT(expected.dropped.sum(), 0);
  moe::test::ref::expect_plan_matches(plan, expected);
}

}  // namespace

namespace MOE_TEST_FILE_ID {

// Decimal factors give the capacity their decimal value: 1.1 · 25 · 4 / 2 = 55 exactly, although
// the double product is 55.000000000000007.
TEST(ExpertCapacity, DecimalFactorsAreNotRoundedUpByFloatingPointError) {
  EXPECT_EQ(moe::expert_capacity({.factor = 1.1}, 25, 4, 2), 55);
  EXPECT_EQ(moe::expert_capacity({.factor = 1.1}, 25, 4, 3), 37);  // 36.67 still rounds up
  moe::ExpertChoiceGate<float> gate({.d_model = 4, .num_experts = 2, .capacity_factor = 1.1});
  EXPECT_EQ(gate.capacity(100), 55);
}

}  // namespace
