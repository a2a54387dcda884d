// LoadBalancingLoss against plain loops written from Switch Transformers eq. 4-6 and from HF's
// load_balancing_loss_func (one f per slot rank), its balanced values 1 and k, its gradient
// through the score function against central differences, the mask, and the checks. What every
// loss meets (T = 0, padding, coefficient, +=, shapes) is in loss_contract_test.cpp.
#include <moe/concepts.hpp>
#include <moe/loss/load_balancing.hpp>

#include "loss/loss_cases.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;
using moe::Scoring;
using Form = moe::LoadBalancingConfig::Form;
namespace tl = moe::test::loss;

static_assert(moe::AuxLoss<moe::LoadBalancingLoss<float>>);
static_assert(moe::AuxLoss<moe::LoadBalancingLoss<double>>);

constexpr Index kTokens = 7, kExperts = 4, kTopK = 2;

// E · Σ_e f_e P_e (switch: f over T·k slots) or E · Σ_j Σ_e f_{j,e} P_e (hf: f per rank over T),
// over the tokens with mask 1, counting every non-empty slot; in double.
template <class S>
double reference(const moe::RoutingPlan<S>& plan, const std::vector<std::uint8_t>& mask, Form form) {
  const Index T = plan.num_tokens(), k = plan.slots_per_token(), E = plan.num_experts;
  double n = 0;
  for (Index t = 0; t < T; ++t) n += mask.empty() || mask[t] ? 1 : 0;
  if (n == 0) return 0;
  double value = 0;
  for (Index e = 0; e < E; ++e) {
    double p = 0;
    for (Index t = 0; t < T; ++t)
      if (mask.empty() || mask[t]) p += double(plan.scores(t, e));
    p /= n;
    if (form == Form::switch_gshard) {
      double slots = 0;
      for (Index t = 0; t < T; ++t)
        for (Index j = 0; j < k; ++j)
          if ((mask.empty() || mask[t]) && plan.expert(t, j) == e) slots += 1;
      value += E * (slots / (n * k)) * p;
    } else {
      for (Index j = 0; j < k; ++j) {
        double rank_count = 0;
        for (Index t = 0; t < T; ++t)
          if ((mask.empty() || mask[t]) && plan.expert(t, j) == e) rank_count += 1;
        value += E * (rank_count / n) * p;
      }
    }
  }
  return value;
}

template <class S>
class LoadBalancingTest : public ::testing::Test {};
TYPED_TEST_SUITE(LoadBalancingTest, moe::test::Scalars);

TYPED_TEST(LoadBalancingTest, ValueMatchesReferenceLoop) {
  using S = TypeParam;
  for (const Scoring scoring : {Scoring::softmax, Scoring::sigmoid})
    for (const Form form : {Form::switch_gshard, Form::hf}) {
      auto plan = tl::make_plan<S>(tl::spaced_logits(kTokens, kExperts, 5), kTopK, scoring);
      plan.dropped(2, 1) = 1;              // dropped slots still count in f
      plan.expert(4, 1) = moe::kEmptySlot;  // empty slots do not
      const moe::LoadBalancingLoss<S> loss({.coefficient = 0.5, .form = form});
      const double expected = 0.5 * reference(plan, {}, form);
      EXPECT_NEAR(loss.evaluate(plan, {}, nullptr), expected, 1e-6 * expected);
      EXPECT_GT(expected, 0.1);
    }
}

TYPED_TEST(LoadBalancingTest, HfFormIsKTimesSwitchForm) {
  using S = TypeParam;
  const auto plan = tl::make_plan<S>(tl::spaced_logits(kTokens, kExperts, 6), 3);
  const double sw = moe::LoadBalancingLoss<S>({.coefficient = 1}).evaluate(plan, {}, nullptr);
  const double hf = moe::LoadBalancingLoss<S>({.coefficient = 1, .form = Form::hf}).evaluate(plan, {}, nullptr);
  EXPECT_NEAR(hf, 3 * sw, 1e-6 * hf);
}

// Every expert receives T·k/E slots in every rank and every softmax score is 1/E.
TYPED_TEST(LoadBalancingTest, BalancedValueIsOneForSwitchAndKForHf) {
  using S = TypeParam;
  constexpr Index T = 8, E = 4, k = 2;
  moe::RoutingPlan<S> plan;
  plan.reset(T, k, E);
  plan.logits.setZero();
  tl::rescore(plan, Scoring::softmax);
  for (Index t = 0; t < T; ++t) {
    plan.expert(t, 0) = static_cast<std::int32_t>(t % E);
    plan.expert(t, 1) = static_cast<std::int32_t>((t + 1) % E);
    plan.weight.row(t).setConstant(S(0.5));
  }
  EXPECT_DOUBLE_EQ(moe::LoadBalancingLoss<S>({.coefficient = 1}).evaluate(plan, {}, nullptr), 1.0);
  EXPECT_DOUBLE_EQ(moe::LoadBalancingLoss<S>({.coefficient = 1, .form = Form::hf}).evaluate(plan, {}, nullptr),
                   double(k));
  // The default coefficient is Switch's α = 1e-2: the default loss at balance is 1e-2.
  EXPECT_NEAR(moe::LoadBalancingLoss<S>().evaluate(plan, {}, nullptr), 1e-2, 1e-9);

  // Collapse: every token to expert 0 with all its probability there gives E.
  plan.logits.setConstant(-30);
  plan.logits.col(0).setConstant(30);
  tl::rescore(plan, Scoring::softmax);
  plan.expert.col(0).setConstant(0);
  plan.expert.col(1).setConstant(1);
  EXPECT_NEAR(moe::LoadBalancingLoss<S>({.coefficient = 1}).evaluate(plan, {}, nullptr), E / 2.0, 1e-6);
}

// d_scores mapped to the logits (as a gate does) against central differences of the double loss,
// scores recomputed from the logits.
template <class S>
void check_gradient(Scoring scoring, Form form, Index k, std::uint64_t seed) {
  const auto z = tl::spaced_logits(kTokens, kExperts, seed);
  const moe::LoadBalancingConfig config{.coefficient = 1, .form = form};
  auto plan_d = tl::make_plan<double>(z, k, scoring);
  const moe::LoadBalancingLoss<double> loss_d(config);
  const auto fd = tl::finite_differences(plan_d.logits, [&] {
    tl::rescore(plan_d, scoring);
    return loss_d.evaluate(plan_d, {}, nullptr);
  });

  const auto plan = tl::make_plan<S>(z, k, scoring);
  moe::RouterGradients<S> grads;
  grads.reset(plan);
  moe::LoadBalancingLoss<S>(config).evaluate(plan, {}, &grads);
  const RowMatrix<S> d_logits = tl::logit_gradient(plan, grads, scoring);
  if (k < kExperts) {
    EXPECT_LE(tl::relative_error(d_logits, fd), tl::gradient_tolerance<S>());
    EXPECT_GT(fd.norm(), 1e-3);
  } else {  // k = E: every f_e = 1/E and L = Σ_e P_e = 1 whatever the logits
    EXPECT_LE(fd.norm(), 1e-8);
    EXPECT_LE(double(d_logits.norm()), 1e-6);
  }
  EXPECT_EQ(grads.d_weight.norm(), S(0));
  EXPECT_EQ(grads.d_logits.norm(), S(0));
}

TYPED_TEST(LoadBalancingTest, GradSoftmaxMatchesFiniteDifferences) {
  check_gradient<TypeParam>(Scoring::softmax, Form::switch_gshard, kTopK, 21);
  check_gradient<TypeParam>(Scoring::softmax, Form::switch_gshard, 1, 22);
  check_gradient<TypeParam>(Scoring::softmax, Form::switch_gshard, kExperts, 23);
}

TYPED_TEST(LoadBalancingTest, GradSigmoidMatchesFiniteDifferences) {
  check_gradient<TypeParam>(Scoring::sigmoid, Form::switch_gshard, kTopK, 24);
}

TYPED_TEST(LoadBalancingTest, GradHfFormMatchesFiniteDifferences) {
  check_gradient<TypeParam>(Scoring::softmax, Form::hf, kTopK, 25);
}

TYPED_TEST(LoadBalancingTest, MaskExcludesPaddingFromValueAndGradient) {
  using S = TypeParam;
  const auto plan = tl::make_plan<S>(tl::spaced_logits(kTokens, kExperts, 7), kTopK);
  const std::vector<std::uint8_t> mask = {1, 0, 1, 1, 0, 1, 1};
  const auto sub = tl::sub_plan(plan, {0, 2, 3, 5, 6});
  const moe::LoadBalancingLoss<S> loss({.coefficient = 1});

  moe::RouterGradients<S> grads, sub_grads;
  grads.reset(plan);
  sub_grads.reset(sub);
  const double masked = loss.evaluate(plan, mask, &grads);
  const double unpadded = loss.evaluate(sub, {}, &sub_grads);
  EXPECT_NEAR(masked, unpadded, 1e-6 * unpadded);
  EXPECT_GT(std::abs(masked - loss.evaluate(plan, {}, nullptr)), 1e-4);  // the padding mattered

  EXPECT_EQ(grads.d_scores.row(1).norm(), 0.0);
  EXPECT_EQ(grads.d_scores.row(4).norm(), 0.0);
  const std::vector<Index> rows = {0, 2, 3, 5, 6};
  for (std::size_t i = 0; i < rows.size(); ++i)
    MOE_EXPECT_CLOSE(S, grads.d_scores.row(rows[i]), sub_grads.d_scores.row(Index(i)));
}

TYPED_TEST(LoadBalancingTest, BadConfigsAndShapesThrow) {
  using S = TypeParam;
  for (const double c : {0.0, -0.01, std::numeric_limits<double>::quiet_NaN(),
                         std::numeric_limits<double>::infinity()})
    tl::expect_throw_naming<moe::config_error>([&] { moe::LoadBalancingLoss<S>({.coefficient = c}); },
                                               {"LoadBalancingLoss", "coefficient"});
  tl::expect_throw_naming<moe::config_error>([&] { moe::LoadBalancingLoss<S>({.coefficient = -2}); }, {"-2"});

  const auto plan = tl::make_plan<S>(tl::spaced_logits(kTokens, kExperts, 11), kTopK);
  const moe::LoadBalancingLoss<S> loss;
  const std::vector<std::uint8_t> short_mask(kTokens - 1, 1);
  tl::expect_throw_naming<moe::shape_error>([&] { loss.evaluate(plan, short_mask, nullptr); },
                                            {"LoadBalancingLoss::evaluate", "mask.size() = 6", "7"});
  moe::RouterGradients<S> wrong;
  wrong.reset(plan);
  wrong.d_scores.setZero(kTokens, kExperts + 1);
  tl::expect_throw_naming<moe::shape_error>([&] { loss.evaluate(plan, {}, &wrong); }, {"d_scores.cols() = 5", "4"});
}

}  // namespace
