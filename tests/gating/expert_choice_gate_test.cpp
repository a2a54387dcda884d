// ExpertChoiceGate (Zhou et al. 2022): each expert takes its C = min(T, ceil(cf·T/E)) best tokens,
// equal scores going to the lower token — against the double reference.
#include <moe/concepts.hpp>
#include <moe/gating/expert_choice_gate.hpp>

#include "support/compare.hpp"
#include "support/reference_gates.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <set>
#include <stdexcept>

static_assert(moe::Gate<moe::ExpertChoiceGate<float>>);
static_assert(moe::Gate<moe::ExpertChoiceGate<double>>);

namespace MOE_TEST_FILE_ID {

using moe::ExpertChoiceGateConfig;
using moe::Index;
using moe::Mode;

constexpr Index kTokens = 7, kDModel = 8;

template <class S>
class ExpertChoiceGateTest : public ::testing::Test {};
TYPED_TEST_SUITE(ExpertChoiceGateTest, moe::test::Scalars);

TEST(ExpertChoiceGateCapacity, IsCeilOfFactorTimesTokensPerExpertAtMostT) {
  const moe::ExpertChoiceGate<float> two({.d_model = kDModel, .num_experts = 4, .capacity_factor = 2.0});
  EXPECT_EQ(two.capacity(7), 4);   // ceil(3.5)
  EXPECT_EQ(two.capacity(8), 4);   // exactly 4
  EXPECT_EQ(two.capacity(1), 1);   // ceil(0.5)
  EXPECT_EQ(two.capacity(0), 0);
  EXPECT_EQ(two.capacity(100), 50);
  const moe::ExpertChoiceGate<float> eight({.d_model = kDModel, .num_experts = 4, .capacity_factor = 8.0});
  EXPECT_EQ(eight.capacity(7), 7);  // ceil(14), at most T
  const moe::ExpertChoiceGate<float> half({.d_model = kDModel, .num_experts = 8, .capacity_factor = 0.5});
  EXPECT_EQ(half.capacity(7), 1);   // ceil(0.4375)
  EXPECT_EQ(half.capacity(32), 2);
  EXPECT_EQ(half.config().capacity_factor, 0.5);
  EXPECT_EQ(moe::ExpertChoiceGate<float>({.d_model = 1, .num_experts = 1}).config().capacity_factor, 2.0)
      << "the paper's default c = 2";
}

TYPED_TEST(ExpertChoiceGateTest, ConfigAndSlots) {
  using S = TypeParam;
  const moe::ExpertChoiceGate<S> gate({.d_model = kDModel, .num_experts = 4, .seed = 1});
  EXPECT_EQ(gate.d_model(), kDModel);
  EXPECT_EQ(gate.num_experts(), 4);
  EXPECT_EQ(gate.slots_per_token(), 4);
  EXPECT_FALSE(gate.router().has_bias());
}

TYPED_TEST(ExpertChoiceGateTest, MatchesTheReference) {
  using S = TypeParam;
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 50);
  for (const double factor : {0.5, 1.0, 2.0, 3.0, 8.0})
    for (const Index E : {Index(4), Index(8)})
      for (const bool bias : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "factor " << factor << ", E = " << E << (bias ? ", bias" : ""));
        moe::ExpertChoiceGate<S> gate(
            {.d_model = kDModel, .num_experts = E, .capacity_factor = factor, .router_bias = bias, .seed = 2});
        moe::RoutingPlan<S> plan;
        gate.route(x, plan, Mode::inference);
        moe::test::ref::expect_plan_matches(plan, moe::test::ref::expert_choice_gate(gate, x));
      }
}

TYPED_TEST(ExpertChoiceGateTest, EachExpertTakesExactlyCTokensWeightedByTheirScores) {
  using S = TypeParam;
  moe::ExpertChoiceGate<S> gate({.d_model = kDModel, .num_experts = 4, .capacity_factor = 2.0, .seed = 3});
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 51);
  moe::RoutingPlan<S> plan;
  gate.route(x, plan, Mode::inference);
  const Index C = gate.capacity(kTokens);
  ASSERT_EQ(C, 4);
  EXPECT_EQ(plan.slots_per_token(), 4);
  for (Index e = 0; e < 4; ++e) {
    S lowest_taken = S(2), highest_left = S(-1);
    Index taken = 0;
    for (Index t = 0; t < kTokens; ++t) {
      EXPECT_EQ(plan.dropped(t, e), 0);
      if (plan.expert(t, e) == e) {
        ++taken;
        EXPECT_EQ(plan.weight(t, e), plan.scores(t, e)) << "token " << t;
        lowest_taken = std::min(lowest_taken, plan.scores(t, e));
      } else {
        EXPECT_EQ(plan.expert(t, e), moe::kEmptySlot) << "slot " << e << " holds expert " << e << " or nothing";
        EXPECT_EQ(plan.weight(t, e), S(0));
        highest_left = std::max(highest_left, plan.scores(t, e));
      }
    }
    EXPECT_EQ(taken, C) << "expert " << e;
    EXPECT_GE(lowest_taken, highest_left) << "expert " << e << " takes its best tokens";
  }
}

TYPED_TEST(ExpertChoiceGateTest, ATokenMayGetNoExpert) {
  using S = TypeParam;
  // C = ceil(0.5·7/4) = 1: four experts take at most four of seven tokens.
  moe::ExpertChoiceGate<S> gate({.d_model = kDModel, .num_experts = 4, .capacity_factor = 0.5, .seed = 4});
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 52);
  moe::RoutingPlan<S> plan;
  gate.route(x, plan, Mode::inference);
  Index unrouted = 0;
  for (Index t = 0; t < kTokens; ++t) {
    bool any = false;
    for (Index e = 0; e < 4; ++e) any = any || plan.active(t, e);
    unrouted += !any;
  }
  EXPECT_GE(unrouted, 3);
  EXPECT_EQ((plan.expert.array() != moe::kEmptySlot).count(), 4);
  moe::test::ref::expect_plan_matches(plan, moe::test::ref::expert_choice_gate(gate, x));
}

TYPED_TEST(ExpertChoiceGateTest, TiedScoresGoToTheLowerTokens) {
  using S = TypeParam;
  moe::ExpertChoiceGate<S> gate({.d_model = kDModel, .num_experts = 4, .capacity_factor = 2.0, .seed = 5});
  gate.router().weight().setZero();
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 53);
  moe::RoutingPlan<S> plan;
  gate.route(x, plan, Mode::inference);
  for (Index t = 0; t < kTokens; ++t)
    for (Index e = 0; e < 4; ++e) {
      EXPECT_EQ(plan.expert(t, e), t < 4 ? e : moe::kEmptySlot) << "token " << t << " expert " << e;
      EXPECT_EQ(plan.weight(t, e), t < 4 ? S(0.25) : S(0)) << "token " << t << " expert " << e;
    }
}

TYPED_TEST(ExpertChoiceGateTest, AnExpertIsFreeToTakeTokensOthersTookToo) {
  using S = TypeParam;
  // Expert 0 scores highest everywhere; every expert still takes C tokens of its own ranking.
  moe::ExpertChoiceGate<S> gate({.d_model = kDModel, .num_experts = 4, .capacity_factor = 1.0,
                                 .router_bias = true, .seed = 6});
  gate.router().bias() << S(5), S(0), S(0), S(0);
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 54);
  moe::RoutingPlan<S> plan;
  gate.route(x, plan, Mode::inference);
  for (Index e = 0; e < 4; ++e) EXPECT_EQ((plan.expert.col(e).array() == e).count(), 2) << "expert " << e;
  moe::test::ref::expect_plan_matches(plan, moe::test::ref::expert_choice_gate(gate, x));
}

TYPED_TEST(ExpertChoiceGateTest, ZeroAndOneTokens) {
  using S = TypeParam;
  moe::ExpertChoiceGate<S> gate({.d_model = kDModel, .num_experts = 4, .seed = 7});
  moe::RoutingPlan<S> plan;
  gate.route(moe::RowMatrix<S>(0, kDModel), plan, Mode::inference);
  EXPECT_EQ(plan.num_tokens(), 0);
  EXPECT_EQ(plan.slots_per_token(), 4);
  EXPECT_EQ(plan.num_experts, 4);
  EXPECT_EQ(plan.scores.cols(), 4);

  // One token: C = min(1, ceil(2/4)) = 1, so every expert takes it.
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(1, kDModel, 55);
  gate.route(x, plan, Mode::inference);
  for (Index e = 0; e < 4; ++e) EXPECT_EQ(plan.expert(0, e), e);
  moe::test::ref::expect_plan_matches(plan, moe::test::ref::expert_choice_gate(gate, x));
}

TYPED_TEST(ExpertChoiceGateTest, PlanIsReusableAcrossBatchSizes) {
  using S = TypeParam;
  moe::ExpertChoiceGate<S> gate({.d_model = kDModel, .num_experts = 4, .capacity_factor = 1.5, .seed = 8});
  moe::RoutingPlan<S> plan;
  for (const Index T : {Index(7), Index(16), Index(0), Index(3), Index(7)}) {
    SCOPED_TRACE(T);
    const moe::RowMatrix<S> x = moe::test::random_matrix<S>(T, kDModel, 56 + static_cast<std::uint64_t>(T));
    gate.route(x, plan, Mode::inference);
    moe::test::ref::expect_plan_matches(plan, moe::test::ref::expert_choice_gate(gate, x));
  }
}

TYPED_TEST(ExpertChoiceGateTest, TrainingEqualsInference) {
  using S = TypeParam;
  moe::ExpertChoiceGate<S> gate({.d_model = kDModel, .num_experts = 4, .seed = 9});
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 57);
  moe::RoutingPlan<S> inference, training;
  gate.route(x, inference, Mode::inference);
  gate.route(x, training, Mode::training);
  EXPECT_TRUE(inference.expert == training.expert);
  EXPECT_TRUE(inference.weight == training.weight);
}

TEST(ExpertChoiceGateErrors, ConfigurationOutOfRange) {
  using moe::test::expect_throws_with;
  for (const double factor : {0.0, -2.0, std::numeric_limits<double>::quiet_NaN(),
                              std::numeric_limits<double>::infinity()}) {
    SCOPED_TRACE(factor);
    std::ostringstream shown;
    shown << "capacity factor = " << factor;
    expect_throws_with<moe::config_error>(
        [factor] { moe::ExpertChoiceGate<float> g({.d_model = kDModel, .num_experts = 4, .capacity_factor = factor}); },
        {"ExpertChoiceGate", shown.str(), "> 0"});
  }
  expect_throws_with<moe::config_error>([] { moe::ExpertChoiceGate<float> g({.d_model = 0, .num_experts = 4}); },
                                        {"ExpertChoiceGate", "d_model = 0", ">= 1"});
  expect_throws_with<moe::config_error>(
      [] { moe::ExpertChoiceGate<float> g({.d_model = kDModel, .num_experts = 0}); },
      {"ExpertChoiceGate", "num_experts = 0", ">= 1"});
}

TYPED_TEST(ExpertChoiceGateTest, WrongWidthIsAShapeError) {
  using S = TypeParam;
  moe::ExpertChoiceGate<S> gate({.d_model = kDModel, .num_experts = 4});
  moe::RoutingPlan<S> plan;
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, 9, 58);
  moe::test::expect_throws_with<moe::shape_error>([&] { gate.route(x, plan, Mode::inference); },
                                                  {"ExpertChoiceGate::route: x.cols() = 9 but d_model = 8"});
}

TYPED_TEST(ExpertChoiceGateTest, NonFiniteInputNamesTheToken) {
  using S = TypeParam;
  moe::ExpertChoiceGate<S> gate({.d_model = kDModel, .num_experts = 4});
  moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 59);
  x(3, 7) = std::numeric_limits<S>::infinity();
  moe::RoutingPlan<S> plan;
  moe::test::expect_throws_with<std::domain_error>([&] { gate.route(x, plan, Mode::inference); },
                                                   {"ExpertChoiceGate::route", "token 3"});
}

}  // namespace
