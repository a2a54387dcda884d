// DenseGate (Jacobs et al. 1991): every token to every expert, slot j = expert j, weighted by the
// softmax of the router logits — against the double reference.
#include <moe/concepts.hpp>
#include <moe/gating/dense_gate.hpp>

#include "support/compare.hpp"
#include "support/reference_gates.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <stdexcept>

static_assert(moe::Gate<moe::DenseGate<float>>);
static_assert(moe::Gate<moe::DenseGate<double>>);

namespace MOE_TEST_FILE_ID {

using moe::DenseGateConfig;
using moe::Index;
using moe::Mode;

constexpr Index kTokens = 7, kDModel = 8;

template <class S>
class DenseGateTest : public ::testing::Test {};
TYPED_TEST_SUITE(DenseGateTest, moe::test::Scalars);

TYPED_TEST(DenseGateTest, ConfigAndSlots) {
  using S = TypeParam;
  const moe::DenseGate<S> gate({.d_model = kDModel, .num_experts = 4, .seed = 1});
  EXPECT_EQ(gate.d_model(), kDModel);
  EXPECT_EQ(gate.num_experts(), 4);
  EXPECT_EQ(gate.slots_per_token(), 4);
  EXPECT_TRUE(gate.router().has_bias()) << "Jacobs et al.: the router has a bias by default";
  EXPECT_EQ(gate.router().weight().rows(), 4);
  EXPECT_EQ(gate.router().weight().cols(), kDModel);
}

TYPED_TEST(DenseGateTest, MatchesTheReference) {
  using S = TypeParam;
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 40);
  for (const bool bias : {true, false})
    for (const Index E : {Index(4), Index(8)}) {
      SCOPED_TRACE(::testing::Message() << "E = " << E << (bias ? ", bias" : ", no bias"));
      moe::DenseGate<S> gate({.d_model = kDModel, .num_experts = E, .router_bias = bias, .seed = 2});
      moe::RoutingPlan<S> plan;
      gate.route(x, plan, Mode::inference);
      moe::test::ref::expect_plan_matches(plan, moe::test::ref::dense_gate(gate, x));
    }
}

TYPED_TEST(DenseGateTest, SlotJIsExpertJAndWeightsAreTheSoftmax) {
  using S = TypeParam;
  moe::DenseGate<S> gate({.d_model = kDModel, .num_experts = 4, .seed = 3});
  gate.router().bias() << S(1), S(-1), S(0.5), S(0);  // a missing bias changes the weights visibly
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 41);
  moe::RoutingPlan<S> plan;
  gate.route(x, plan, Mode::inference);
  for (Index t = 0; t < kTokens; ++t) {
    for (Index j = 0; j < 4; ++j) {
      EXPECT_EQ(plan.expert(t, j), j);
      EXPECT_EQ(plan.dropped(t, j), 0);
      EXPECT_TRUE(plan.active(t, j));
      EXPECT_GT(plan.weight(t, j), S(0));
    }
    EXPECT_NEAR(plan.weight.row(t).sum(), S(1), sizeof(S) == 4 ? 1e-6 : 1e-14) << "token " << t;
  }
  EXPECT_TRUE(plan.weight == plan.scores);
  moe::test::ref::expect_plan_matches(plan, moe::test::ref::dense_gate(gate, x));
}

TYPED_TEST(DenseGateTest, TiedLogitsGiveUniformWeights) {
  using S = TypeParam;
  moe::DenseGate<S> gate({.d_model = kDModel, .num_experts = 8, .seed = 4});
  gate.router().weight().setZero();
  gate.router().bias().setZero();
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 42);
  moe::RoutingPlan<S> plan;
  gate.route(x, plan, Mode::inference);
  EXPECT_TRUE((plan.weight.array() == S(0.125)).all()) << plan.weight;
}

TYPED_TEST(DenseGateTest, ZeroAndOneTokens) {
  using S = TypeParam;
  moe::DenseGate<S> gate({.d_model = kDModel, .num_experts = 4, .seed = 5});
  moe::RoutingPlan<S> plan;
  gate.route(moe::RowMatrix<S>(0, kDModel), plan, Mode::inference);
  EXPECT_EQ(plan.num_tokens(), 0);
  EXPECT_EQ(plan.slots_per_token(), 4);
  EXPECT_EQ(plan.num_experts, 4);
  EXPECT_EQ(plan.logits.rows(), 0);
  EXPECT_EQ(plan.logits.cols(), 4);

  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(1, kDModel, 43);
  gate.route(x, plan, Mode::inference);
  moe::test::ref::expect_plan_matches(plan, moe::test::ref::dense_gate(gate, x));
}

TYPED_TEST(DenseGateTest, TrainingEqualsInference) {
  using S = TypeParam;
  moe::DenseGate<S> gate({.d_model = kDModel, .num_experts = 4, .seed = 6});
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 44);
  moe::RoutingPlan<S> inference, training;
  gate.route(x, inference, Mode::inference);
  gate.route(x, training, Mode::training);
  EXPECT_TRUE(inference.expert == training.expert);
  EXPECT_TRUE(inference.weight == training.weight);
  EXPECT_TRUE(inference.logits == training.logits);
}

TYPED_TEST(DenseGateTest, SeedChoosesTheRouter) {
  using S = TypeParam;
  const moe::DenseGate<S> a({.d_model = kDModel, .num_experts = 4, .seed = 7});
  const moe::DenseGate<S> b({.d_model = kDModel, .num_experts = 4, .seed = 7});
  const moe::DenseGate<S> c({.d_model = kDModel, .num_experts = 4, .seed = 8});
  EXPECT_TRUE(a.router().weight() == b.router().weight());
  EXPECT_FALSE(a.router().weight() == c.router().weight());
}

TEST(DenseGateErrors, ConfigurationOutOfRange) {
  using moe::test::expect_throws_with;
  expect_throws_with<moe::config_error>([] { moe::DenseGate<float> g({.d_model = 0, .num_experts = 4}); },
                                        {"DenseGate", "d_model = 0", ">= 1"});
  expect_throws_with<moe::config_error>([] { moe::DenseGate<float> g({.d_model = kDModel, .num_experts = 0}); },
                                        {"DenseGate", "num_experts = 0", ">= 1"});
}

TYPED_TEST(DenseGateTest, WrongWidthIsAShapeError) {
  using S = TypeParam;
  moe::DenseGate<S> gate({.d_model = kDModel, .num_experts = 4});
  moe::RoutingPlan<S> plan;
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, 9, 45);
  moe::test::expect_throws_with<moe::shape_error>([&] { gate.route(x, plan, Mode::inference); },
                                                  {"DenseGate::route: x.cols() = 9 but d_model = 8"});
}

TYPED_TEST(DenseGateTest, NonFiniteInputNamesTheToken) {
  using S = TypeParam;
  moe::DenseGate<S> gate({.d_model = kDModel, .num_experts = 4});
  moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 46);
  x(3, 0) = std::numeric_limits<S>::quiet_NaN();
  moe::RoutingPlan<S> plan;
  moe::test::expect_throws_with<std::domain_error>([&] { gate.route(x, plan, Mode::inference); },
                                                   {"DenseGate::route", "token 3"});
}

}  // namespace
