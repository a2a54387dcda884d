// ImportanceLoadLoss against plain loops of Shazeer et al. 2017 eq. 6-11 (kth_excluding written
// as "sort the other experts' noisy logits"), its value 0 at balance, its three gradients
// (d_weight, d_logits, d_noise_std) against central differences, the mask, each coefficient on
// its own term, and the checks. What every loss meets (T = 0, padding, +=, shapes) is in
// loss_contract_test.cpp.
#include <moe/concepts.hpp>
#include <moe/loss/importance_load.hpp>

#include "loss/loss_cases.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
namespace tl = moe::test::loss;

static_assert(moe::AuxLoss<moe::ImportanceLoadLoss<float>>);
static_assert(moe::AuxLoss<moe::ImportanceLoadLoss<double>>);

constexpr Index kTokens = 7, kExperts = 4, kTopK = 2;

double cv_squared(const std::vector<double>& x) {
  double mean = 0;
  for (const double v : x) mean += v;
  mean /= double(x.size());
  double var = 0;
  for (const double v : x) var += (v - mean) * (v - mean);
  var /= double(x.size());  // population variance
  return var / (mean * mean + 1e-10);
}

double importance_reference(const moe::RoutingPlan<double>& plan, const std::vector<std::uint8_t>& mask) {
  std::vector<double> importance(plan.num_experts, 0.0);
  for (Index t = 0; t < plan.num_tokens(); ++t)
    for (Index j = 0; j < plan.slots_per_token(); ++j)
      if ((mask.empty() || mask[t]) && plan.expert(t, j) != moe::kEmptySlot)
        importance[plan.expert(t, j)] += plan.weight(t, j);
  return cv_squared(importance);
}

// P(t, e) = Φ((clean − kth_excluding(noisy[t], k, e)) / noise_std), for k < E.
double load_reference(const moe::RoutingPlan<double>& plan, const std::vector<std::uint8_t>& mask) {
  const Index E = plan.num_experts, k = plan.slots_per_token();
  std::vector<double> load(E, 0.0);
  for (Index t = 0; t < plan.num_tokens(); ++t) {
    if (!mask.empty() && !mask[t]) continue;
    for (Index e = 0; e < E; ++e) {
      std::vector<double> others;
      for (Index i = 0; i < E; ++i)
        if (i != e) others.push_back(plan.logits(t, i));
      std::sort(others.begin(), others.end(), std::greater<>());
      const double clean = plan.logits(t, e) - plan.noise(t, e) * plan.noise_std(t, e);
      const double z = (clean - others[k - 1]) / plan.noise_std(t, e);
      load[e] += 0.5 * (1 + std::erf(z / std::sqrt(2.0)));
    }
  }
  return cv_squared(load);
}

template <class S>
moe::RoutingPlan<double> to_double(const moe::RoutingPlan<S>& plan) {
  moe::RoutingPlan<double> d;
  d.reset(plan.num_tokens(), plan.slots_per_token(), plan.num_experts);
  d.expert = plan.expert;
  d.weight = plan.weight.template cast<double>();
  d.dropped = plan.dropped;
  d.logits = plan.logits.template cast<double>();
  d.scores = plan.scores.template cast<double>();
  d.noisy = plan.noisy;
  d.noise = plan.noise.template cast<double>();
  d.noise_std = plan.noise_std.template cast<double>();
  return d;
}

template <class S>
class ImportanceLoadTest : public ::testing::Test {};
TYPED_TEST_SUITE(ImportanceLoadTest, moe::test::Scalars);

TYPED_TEST(ImportanceLoadTest, ValueMatchesReferenceLoop) {
  using S = TypeParam;
  for (const Index k : {Index(1), kTopK, kExperts - 1}) {
    const auto plan = tl::noisy_plan<S>(kTokens, kExperts, k, 60 + k);
    const auto ref = to_double(plan);
    const double importance = importance_reference(ref, {}), load = load_reference(ref, {});
    const moe::ImportanceLoadLoss<S> loss({.importance_coefficient = 0.3, .load_coefficient = 0.7});
    const double expected = 0.3 * importance + 0.7 * load;
    EXPECT_NEAR(loss.evaluate(plan, {}, nullptr), expected, 1e-6 * expected) << "k = " << k;
    EXPECT_GT(importance, 1e-3);
    EXPECT_GT(load, 1e-3);
  }
}

TYPED_TEST(ImportanceLoadTest, ImportanceAloneNeedsNoNoise) {
  using S = TypeParam;
  const auto plan = tl::make_plan<S>(tl::spaced_logits(kTokens, kExperts, 61), kTopK);
  const moe::ImportanceLoadLoss<S> loss({.importance_coefficient = 0.1, .load_coefficient = 0});
  const double expected = 0.1 * importance_reference(to_double(plan), {});
  EXPECT_NEAR(loss.evaluate(plan, {}, nullptr), expected, 1e-6 * expected);
  EXPECT_GT(expected, 1e-4);
}

TYPED_TEST(ImportanceLoadTest, KEqualsEHasNoLoadTerm) {
  using S = TypeParam;
  const auto plan = tl::noisy_plan<S>(kTokens, kExperts, kExperts, 62);
  moe::RouterGradients<S> grads;
  grads.reset(plan);
  const double value = moe::ImportanceLoadLoss<S>({.importance_coefficient = 1, .load_coefficient = 1})
                           .evaluate(plan, {}, &grads);
  EXPECT_NEAR(value, importance_reference(to_double(plan), {}), 1e-6 * value);
  EXPECT_EQ(grads.d_logits.norm(), S(0));
  EXPECT_EQ(grads.d_noise_std.norm(), S(0));
}

// Token t's logits, noise and noise_std are those of token 0 shifted by t experts: over T = E
// tokens every expert sees every position once, so importance and load are equal.
template <class S>
moe::RoutingPlan<S> cyclic_plan(Index E, Index k) {
  const auto base = tl::noisy_plan<S>(1, E, k, 63);
  moe::RoutingPlan<S> plan;
  plan.reset(E, k, E);
  plan.noisy = true;
  plan.noise.resize(E, E);
  plan.noise_std.resize(E, E);
  for (Index t = 0; t < E; ++t) {
    for (Index e = 0; e < E; ++e) {
      plan.logits(t, (e + t) % E) = base.logits(0, e);
      plan.scores(t, (e + t) % E) = base.scores(0, e);
      plan.noise(t, (e + t) % E) = base.noise(0, e);
      plan.noise_std(t, (e + t) % E) = base.noise_std(0, e);
    }
    for (Index j = 0; j < k; ++j) {
      plan.expert(t, j) = static_cast<std::int32_t>((base.expert(0, j) + t) % E);
      plan.weight(t, j) = base.weight(0, j);
    }
  }
  return plan;
}

TYPED_TEST(ImportanceLoadTest, BalancedValueIsZero) {
  using S = TypeParam;
  const moe::ImportanceLoadLoss<S> loss({.importance_coefficient = 1, .load_coefficient = 1});
  EXPECT_EQ(loss.evaluate(cyclic_plan<S>(2, 1), {}, nullptr), 0.0);  // sums of two terms: exact
  EXPECT_NEAR(loss.evaluate(cyclic_plan<S>(kExperts, kTopK), {}, nullptr), 0.0, 1e-15);
  // Breaking the symmetry of one token makes it positive.
  auto unbalanced = cyclic_plan<S>(kExperts, kTopK);
  unbalanced.weight(0, 0) += S(0.5);
  unbalanced.logits(1, unbalanced.expert(1, 0)) += S(2);
  tl::rescore(unbalanced, moe::Scoring::softmax);
  EXPECT_GT(loss.evaluate(unbalanced, {}, nullptr), 1e-3);
}

// ∂/∂weight, ∂/∂logits (noise and noise_std fixed), ∂/∂noise_std (logits fixed) against central
// differences of the double loss.
TYPED_TEST(ImportanceLoadTest, GradMatchesFiniteDifferences) {
  using S = TypeParam;
  for (const Index k : {Index(1), kTopK, kExperts - 1}) {
    const auto plan = tl::noisy_plan<S>(kTokens, kExperts, k, 64 + k);
    const moe::ImportanceLoadConfig config{.importance_coefficient = 0.5, .load_coefficient = 2};
    auto plan_d = to_double(plan);
    const moe::ImportanceLoadLoss<double> loss_d(config);
    const auto value = [&] { return loss_d.evaluate(plan_d, {}, nullptr); };
    const auto fd_weight = tl::finite_differences(plan_d.weight, value);
    const auto fd_logits = tl::finite_differences(plan_d.logits, value);
    const auto fd_noise_std = tl::finite_differences(plan_d.noise_std, value);

    moe::RouterGradients<S> grads;
    grads.reset(plan);
    moe::ImportanceLoadLoss<S>(config).evaluate(plan, {}, &grads);
    EXPECT_LE(tl::relative_error(grads.d_weight, fd_weight), tl::gradient_tolerance<S>()) << "k = " << k;
    EXPECT_LE(tl::relative_error(grads.d_logits, fd_logits), tl::gradient_tolerance<S>()) << "k = " << k;
    EXPECT_LE(tl::relative_error(grads.d_noise_std, fd_noise_std), tl::gradient_tolerance<S>()) << "k = " << k;
    EXPECT_GT(fd_weight.norm(), 1e-3);
    EXPECT_GT(fd_logits.norm(), 1e-3);
    EXPECT_GT(fd_noise_std.norm(), 1e-3);
  }
}

TYPED_TEST(ImportanceLoadTest, MaskExcludesPaddingFromValueAndGradient) {
  using S = TypeParam;
  const auto plan = tl::noisy_plan<S>(kTokens, kExperts, kTopK, 65);
  const std::vector<std::uint8_t> mask = {1, 1, 0, 1, 1, 0, 1};
  const std::vector<Index> rows = {0, 1, 3, 4, 6};
  const auto sub = tl::sub_plan(plan, rows);
  const moe::ImportanceLoadLoss<S> loss;
  moe::RouterGradients<S> grads, sub_grads;
  grads.reset(plan);
  sub_grads.reset(sub);
  const double masked = loss.evaluate(plan, mask, &grads);
  const double unpadded = loss.evaluate(sub, {}, &sub_grads);
  EXPECT_NEAR(masked, unpadded, 1e-6 * unpadded);
  EXPECT_GT(std::abs(masked - loss.evaluate(plan, {}, nullptr)), 1e-4);
  for (const Index t : {2, 5}) {
    EXPECT_EQ(grads.d_weight.row(t).norm(), S(0));
    EXPECT_EQ(grads.d_logits.row(t).norm(), S(0));
    EXPECT_EQ(grads.d_noise_std.row(t).norm(), S(0));
  }
  for (std::size_t i = 0; i < rows.size(); ++i) {
    MOE_EXPECT_CLOSE(S, grads.d_weight.row(rows[i]), sub_grads.d_weight.row(Index(i)));
    MOE_EXPECT_CLOSE(S, grads.d_logits.row(rows[i]), sub_grads.d_logits.row(Index(i)));
    MOE_EXPECT_CLOSE(S, grads.d_noise_std.row(rows[i]), sub_grads.d_noise_std.row(Index(i)));
  }
}

TYPED_TEST(ImportanceLoadTest, CoefficientsScaleTheirOwnTerm) {
  using S = TypeParam;
  const auto plan = tl::noisy_plan<S>(kTokens, kExperts, kTopK, 66);
  moe::RouterGradients<S> g_imp, g_load, g_both;
  g_imp.reset(plan);
  g_load.reset(plan);
  g_both.reset(plan);
  const double imp = moe::ImportanceLoadLoss<S>({.importance_coefficient = 1, .load_coefficient = 0})
                         .evaluate(plan, {}, &g_imp);
  const double load = moe::ImportanceLoadLoss<S>({.importance_coefficient = 0, .load_coefficient = 1})
                          .evaluate(plan, {}, &g_load);
  const double both = moe::ImportanceLoadLoss<S>({.importance_coefficient = 2, .load_coefficient = 3})
                          .evaluate(plan, {}, &g_both);
  EXPECT_NEAR(both, 2 * imp + 3 * load, 1e-6 * both);
  MOE_EXPECT_CLOSE(S, g_both.d_weight, (S(2) * g_imp.d_weight).eval());
  MOE_EXPECT_CLOSE(S, g_both.d_logits, (S(3) * g_load.d_logits).eval());
  MOE_EXPECT_CLOSE(S, g_both.d_noise_std, (S(3) * g_load.d_noise_std).eval());
  EXPECT_EQ(g_imp.d_logits.norm(), S(0));
  EXPECT_EQ(g_load.d_weight.norm(), S(0));
  // The defaults are w_importance = w_load = 0.1.
  EXPECT_NEAR(moe::ImportanceLoadLoss<S>().evaluate(plan, {}, nullptr), 0.1 * (imp + load), 1e-6 * both);
}

TYPED_TEST(ImportanceLoadTest, BadConfigsPlansAndMasksThrow) {
  using S = TypeParam;
  using Config = moe::ImportanceLoadConfig;
  tl::expect_throw_naming<moe::config_error>([&] { moe::ImportanceLoadLoss<S>(Config{-0.1, 0.1}); },
                                             {"ImportanceLoadLoss", "importance_coefficient = -0.1"});
  tl::expect_throw_naming<moe::config_error>(
      [&] { moe::ImportanceLoadLoss<S>(Config{0.1, std::numeric_limits<double>::quiet_NaN()}); },
      {"ImportanceLoadLoss", "load_coefficient = nan"});
  tl::expect_throw_naming<moe::config_error>([&] { moe::ImportanceLoadLoss<S>(Config{0, 0}); },
                                             {"ImportanceLoadLoss", "importance_coefficient = 0", "load_coefficient = 0"});

  const auto clean = tl::make_plan<S>(tl::spaced_logits(kTokens, kExperts, 70), kTopK);
  tl::expect_throw_naming<moe::config_error>([&] { moe::ImportanceLoadLoss<S>().evaluate(clean, {}, nullptr); },
                                             {"ImportanceLoadLoss::evaluate", "not noisy", "load_coefficient = 0"});
  auto bad_noise = tl::noisy_plan<S>(kTokens, kExperts, kTopK, 71);
  bad_noise.noise_std.resize(kTokens - 1, kExperts);
  tl::expect_throw_naming<moe::shape_error>([&] { moe::ImportanceLoadLoss<S>().evaluate(bad_noise, {}, nullptr); },
                                            {"plan.noise_std.rows() = 6"});
  const auto plan = tl::noisy_plan<S>(kTokens, kExperts, kTopK, 72);
  const std::vector<std::uint8_t> short_mask(3, 1);
  tl::expect_throw_naming<moe::shape_error>([&] { moe::ImportanceLoadLoss<S>().evaluate(plan, short_mask, nullptr); },
                                            {"mask.size() = 3", "num_tokens = 7"});
  moe::RouterGradients<S> no_noise_grads;  // reset on a clean plan: no d_noise_std
  no_noise_grads.reset(clean);
  tl::expect_throw_naming<moe::shape_error>([&] { moe::ImportanceLoadLoss<S>().evaluate(plan, {}, &no_noise_grads); },
                                            {"grads.d_noise_std.rows() = 0"});
}

}  // namespace
