// TopKGate against the plain double reference in every configuration (softmax, sigmoid,
// softmax_selected, selection bias, group-limited routing, scale, capacity), the worked values of
// the literature, switch_gate, edge cases, training-only noise and the configuration errors.
#include <moe/concepts.hpp>
#include <moe/gating/top_k_gate.hpp>

#include "support/compare.hpp"
#include "support/reference_gates.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <sstream>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

static_assert(moe::Gate<moe::TopKGate<float>>);
static_assert(moe::Gate<moe::TopKGate<double>>);
static_assert(std::is_base_of_v<std::invalid_argument, moe::config_error>);
static_assert(std::is_base_of_v<std::invalid_argument, moe::shape_error>);

namespace MOE_TEST_FILE_ID {

using moe::DropPolicy;
using moe::GroupScore;
using moe::Index;
using moe::Mode;
using moe::Scoring;
using moe::TopKGateConfig;

constexpr Index kTokens = 7, kDModel = 8;

template <class S>
class TopKGateTest : public ::testing::Test {};
TYPED_TEST_SUITE(TopKGateTest, moe::test::Scalars);

struct Case {
  const char* name;
  TopKGateConfig config;
};

// Every configuration of the header's table, and their combinations with groups and capacity.
std::vector<Case> cases() {
  return {
      {"mixtral: softmax, renormalised", {.d_model = kDModel, .num_experts = 8, .top_k = 2, .seed = 1}},
      {"qwen2: softmax, not renormalised",
       {.d_model = kDModel, .num_experts = 8, .top_k = 2, .normalize = false, .seed = 2}},
      {"softmax, E = 4, router bias",
       {.d_model = kDModel, .num_experts = 4, .top_k = 2, .router_bias = true, .seed = 3}},
      {"sigmoid, renormalised",
       {.d_model = kDModel, .num_experts = 8, .top_k = 2, .scoring = Scoring::sigmoid, .seed = 4}},
      {"sigmoid, not renormalised, scale 2.5",
       {.d_model = kDModel, .num_experts = 4, .top_k = 2, .scoring = Scoring::sigmoid, .normalize = false,
        .scale = 2.5, .seed = 5}},
      {"softmax_selected (Shazeer)",
       {.d_model = kDModel, .num_experts = 8, .top_k = 2, .scoring = Scoring::softmax_selected, .seed = 6}},
      {"softmax_selected ignores normalize = false",
       {.d_model = kDModel, .num_experts = 4, .top_k = 2, .scoring = Scoring::softmax_selected,
        .normalize = false, .scale = 0.5, .seed = 7}},
      {"softmax with selection bias",
       {.d_model = kDModel, .num_experts = 8, .top_k = 2, .selection_bias = true, .seed = 8}},
      {"deepseek-v3: sigmoid, selection bias, 4 groups keep 2, scale 2.5",
       {.d_model = kDModel, .num_experts = 8, .top_k = 2, .scoring = Scoring::sigmoid, .scale = 2.5,
        .selection_bias = true, .n_group = 4, .topk_group = 2, .seed = 9}},
      {"deepseek-v3, k = 3 over 2 of 2 groups",
       {.d_model = kDModel, .num_experts = 8, .top_k = 3, .scoring = Scoring::sigmoid, .scale = 2.5,
        .selection_bias = true, .n_group = 2, .topk_group = 1, .seed = 10}},
      {"deepseek-v2: softmax, group max",
       {.d_model = kDModel, .num_experts = 8, .top_k = 2, .n_group = 4, .topk_group = 2,
        .group_score = GroupScore::max, .seed = 11}},
      {"groups of one expert",
       {.d_model = kDModel, .num_experts = 4, .top_k = 2, .n_group = 4, .topk_group = 3, .seed = 12}},
      {"softmax_selected with groups and selection bias",
       {.d_model = kDModel, .num_experts = 8, .top_k = 2, .scoring = Scoring::softmax_selected,
        .selection_bias = true, .n_group = 2, .topk_group = 1, .seed = 13}},
      {"k = 1", {.d_model = kDModel, .num_experts = 8, .top_k = 1, .normalize = false, .seed = 14}},
      {"k = 1, renormalised", {.d_model = kDModel, .num_experts = 4, .top_k = 1, .seed = 15}},
      {"k = E", {.d_model = kDModel, .num_experts = 4, .top_k = 4, .normalize = false, .seed = 16}},
      {"capacity 0.5, token order",
       {.d_model = kDModel, .num_experts = 4, .top_k = 2, .capacity = {.factor = 0.5}, .seed = 17}},
      {"capacity 0.5, highest score",
       {.d_model = kDModel, .num_experts = 4, .top_k = 2,
        .capacity = {.factor = 0.5, .policy = DropPolicy::highest_score}, .seed = 18}},
      {"capacity 0.25 with min_capacity 3, sigmoid",
       {.d_model = kDModel, .num_experts = 4, .top_k = 2, .scoring = Scoring::sigmoid,
        .capacity = {.factor = 0.25, .min_capacity = 3}, .seed = 19}},
      {"deepseek-v3 with capacity, highest score",
       {.d_model = kDModel, .num_experts = 8, .top_k = 2, .scoring = Scoring::sigmoid, .scale = 2.5,
        .selection_bias = true, .n_group = 4, .topk_group = 2,
        .capacity = {.factor = 0.5, .policy = DropPolicy::highest_score}, .seed = 20}},
  };
}

// A gate whose selection bias (if any) is nonzero, so that ignoring it changes the choice.
template <class S>
moe::TopKGate<S> make_gate(const TopKGateConfig& config) {
  moe::TopKGate<S> gate(config);
  if (config.selection_bias)
    gate.selection_bias() =
        (S(0.3) * moe::test::random_matrix<S>(1, config.num_experts, 1000 + config.seed)).transpose();
  return gate;
}

template <class S>
void expect_identical(const moe::RoutingPlan<S>& a, const moe::RoutingPlan<S>& b) {
  EXPECT_TRUE(a.expert == b.expert);
  EXPECT_TRUE(a.weight == b.weight);
  EXPECT_TRUE(a.dropped == b.dropped);
  EXPECT_TRUE(a.logits == b.logits);
  EXPECT_TRUE(a.scores == b.scores);
}

// One token x = e_0 and a router whose column 0 is `logits`: the router outputs exactly `logits`.
template <class S>
void set_logits(moe::TopKGate<S>& gate, const std::vector<double>& logits) {
  gate.router().weight().setZero();
  for (std::size_t e = 0; e < logits.size(); ++e) gate.router().weight()(static_cast<Index>(e), 0) = S(logits[e]);
}

template <class S>
moe::RowMatrix<S> unit_token(Index d_model) {
  moe::RowMatrix<S> x = moe::RowMatrix<S>::Zero(1, d_model);
  x(0, 0) = S(1);
  return x;
}

// Known values are checked to 1e-5 in float (ulps of logit/sigmoid round trips), 1e-12 in double.
template <class S>
constexpr double value_tolerance() {
  return sizeof(S) == sizeof(float) ? 1e-5 : 1e-12;
}

// ---------------------------------------------------------------------------------------------
// Against the reference

TYPED_TEST(TopKGateTest, EveryConfigurationMatchesTheReference) {
  using S = TypeParam;
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 77);
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    moe::TopKGate<S> gate = make_gate<S>(c.config);
    moe::RoutingPlan<S> plan;
    gate.route(x, plan, Mode::inference);
    const auto expected = moe::test::ref::top_k_gate(gate, x);
    moe::test::ref::expect_plan_matches(plan, expected);
    if (c.config.capacity.factor) {
      EXPECT_GT(expected.dropped.sum(), 0) << "the case should drop something";
    }
  }
}

TYPED_TEST(TopKGateTest, SelectionBiasChoosesButDoesNotWeigh) {
  using S = TypeParam;
  moe::TopKGate<S> gate({.d_model = kDModel, .num_experts = 4, .top_k = 2, .selection_bias = true, .seed = 21});
  ASSERT_EQ(gate.selection_bias().size(), 4);
  EXPECT_TRUE(gate.selection_bias().isZero()) << "the selection bias starts at zero";
  gate.selection_bias() << S(0), S(0), S(0), S(10);  // expert 3 is chosen by every token
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 78);
  moe::RoutingPlan<S> plan;
  gate.route(x, plan, Mode::inference);
  for (Index t = 0; t < kTokens; ++t) {
    EXPECT_EQ(plan.expert(t, 0), 3) << "token " << t;
    // Weights are the renormalised unbiased scores of the two chosen experts.
    const S s0 = plan.scores(t, plan.expert(t, 0)), s1 = plan.scores(t, plan.expert(t, 1));
    EXPECT_NEAR(plan.weight(t, 0), s0 / (s0 + s1), value_tolerance<S>());
    EXPECT_NEAR(plan.weight(t, 1), s1 / (s0 + s1), value_tolerance<S>());
    EXPECT_LT(plan.weight(t, 0), S(0.9)) << "the bias must not enter the weights";
  }
  moe::test::ref::expect_plan_matches(plan, moe::test::ref::top_k_gate(gate, x));
}

TYPED_TEST(TopKGateTest, GroupLimitedRoutingStaysInsideTheChosenGroups) {
  using S = TypeParam;
  const TopKGateConfig config{.d_model = kDModel, .num_experts = 8, .top_k = 3, .scoring = Scoring::sigmoid,
                              .n_group = 4, .topk_group = 2, .seed = 22};
  moe::TopKGate<S> gate(config);
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 79);
  moe::RoutingPlan<S> plan;
  gate.route(x, plan, Mode::inference);
  for (Index t = 0; t < kTokens; ++t) {
    std::set<int> groups;
    for (Index j = 0; j < 3; ++j) groups.insert(plan.expert(t, j) / 2);
    EXPECT_LE(groups.size(), 2u) << "token " << t;
  }
  moe::test::ref::expect_plan_matches(plan, moe::test::ref::top_k_gate(gate, x));
}

// ---------------------------------------------------------------------------------------------
// Known values

TYPED_TEST(TopKGateTest, SoftmaxTopKRenormalisedEqualsSoftmaxOverTheSelectedLogits) {
  using S = TypeParam;
  const std::vector<double> z = {2, 1, 0, -1};
  for (const Scoring scoring : {Scoring::softmax, Scoring::softmax_selected}) {
    SCOPED_TRACE(scoring == Scoring::softmax ? "softmax" : "softmax_selected");
    moe::TopKGate<S> gate({.d_model = 4, .num_experts = 4, .top_k = 2, .scoring = scoring});
    set_logits(gate, z);
    moe::RoutingPlan<S> plan;
    gate.route(unit_token<S>(4), plan, Mode::inference);
    EXPECT_EQ(plan.expert(0, 0), 0);
    EXPECT_EQ(plan.expert(0, 1), 1);
    EXPECT_NEAR(plan.weight(0, 0), 0.7311, 1e-4);
    EXPECT_NEAR(plan.weight(0, 1), 0.2689, 1e-4);
    // Exactly: σ(z0 − z1) and σ(z1 − z0).
    EXPECT_NEAR(plan.weight(0, 0), 1 / (1 + std::exp(-1.0)), value_tolerance<S>());
  }
}

TYPED_TEST(TopKGateTest, SoftmaxWithoutRenormalisationKeepsTheProbabilities) {
  using S = TypeParam;
  moe::TopKGate<S> gate({.d_model = 4, .num_experts = 4, .top_k = 2, .normalize = false});
  set_logits(gate, {2, 1, 0, -1});
  moe::RoutingPlan<S> plan;
  gate.route(unit_token<S>(4), plan, Mode::inference);
  EXPECT_EQ(plan.expert(0, 0), 0);
  EXPECT_EQ(plan.expert(0, 1), 1);
  EXPECT_NEAR(plan.weight(0, 0), 0.6439, 1e-4);
  EXPECT_NEAR(plan.weight(0, 1), 0.2369, 1e-4);
}

TYPED_TEST(TopKGateTest, DeepSeekV3GroupRoutingWorkedExample) {
  using S = TypeParam;
  // s = [.5, .3, .5, .4]; choice = s + bias = [.3, -.2, -.5, -.6]; groups {0,1}: .1, {2,3}: -1.1
  // → group 0 → experts {0, 1}; weights 2.5·[.5, .3]/.8 = [1.5625, 0.9375].
  // (Without the bias, group {2,3} would win: .9 > .8.)
  for (const GroupScore how : {GroupScore::top2_sum, GroupScore::max}) {
    SCOPED_TRACE(how == GroupScore::top2_sum ? "top2_sum" : "max");
    moe::TopKGate<S> gate({.d_model = 4, .num_experts = 4, .top_k = 2, .scoring = Scoring::sigmoid,
                           .normalize = true, .scale = 2.5, .selection_bias = true, .n_group = 2,
                           .topk_group = 1, .group_score = how});
    std::vector<double> logits;
    for (const double s : {0.5, 0.3, 0.5, 0.4}) logits.push_back(std::log(s / (1 - s)));
    set_logits(gate, logits);
    gate.selection_bias() << S(-0.2), S(-0.5), S(-1), S(-1);
    moe::RoutingPlan<S> plan;
    gate.route(unit_token<S>(4), plan, Mode::inference);
    EXPECT_EQ(plan.expert(0, 0), 0);
    EXPECT_EQ(plan.expert(0, 1), 1);
    EXPECT_NEAR(plan.weight(0, 0), 1.5625, value_tolerance<S>());
    EXPECT_NEAR(plan.weight(0, 1), 0.9375, value_tolerance<S>());
    EXPECT_NEAR(plan.scores(0, 3), 0.4, value_tolerance<S>());
  }
}

TYPED_TEST(TopKGateTest, DeepSeekV3WithoutTheBiasPicksTheOtherGroup) {
  using S = TypeParam;
  moe::TopKGate<S> gate({.d_model = 4, .num_experts = 4, .top_k = 2, .scoring = Scoring::sigmoid, .scale = 2.5,
                         .n_group = 2, .topk_group = 1});
  std::vector<double> logits;
  for (const double s : {0.5, 0.3, 0.5, 0.4}) logits.push_back(std::log(s / (1 - s)));
  set_logits(gate, logits);
  moe::RoutingPlan<S> plan;
  gate.route(unit_token<S>(4), plan, Mode::inference);
  EXPECT_EQ(plan.expert(0, 0), 2);
  EXPECT_EQ(plan.expert(0, 1), 3);
  EXPECT_NEAR(plan.weight(0, 0), 2.5 * 0.5 / 0.9, value_tolerance<S>());
  EXPECT_NEAR(plan.weight(0, 1), 2.5 * 0.4 / 0.9, value_tolerance<S>());
}

TYPED_TEST(TopKGateTest, SigmoidScoresThatUnderflowDoNotDivideByZero) {
  using S = TypeParam;
  // σ(−1000) = 0 in float and double: HF DeepSeek-V3's +1e-20 keeps the weights at 0, not NaN.
  moe::TopKGate<S> gate({.d_model = 4, .num_experts = 4, .top_k = 2, .scoring = Scoring::sigmoid});
  set_logits(gate, {-1000, -1000, -1000, -1000});
  moe::RoutingPlan<S> plan;
  gate.route(unit_token<S>(4), plan, Mode::inference);
  EXPECT_EQ(plan.expert(0, 0), 0);
  EXPECT_EQ(plan.expert(0, 1), 1);
  EXPECT_EQ(plan.weight(0, 0), S(0));
  EXPECT_EQ(plan.weight(0, 1), S(0));
}

// ---------------------------------------------------------------------------------------------
// Switch

TYPED_TEST(TopKGateTest, SwitchGateWeighsByTheArgmaxProbability) {
  using S = TypeParam;
  moe::TopKGate<S> gate = moe::switch_gate<S>(kDModel, 4, 1.25, 23);
  EXPECT_EQ(gate.slots_per_token(), 1);
  EXPECT_FALSE(gate.config().normalize);
  ASSERT_TRUE(gate.config().capacity.factor.has_value());
  EXPECT_EQ(*gate.config().capacity.factor, 1.25);
  EXPECT_EQ(gate.config().capacity.policy, DropPolicy::token_order);
  EXPECT_EQ(*moe::switch_gate<S>(kDModel, 4).config().capacity.factor, 1.25) << "the default factor";

  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 80);
  moe::RoutingPlan<S> plan;
  gate.route(x, plan, Mode::inference);
  for (Index t = 0; t < kTokens; ++t) {
    Index argmax;
    const S best = plan.scores.row(t).maxCoeff(&argmax);
    EXPECT_EQ(plan.expert(t, 0), argmax) << "token " << t;
    EXPECT_EQ(plan.weight(t, 0), best) << "token " << t;
    EXPECT_LT(plan.weight(t, 0), S(1)) << "the weight is the probability, not 1";
  }
  // C = ceil(1.25 · 7 / 4) = 3 per expert.
  for (Index e = 0; e < 4; ++e) {
    Index kept = 0;
    for (Index t = 0; t < kTokens; ++t) kept += plan.active(t, 0) && plan.expert(t, 0) == e;
    EXPECT_LE(kept, 3) << "expert " << e;
  }
  moe::test::ref::expect_plan_matches(plan, moe::test::ref::top_k_gate(gate, x));
}

// ---------------------------------------------------------------------------------------------
// Edge cases

TYPED_TEST(TopKGateTest, ZeroTokens) {
  using S = TypeParam;
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    moe::TopKGate<S> gate = make_gate<S>(c.config);
    moe::RoutingPlan<S> plan;
    gate.route(moe::RowMatrix<S>(0, kDModel), plan, Mode::training);
    EXPECT_EQ(plan.num_tokens(), 0);
    EXPECT_EQ(plan.slots_per_token(), c.config.top_k);
    EXPECT_EQ(plan.num_experts, c.config.num_experts);
    EXPECT_EQ(plan.logits.rows(), 0);
    EXPECT_EQ(plan.logits.cols(), c.config.num_experts);
    EXPECT_EQ(plan.scores.rows(), 0);
    EXPECT_EQ(plan.weight.rows(), 0);
    EXPECT_EQ(plan.dropped.rows(), 0);
  }
}

TYPED_TEST(TopKGateTest, OneToken) {
  using S = TypeParam;
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(1, kDModel, 81);
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    moe::TopKGate<S> gate = make_gate<S>(c.config);
    moe::RoutingPlan<S> plan;
    gate.route(x, plan, Mode::inference);
    moe::test::ref::expect_plan_matches(plan, moe::test::ref::top_k_gate(gate, x));
  }
}

TYPED_TEST(TopKGateTest, KEqualsESendsEveryTokenEverywhereBestFirst) {
  using S = TypeParam;
  moe::TopKGate<S> gate({.d_model = kDModel, .num_experts = 4, .top_k = 4, .seed = 24});
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 82);
  moe::RoutingPlan<S> plan;
  gate.route(x, plan, Mode::inference);
  for (Index t = 0; t < kTokens; ++t) {
    std::set<int> seen;
    for (Index j = 0; j < 4; ++j) {
      seen.insert(plan.expert(t, j));
      // Renormalising all E softmax scores changes nothing.
      EXPECT_NEAR(plan.weight(t, j), plan.scores(t, plan.expert(t, j)), value_tolerance<S>());
      if (j > 0) {
        EXPECT_GE(plan.weight(t, j - 1), plan.weight(t, j));
      }
    }
    EXPECT_EQ(seen.size(), 4u);
  }
  moe::test::ref::expect_plan_matches(plan, moe::test::ref::top_k_gate(gate, x));
}

TYPED_TEST(TopKGateTest, TiedScoresGoToTheLowerExperts) {
  using S = TypeParam;
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 83);
  struct Tie {
    const char* name;
    TopKGateConfig config;
    double weight;  // every slot's expected weight
  };
  const std::vector<Tie> ties = {
      {"softmax, renormalised", {.d_model = kDModel, .num_experts = 8, .top_k = 2}, 0.5},
      {"softmax, not renormalised", {.d_model = kDModel, .num_experts = 8, .top_k = 3, .normalize = false}, 0.125},
      {"softmax_selected", {.d_model = kDModel, .num_experts = 4, .top_k = 2, .scoring = Scoring::softmax_selected},
       0.5},
      {"deepseek-v3 groups",
       {.d_model = kDModel, .num_experts = 8, .top_k = 3, .scoring = Scoring::sigmoid, .scale = 2.5,
        .selection_bias = true, .n_group = 4, .topk_group = 2},
       2.5 / 3},
      {"k = E", {.d_model = kDModel, .num_experts = 4, .top_k = 4}, 0.25},
  };
  for (const Tie& tie : ties) {
    SCOPED_TRACE(tie.name);
    moe::TopKGate<S> gate(tie.config);
    gate.router().weight().setZero();
    moe::RoutingPlan<S> plan;
    gate.route(x, plan, Mode::inference);
    for (Index t = 0; t < kTokens; ++t)
      for (Index j = 0; j < tie.config.top_k; ++j) {
        EXPECT_EQ(plan.expert(t, j), j) << "token " << t << " slot " << j;
        EXPECT_NEAR(plan.weight(t, j), tie.weight, value_tolerance<S>()) << "token " << t << " slot " << j;
      }
    moe::test::ref::expect_plan_matches(plan, moe::test::ref::top_k_gate(gate, x));
  }
}

TYPED_TEST(TopKGateTest, AnExpertWithNoTokens) {
  using S = TypeParam;
  moe::TopKGate<S> gate({.d_model = kDModel, .num_experts = 4, .top_k = 2, .router_bias = true, .seed = 25});
  gate.router().bias()(2) = S(-100);
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 84);
  moe::RoutingPlan<S> plan;
  gate.route(x, plan, Mode::inference);
  EXPECT_FALSE((plan.expert.array() == 2).any()) << plan.expert;
  moe::test::ref::expect_plan_matches(plan, moe::test::ref::top_k_gate(gate, x));
}

TYPED_TEST(TopKGateTest, PlanAndGateAreReusableAcrossBatchSizes) {
  using S = TypeParam;
  moe::TopKGate<S> gate = make_gate<S>(cases()[19].config);  // groups, selection bias, capacity
  moe::RoutingPlan<S> plan;
  for (const Index T : {Index(7), Index(1), Index(0), Index(12), Index(7)}) {
    SCOPED_TRACE(T);
    const moe::RowMatrix<S> x = moe::test::random_matrix<S>(T, kDModel, 85 + static_cast<std::uint64_t>(T));
    gate.route(x, plan, Mode::inference);
    moe::test::ref::expect_plan_matches(plan, moe::test::ref::top_k_gate(gate, x));
  }
}

TYPED_TEST(TopKGateTest, RoutesARowBlockWithoutCopying) {
  using S = TypeParam;
  moe::TopKGate<S> gate({.d_model = kDModel, .num_experts = 4, .top_k = 2, .seed = 26});
  const moe::RowMatrix<S> big = moe::test::random_matrix<S>(kTokens + 3, kDModel, 86);
  const moe::RowMatrix<S> copy = big.middleRows(2, kTokens);
  moe::RoutingPlan<S> from_block, from_copy;
  gate.route(big.middleRows(2, kTokens), from_block, Mode::inference);
  gate.route(copy, from_copy, Mode::inference);
  expect_identical(from_block, from_copy);
}

TYPED_TEST(TopKGateTest, InferenceIsDeterministic) {
  using S = TypeParam;
  moe::TopKGate<S> gate = make_gate<S>(cases()[8].config);
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 87);
  moe::RoutingPlan<S> first, second;
  gate.route(x, first, Mode::inference);
  gate.route(x, second, Mode::inference);
  expect_identical(first, second);
}

// ---------------------------------------------------------------------------------------------
// Noise: noisy top-k (Shazeer 2017) and jitter (Switch) only in training

TYPED_TEST(TopKGateTest, NoiseAndJitterLeaveInferenceBitIdentical) {
  using S = TypeParam;
  TopKGateConfig plain{.d_model = kDModel, .num_experts = 4, .top_k = 2, .seed = 27};
  TopKGateConfig noisy = plain;
  noisy.noisy = true;
  noisy.jitter = 0.2;
  moe::TopKGate<S> reference(plain), gate(noisy);
  gate.noise_weight() = moe::test::random_matrix<S>(4, kDModel, 88);
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 89);
  moe::RoutingPlan<S> expected, plan, trained;
  reference.route(x, expected, Mode::inference);
  gate.route(x, plan, Mode::inference);
  expect_identical(plan, expected);
  gate.route(x, trained, Mode::training);  // advances the generator; inference must not care
  EXPECT_FALSE(trained.logits == expected.logits);
  gate.route(x, plan, Mode::inference);
  expect_identical(plan, expected);
}

TYPED_TEST(TopKGateTest, NoiseWeightIsZeroInitialisedWithTheRouterShape) {
  using S = TypeParam;
  moe::TopKGate<S> noisy({.d_model = kDModel, .num_experts = 4, .noisy = true});
  EXPECT_EQ(noisy.noise_weight().rows(), 4);
  EXPECT_EQ(noisy.noise_weight().cols(), kDModel);
  EXPECT_TRUE(noisy.noise_weight().isZero());
  moe::TopKGate<S> plain({.d_model = kDModel, .num_experts = 4});
  EXPECT_EQ(plain.noise_weight().size(), 0);
}

TYPED_TEST(TopKGateTest, NoisyTrainingChangesTheLogits) {
  using S = TypeParam;
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 90);
  for (const bool zero_noise_weight : {true, false}) {
    SCOPED_TRACE(zero_noise_weight ? "noise std = softplus(0)" : "learned noise std");
    moe::TopKGate<S> gate({.d_model = kDModel, .num_experts = 4, .top_k = 2, .noisy = true, .seed = 28});
    if (!zero_noise_weight) gate.noise_weight() = moe::test::random_matrix<S>(4, kDModel, 91);
    moe::RoutingPlan<S> clean, noisy;
    gate.route(x, clean, Mode::inference);
    gate.route(x, noisy, Mode::training);
    EXPECT_GT((noisy.logits - clean.logits).cwiseAbs().maxCoeff(), S(0.05));
    // The scores and the routing follow the noisy logits.
    moe::TopKGate<S> check({.d_model = kDModel, .num_experts = 4, .top_k = 2, .seed = 28});
    EXPECT_TRUE(check.router().weight() == gate.router().weight());
    for (Index t = 0; t < kTokens; ++t) {
      const auto expected = moe::test::ref::softmax(moe::test::ref::row_of(moe::test::ref::to_double(noisy.logits), t));
      for (Index e = 0; e < 4; ++e) EXPECT_NEAR(noisy.scores(t, e), expected[e], value_tolerance<S>());
      Index best;
      noisy.scores.row(t).maxCoeff(&best);
      EXPECT_EQ(noisy.expert(t, 0), best);
    }
  }
}

TYPED_TEST(TopKGateTest, NoiseStdIsSoftplusOfTheNoiseProjection) {
  using S = TypeParam;
  // Gates with the same seed draw the same N(0, 1) values, so their logit noise differs only by
  // the std. Token column 0 is 1 and only column 0 of W_noise is nonzero: every token's std is
  // softplus(w), and the zero-initialised W_noise gives softplus(0) = ln 2. Hence
  //   noise(w) = noise(0) · softplus(w) / ln 2, elementwise.
  moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 92);
  x.col(0).setOnes();
  const TopKGateConfig config{.d_model = kDModel, .num_experts = 4, .top_k = 2, .noisy = true, .seed = 29};
  moe::TopKGate<S> base(config);
  moe::RoutingPlan<S> clean, noisy;
  base.route(x, clean, Mode::inference);
  base.route(x, noisy, Mode::training);
  const moe::RowMatrix<S> base_noise = noisy.logits - clean.logits;
  ASSERT_GT(base_noise.cwiseAbs().minCoeff(), S(0));
  const double ln2 = std::log(2.0);
  for (const double w : {-60.0, -2.0, 1.0, 30.0}) {
    SCOPED_TRACE(w);
    moe::TopKGate<S> gate(config);
    gate.noise_weight().col(0).setConstant(S(w));
    gate.route(x, noisy, Mode::training);
    const double softplus = std::log1p(std::exp(w));
    for (Index t = 0; t < kTokens; ++t)
      for (Index e = 0; e < 4; ++e) {
        const double expected = double(base_noise(t, e)) * softplus / ln2;
        const double actual = double(noisy.logits(t, e)) - double(clean.logits(t, e));
        EXPECT_NEAR(actual, expected, (std::abs(expected) + 1) * (sizeof(S) == 4 ? 1e-5 : 1e-12))
            << "token " << t << " expert " << e;
      }
  }
}

TYPED_TEST(TopKGateTest, JitterMultipliesEachInputByUniformOneMinusToOnePlusEpsilon) {
  using S = TypeParam;
  constexpr double eps = 0.1;
  // Router row e = unit vector e: logit(t, e) = x(t, e)·u(t, e), so the ratio of the training logit
  // to the clean logit is the multiplier itself.
  moe::TopKGate<S> gate({.d_model = kDModel, .num_experts = 4, .top_k = 2, .jitter = eps, .seed = 30});
  gate.router().weight().setZero();
  for (Index e = 0; e < 4; ++e) gate.router().weight()(e, e) = S(1);
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 93);
  moe::RoutingPlan<S> clean, jittered;
  gate.route(x, clean, Mode::inference);
  gate.route(x, jittered, Mode::training);
  double lowest = 2, highest = 0;
  for (Index t = 0; t < kTokens; ++t)
    for (Index e = 0; e < 4; ++e) {
      ASSERT_NE(clean.logits(t, e), S(0));
      const double u = double(jittered.logits(t, e)) / double(clean.logits(t, e));
      EXPECT_GE(u, 1 - eps - 1e-6) << "token " << t << " expert " << e;
      EXPECT_LT(u, 1 + eps + 1e-6) << "token " << t << " expert " << e;
      lowest = std::min(lowest, u);
      highest = std::max(highest, u);
    }
  // 28 draws of U(0.9, 1.1) spread over most of the interval (and are not all 1).
  EXPECT_LT(lowest, 1 - eps / 2);
  EXPECT_GT(highest, 1 + eps / 2);
}

TYPED_TEST(TopKGateTest, SameSeedSameTrainingRoutingDifferentSeedDifferent) {
  using S = TypeParam;
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 94);
  const TopKGateConfig config{.d_model = kDModel, .num_experts = 8, .top_k = 2, .noisy = true, .jitter = 0.05,
                              .seed = 31};
  TopKGateConfig other_seed = config;
  other_seed.seed = 32;
  moe::TopKGate<S> a(config), b(config), c(other_seed);
  c.router() = a.router();  // same parameters: only the noise differs
  moe::RoutingPlan<S> pa, pb, pc;
  for (int call = 0; call < 3; ++call) {
    SCOPED_TRACE(call);
    a.route(x, pa, Mode::training);
    b.route(x, pb, Mode::training);
    c.route(x, pc, Mode::training);
    expect_identical(pa, pb);
    EXPECT_FALSE(pa.logits == pc.logits);
  }
}

TYPED_TEST(TopKGateTest, SuccessiveTrainingCallsDrawNewNoise) {
  using S = TypeParam;
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 95);
  moe::TopKGate<S> gate({.d_model = kDModel, .num_experts = 4, .top_k = 2, .noisy = true, .seed = 33});
  moe::RoutingPlan<S> first, second;
  gate.route(x, first, Mode::training);
  gate.route(x, second, Mode::training);
  EXPECT_FALSE(first.logits == second.logits);
}

TYPED_TEST(TopKGateTest, ReseedRestartsTheNoiseSequence) {
  using S = TypeParam;
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 96);
  const TopKGateConfig config{.d_model = kDModel, .num_experts = 4, .top_k = 2, .noisy = true, .jitter = 0.1,
                              .seed = 34};
  moe::TopKGate<S> gate(config);
  moe::RoutingPlan<S> fresh, first, second, again;
  gate.route(x, fresh, Mode::training);
  gate.reseed(7);
  gate.route(x, first, Mode::training);
  gate.route(x, second, Mode::training);
  EXPECT_FALSE(first.logits == second.logits);
  gate.reseed(7);
  gate.route(x, again, Mode::training);
  expect_identical(again, first);

  // reseed(seed) puts the gate where a new gate built with that seed starts.
  gate.reseed(config.seed);
  gate.route(x, again, Mode::training);
  expect_identical(again, fresh);
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(TopKGateErrors, ConfigurationOutOfRange) {
  using moe::test::expect_throws_with;
  const auto make = [](TopKGateConfig c) { return [c] { moe::TopKGate<float> gate(c); }; };
  const TopKGateConfig ok{.d_model = kDModel, .num_experts = 4, .top_k = 2};
  EXPECT_NO_THROW(make(ok)());

  auto c = ok;
  c.top_k = 0;
  expect_throws_with<moe::config_error>(make(c), {"TopKGate", "top_k = 0", "num_experts = 4"});
  c.top_k = 5;
  expect_throws_with<moe::config_error>(make(c), {"TopKGate", "top_k = 5", "num_experts = 4"});

  c = ok;
  c.num_experts = 8;
  c.n_group = 3;
  expect_throws_with<moe::config_error>(make(c), {"TopKGate", "n_group = 3", "num_experts = 8"});
  c.n_group = 0;
  expect_throws_with<moe::config_error>(make(c), {"TopKGate", "n_group = 0", "num_experts = 8"});

  c.n_group = 2;
  c.topk_group = 3;
  expect_throws_with<moe::config_error>(make(c), {"TopKGate", "topk_group = 3", "n_group = 2"});
  c.topk_group = 0;
  expect_throws_with<moe::config_error>(make(c), {"TopKGate", "topk_group = 0", "n_group = 2"});

  c.n_group = 4;  // groups of 2: one group reaches only 2 experts
  c.topk_group = 1;
  c.top_k = 3;
  expect_throws_with<moe::config_error>(make(c), {"TopKGate", "top_k = 3", "topk_group = 1", "2 experts"});
  c.topk_group = 2;
  EXPECT_NO_THROW(make(c)());

  c = ok;
  c.jitter = -0.1;
  expect_throws_with<moe::config_error>(make(c), {"TopKGate", "jitter = -0.1", "[0, 1)"});
  c.jitter = 1.0;
  expect_throws_with<moe::config_error>(make(c), {"TopKGate", "jitter = 1", "[0, 1)"});
  c.jitter = std::numeric_limits<double>::quiet_NaN();
  expect_throws_with<moe::config_error>(make(c), {"TopKGate", "jitter = nan"});

  c = ok;
  c.scale = 0;
  expect_throws_with<moe::config_error>(make(c), {"TopKGate", "scale = 0", "> 0"});
  c.scale = -2.5;
  expect_throws_with<moe::config_error>(make(c), {"TopKGate", "scale = -2.5", "> 0"});
  c.scale = std::numeric_limits<double>::infinity();
  expect_throws_with<moe::config_error>(make(c), {"TopKGate", "scale = inf"});

  c = ok;
  c.d_model = 0;
  expect_throws_with<moe::config_error>(make(c), {"TopKGate", "d_model = 0", ">= 1"});
  c = ok;
  c.num_experts = 0;
  expect_throws_with<moe::config_error>(make(c), {"TopKGate", "num_experts = 0", ">= 1"});
}

TEST(TopKGateErrors, CapacityFactorMustBePositiveAndFinite) {
  using moe::test::expect_throws_with;
  for (const double factor : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN(),
                              std::numeric_limits<double>::infinity()}) {
    SCOPED_TRACE(factor);
    const TopKGateConfig c{.d_model = kDModel, .num_experts = 4, .capacity = {.factor = factor}};
    std::ostringstream shown;
    shown << "capacity factor = " << factor;
    expect_throws_with<moe::config_error>([c] { moe::TopKGate<double> gate(c); },
                                          {"TopKGate", shown.str(), "> 0"});
  }
  expect_throws_with<moe::config_error>(
      [] { moe::TopKGate<double> gate({.d_model = kDModel, .num_experts = 4, .capacity = {.factor = std::nullopt, .min_capacity = -1}}); },
      {"TopKGate", "min_capacity = -1", ">= 0"});
}

TYPED_TEST(TopKGateTest, WrongWidthIsAShapeError) {
  using S = TypeParam;
  moe::TopKGate<S> gate({.d_model = kDModel, .num_experts = 4});
  moe::RoutingPlan<S> plan;
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, 9, 97);
  moe::test::expect_throws_with<moe::shape_error>([&] { gate.route(x, plan, Mode::inference); },
                                                  {"TopKGate::route: x.cols() = 9 but d_model = 8"});
}

TYPED_TEST(TopKGateTest, NonFiniteInputNamesTheToken) {
  using S = TypeParam;
  moe::TopKGate<S> gate({.d_model = kDModel, .num_experts = 4, .noisy = true, .jitter = 0.1});
  moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 98);
  x(3, 5) = std::numeric_limits<S>::quiet_NaN();
  moe::RoutingPlan<S> plan;
  for (const Mode mode : {Mode::inference, Mode::training}) {
    SCOPED_TRACE(mode == Mode::training ? "training" : "inference");
    moe::test::expect_throws_with<std::domain_error>([&] { gate.route(x, plan, mode); },
                                                     {"TopKGate::route", "token 3"});
  }
}

}  // namespace
