// Backward of every gate against central finite differences in double (Grad tests), through the
// public checker moe::testing::check_gate; one file covers all of them because their backwards
// share the router and the softmax Jacobian.
#include <moe/gating/dense_gate.hpp>
#include <moe/gating/expert_choice_gate.hpp>
#include <moe/gating/top_k_gate.hpp>
#include <moe/testing/router_check.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::Mode;
using moe::RowMatrix;

constexpr Index kTokens = 7, kModel = 8, kExperts = 8;

static_assert(moe::TrainableGate<moe::TopKGate<float>>);
static_assert(moe::TrainableGate<moe::DenseGate<float>>);
static_assert(moe::TrainableGate<moe::ExpertChoiceGate<float>>);

// The smallest gap, over tokens, between consecutive sorted values of a [T, E] matrix: a lower
// bound on the margin of any top-k selection made from it.
double min_gap(const RowMatrix<double>& values) {
  double gap = 1e300;
  for (Index t = 0; t < values.rows(); ++t) {
    moe::Vector<double> row = values.row(t).transpose();
    std::sort(row.data(), row.data() + row.size());
    for (Index e = 1; e < row.size(); ++e) gap = std::min(gap, row[e] - row[e - 1]);
  }
  return gap;
}

// Routes once and checks that the choice values are far enough apart for ±1e-6 steps.
void expect_selection_margin(moe::TopKGate<double> gate, const RowMatrix<double>& x) {
  moe::RoutingPlan<double> plan;
  gate.route(x, plan, Mode::inference);
  const bool by_logits = gate.config().scoring == moe::Scoring::softmax_selected;
  EXPECT_GT(min_gap(by_logits ? plan.logits : plan.scores), 1e-4);
}

void expect_top_k_gradients(const moe::TopKGateConfig& config, Mode mode = Mode::inference) {
  const RowMatrix<double> x = moe::test::random_matrix<double>(kTokens, kModel, 11);
  moe::TopKGate<double> gate(config);
  if (config.selection_bias)
    for (Index e = 0; e < kExperts; ++e) gate.selection_bias()[e] = 0.05 * double(e % 3) - 0.04;
  if (config.noisy) gate.noise_weight() = moe::test::random_matrix<double>(kExperts, kModel, 12);
  if (!config.noisy && config.jitter == 0) expect_selection_margin(gate, x);
  const moe::testing::GradCheckResult result = moe::testing::check_gate(gate, x, mode);
  EXPECT_TRUE(result.ok) << result.log;
}

moe::TopKGateConfig base(Index top_k = 2) { return {.d_model = kModel, .num_experts = kExperts, .top_k = top_k, .seed = 3}; }

TEST(TopKGateGrad, MixtralSoftmaxRenormalised) { expect_top_k_gradients(base()); }

TEST(TopKGateGrad, SoftmaxWithoutRenormalisationWithRouterBias) {
  auto config = base(3);
  config.normalize = false;
  config.router_bias = true;
  expect_top_k_gradients(config);
}

TEST(TopKGateGrad, SoftmaxOverTheSelectedLogitsScaled) {
  auto config = base();
  config.scoring = moe::Scoring::softmax_selected;
  config.scale = 1.5;
  expect_top_k_gradients(config);
}

TEST(TopKGateGrad, DeepSeekSigmoidGroupsSelectionBiasScale) {
  auto config = base();
  config.scoring = moe::Scoring::sigmoid;
  config.selection_bias = true;
  config.n_group = 4;
  config.topk_group = 2;
  config.scale = 2.5;
  expect_top_k_gradients(config);
}

// DeepSeek-V2 scales the unnormalised weights by routed_scaling_factor (16): the routed scale must
// reach the gradient of both score functions without renormalisation.
TEST(TopKGateGrad, UnnormalisedWeightsScaledBySixteen) {
  for (const auto scoring : {moe::Scoring::softmax, moe::Scoring::sigmoid}) {
    auto config = base();
    config.scoring = scoring;
    config.normalize = false;
    config.scale = 16.0;
    expect_top_k_gradients(config);
  }
}

TEST(TopKGateGrad, SigmoidWithoutRenormalisation) {
  auto config = base();
  config.scoring = moe::Scoring::sigmoid;
  config.normalize = false;
  expect_top_k_gradients(config);
}

TEST(TopKGateGrad, SwitchTopOneWithCapacityDrops) {
  auto config = base(1);
  config.normalize = false;
  config.capacity = {.factor = 0.5};  // C = 1 for 7 tokens on 8 experts: drops happen
  expect_top_k_gradients(config);
}

TEST(TopKGateGrad, NoisyTopKLearnedNoiseScale) {
  auto config = base();
  config.scoring = moe::Scoring::softmax_selected;
  config.noisy = true;
  expect_top_k_gradients(config, Mode::training);
}

TEST(TopKGateGrad, MultiplicativeJitter) {
  auto config = base();
  config.jitter = 0.1;
  config.router_bias = true;
  expect_top_k_gradients(config, Mode::training);
}

TEST(TopKGateGrad, SelectionBiasIsNotAParameter) {
  auto config = base();
  config.selection_bias = true;
  config.noisy = true;
  moe::TopKGate<double> gate(config);
  moe::ParameterList<double> params;
  gate.collect_parameters("gate.", params);
  ASSERT_EQ(params.size(), 2u);
  EXPECT_EQ(params[0].name, "gate.weight");
  EXPECT_EQ(params[1].name, "gate.noise_weight");
}

TEST(DenseGateGrad, SoftmaxOverAllExperts) {
  const RowMatrix<double> x = moe::test::random_matrix<double>(kTokens, kModel, 13);
  const auto result =
      moe::testing::check_gate(moe::DenseGate<double>({.d_model = kModel, .num_experts = kExperts}), x, Mode::training);
  EXPECT_TRUE(result.ok) << result.log;
}

TEST(ExpertChoiceGateGrad, ChosenSlotsOnly) {
  const RowMatrix<double> x = moe::test::random_matrix<double>(kTokens, kModel, 14);
  moe::ExpertChoiceGate<double> gate({.d_model = kModel, .num_experts = kExperts, .capacity_factor = 2.0, .router_bias = true});
  moe::RoutingPlan<double> plan;
  gate.route(x, plan, Mode::inference);
  RowMatrix<double> by_expert = plan.scores.transpose();  // experts choose among tokens
  EXPECT_GT(min_gap(by_expert), 1e-4);
  const auto result = moe::testing::check_gate(gate, x, Mode::inference);
  EXPECT_TRUE(result.ok) << result.log;
}

}  // namespace
