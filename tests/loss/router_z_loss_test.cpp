// RouterZLoss against a plain loop of ST-MoE eq. 5, its value (ln E)² at zero logits, its
// gradient against central differences, the mask, and the checks. What every loss meets (T = 0,
// padding, coefficient, +=, shapes) is in loss_contract_test.cpp.
#include <moe/concepts.hpp>
#include <moe/loss/router_z_loss.hpp>

#include "loss/loss_cases.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
namespace tl = moe::test::loss;

static_assert(moe::AuxLoss<moe::RouterZLoss<float>>);
static_assert(moe::AuxLoss<moe::RouterZLoss<double>>);

constexpr Index kTokens = 7, kExperts = 4, kTopK = 2;

// (1/T) Σ_t (log Σ_e exp z[t, e])² over the tokens with mask 1, without any max shift.
template <class S>
double reference(const moe::RoutingPlan<S>& plan, const std::vector<std::uint8_t>& mask) {
  double sum = 0, n = 0;
  for (Index t = 0; t < plan.num_tokens(); ++t) {
    if (!mask.empty() && !mask[t]) continue;
    double partition = 0;
    for (Index e = 0; e < plan.num_experts; ++e) partition += std::exp(double(plan.logits(t, e)));
    sum += std::log(partition) * std::log(partition);
    n += 1;
  }
  return n > 0 ? sum / n : 0.0;
}

template <class S>
class RouterZLossTest : public ::testing::Test {};
TYPED_TEST_SUITE(RouterZLossTest, moe::test::Scalars);

TYPED_TEST(RouterZLossTest, ValueMatchesReferenceLoop) {
  using S = TypeParam;
  auto plan = tl::make_plan<S>(tl::spaced_logits(kTokens, kExperts, 31), kTopK);
  plan.logits.array() += S(1.5);  // lse well away from 0
  tl::rescore(plan, moe::Scoring::softmax);
  const double expected = 0.25 * reference(plan, {});
  EXPECT_NEAR(moe::RouterZLoss<S>({.coefficient = 0.25}).evaluate(plan, {}, nullptr), expected, 1e-6 * expected);
  EXPECT_GT(expected, 0.1);
}

TYPED_TEST(RouterZLossTest, LargeLogitsStayFinite) {
  using S = TypeParam;
  auto plan = tl::make_plan<S>(tl::spaced_logits(kTokens, kExperts, 32), kTopK);
  plan.logits.array() += S(800);  // exp(800) overflows even double without the max shift
  moe::RouterGradients<S> grads;
  grads.reset(plan);
  const double value = moe::RouterZLoss<S>({.coefficient = 1}).evaluate(plan, {}, &grads);
  EXPECT_TRUE(std::isfinite(value));
  EXPECT_GT(value, 800.0 * 800.0);
  EXPECT_TRUE(grads.d_logits.allFinite());
}

TYPED_TEST(RouterZLossTest, ZeroLogitsGiveLogESquared) {
  using S = TypeParam;
  moe::RoutingPlan<S> plan;
  plan.reset(5, 1, 8);
  plan.logits.setZero();
  tl::rescore(plan, moe::Scoring::softmax);
  plan.expert.setZero();
  const double ln8 = std::log(8.0);
  EXPECT_NEAR(moe::RouterZLoss<S>({.coefficient = 1}).evaluate(plan, {}, nullptr), ln8 * ln8, 1e-6);
  EXPECT_NEAR(moe::RouterZLoss<S>().evaluate(plan, {}, nullptr), 1e-3 * ln8 * ln8, 1e-9);  // c_z = 1e-3
}

TYPED_TEST(RouterZLossTest, GradMatchesFiniteDifferences) {
  using S = TypeParam;
  auto z = tl::spaced_logits(kTokens, kExperts, 33);
  z.array() += 0.7;
  auto plan_d = tl::make_plan<double>(z, kTopK);
  const moe::RouterZLoss<double> loss_d({.coefficient = 1});
  const auto fd = tl::finite_differences(plan_d.logits, [&] { return loss_d.evaluate(plan_d, {}, nullptr); });

  const auto plan = tl::make_plan<S>(z, kTopK);
  moe::RouterGradients<S> grads;
  grads.reset(plan);
  moe::RouterZLoss<S>({.coefficient = 1}).evaluate(plan, {}, &grads);
  EXPECT_LE(tl::relative_error(grads.d_logits, fd), tl::gradient_tolerance<S>());
  EXPECT_GT(fd.norm(), 1e-2);
  EXPECT_EQ(grads.d_weight.norm(), S(0));
}

TYPED_TEST(RouterZLossTest, MaskExcludesPaddingFromValueAndGradient) {
  using S = TypeParam;
  const auto plan = tl::make_plan<S>(tl::spaced_logits(kTokens, kExperts, 34), kTopK);
  const std::vector<std::uint8_t> mask = {0, 1, 1, 0, 1, 1, 0};
  const std::vector<Index> rows = {1, 2, 4, 5};
  const auto sub = tl::sub_plan(plan, rows);
  const moe::RouterZLoss<S> loss({.coefficient = 1});
  moe::RouterGradients<S> grads, sub_grads;
  grads.reset(plan);
  sub_grads.reset(sub);
  const double masked = loss.evaluate(plan, mask, &grads);
  const double unpadded = loss.evaluate(sub, {}, &sub_grads);
  EXPECT_NEAR(masked, unpadded, 1e-6 * unpadded);
  EXPECT_GT(std::abs(masked - loss.evaluate(plan, {}, nullptr)), 1e-4);
  for (const Index t : {0, 3, 6}) EXPECT_EQ(grads.d_logits.row(t).norm(), S(0));
  for (std::size_t i = 0; i < rows.size(); ++i)
    MOE_EXPECT_CLOSE(S, grads.d_logits.row(rows[i]), sub_grads.d_logits.row(Index(i)));
}

TYPED_TEST(RouterZLossTest, BadConfigsAndMasksThrow) {
  using S = TypeParam;
  for (const double c : {0.0, -1e-3, std::numeric_limits<double>::quiet_NaN()})
    tl::expect_throw_naming<moe::config_error>([&] { moe::RouterZLoss<S>({.coefficient = c}); },
                                               {"RouterZLoss", "coefficient"});
  tl::expect_throw_naming<moe::config_error>([&] { moe::RouterZLoss<S>({.coefficient = -0.5}); }, {"-0.5"});
  const auto plan = tl::make_plan<S>(tl::spaced_logits(kTokens, kExperts, 38), kTopK);
  const std::vector<std::uint8_t> long_mask(kTokens + 2, 1);
  tl::expect_throw_naming<moe::shape_error>([&] { moe::RouterZLoss<S>().evaluate(plan, long_mask, nullptr); },
                                            {"RouterZLoss::evaluate", "mask.size() = 9", "num_tokens = 7"});
}

}  // namespace
