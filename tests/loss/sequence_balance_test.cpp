// SequenceBalanceLoss against a plain loop of DeepSeek-V3 eq. 17-20, its balanced value 1, its
// gradient against central differences (sigmoid and softmax scores), the mask, and the
// sequence-length checks. What every loss meets (T = 0, padding, coefficient, +=, shapes) is in
// loss_contract_test.cpp.
#include <moe/concepts.hpp>
#include <moe/loss/sequence_balance.hpp>

#include "loss/loss_cases.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::Scoring;
namespace tl = moe::test::loss;

static_assert(moe::AuxLoss<moe::SequenceBalanceLoss<float>>);
static_assert(moe::AuxLoss<moe::SequenceBalanceLoss<double>>);

constexpr Index kSeqLen = 3, kSequences = 3, kTokens = kSeqLen * kSequences, kExperts = 4, kTopK = 2;

// mean over sequences with a real token of Σ_i f_i P_i, f_i = E/(k·T_s)·#{t: i selected},
// P_i = (1/T_s) Σ_t s[t, i] / Σ_j s[t, j]; in double.
template <class S>
double reference(const moe::RoutingPlan<S>& plan, Index seq_len, const std::vector<std::uint8_t>& mask) {
  const Index T = plan.num_tokens(), k = plan.slots_per_token(), E = plan.num_experts;
  double total = 0, sequences = 0;
  for (Index begin = 0; begin < T; begin += seq_len) {
    double ts = 0;
    for (Index t = begin; t < begin + seq_len; ++t) ts += mask.empty() || mask[t] ? 1 : 0;
    if (ts == 0) continue;
    sequences += 1;
    for (Index i = 0; i < E; ++i) {
      double selected = 0, p = 0;
      for (Index t = begin; t < begin + seq_len; ++t) {
        if (!mask.empty() && !mask[t]) continue;
        for (Index j = 0; j < k; ++j) selected += plan.expert(t, j) == i ? 1 : 0;
        double row = 0;
        for (Index e = 0; e < E; ++e) row += double(plan.scores(t, e));
        p += double(plan.scores(t, i)) / row;
      }
      total += (double(E) / (double(k) * ts) * selected) * (p / ts);
    }
  }
  return sequences > 0 ? total / sequences : 0.0;
}

moe::SequenceBalanceConfig config(double coefficient, Index seq_len = kSeqLen) {
  return {.coefficient = coefficient, .sequence_length = seq_len};
}

template <class S>
class SequenceBalanceTest : public ::testing::Test {};
TYPED_TEST_SUITE(SequenceBalanceTest, moe::test::Scalars);

TYPED_TEST(SequenceBalanceTest, ValueMatchesReferenceLoop) {
  using S = TypeParam;
  for (const Scoring scoring : {Scoring::sigmoid, Scoring::softmax}) {
    const auto plan = tl::make_plan<S>(tl::spaced_logits(kTokens, kExperts, 41), kTopK, scoring);
    const double expected = 0.5 * reference(plan, kSeqLen, {});
    EXPECT_NEAR(moe::SequenceBalanceLoss<S>(config(0.5)).evaluate(plan, {}, nullptr), expected,
                1e-6 * expected);
    EXPECT_GT(expected, 0.1);
    // One sequence of all T tokens is a different loss (the grouping matters).
    const double whole = moe::SequenceBalanceLoss<S>(config(0.5, kTokens)).evaluate(plan, {}, nullptr);
    EXPECT_NEAR(whole, 0.5 * reference(plan, kTokens, {}), 1e-6 * whole);
    EXPECT_GT(std::abs(whole - expected), 1e-3);
  }
}

// Every sequence sends T_s·k/E slots to each expert and every normalised score is 1/E.
TYPED_TEST(SequenceBalanceTest, BalancedValueIsOne) {
  using S = TypeParam;
  constexpr Index L = 4, T = 8, E = 4, k = 2;
  for (const Scoring scoring : {Scoring::sigmoid, Scoring::softmax}) {
    moe::RoutingPlan<S> plan;
    plan.reset(T, k, E);
    plan.logits.setZero();
    tl::rescore(plan, scoring);
    for (Index t = 0; t < T; ++t) {
      plan.expert(t, 0) = static_cast<std::int32_t>(t % E);
      plan.expert(t, 1) = static_cast<std::int32_t>((t + 1) % E);
    }
    EXPECT_DOUBLE_EQ(moe::SequenceBalanceLoss<S>(config(1, L)).evaluate(plan, {}, nullptr), 1.0);
    // The default coefficient is DeepSeek-V3's α = 1e-4.
    const double by_default =
        moe::SequenceBalanceLoss<S>({.sequence_length = L}).evaluate(plan, {}, nullptr);
    EXPECT_NEAR(by_default, 1e-4, 1e-12);
  }
}

template <class S>
void check_gradient(Scoring scoring, std::uint64_t seed) {
  const auto z = tl::spaced_logits(kTokens, kExperts, seed);
  auto plan_d = tl::make_plan<double>(z, kTopK, scoring);
  const moe::SequenceBalanceLoss<double> loss_d(config(1));
  const auto fd = tl::finite_differences(plan_d.logits, [&] {
    tl::rescore(plan_d, scoring);
    return loss_d.evaluate(plan_d, {}, nullptr);
  });
  const auto plan = tl::make_plan<S>(z, kTopK, scoring);
  moe::RouterGradients<S> grads;
  grads.reset(plan);
  moe::SequenceBalanceLoss<S>(config(1)).evaluate(plan, {}, &grads);
  EXPECT_LE(tl::relative_error(tl::logit_gradient(plan, grads, scoring), fd), tl::gradient_tolerance<S>());
  EXPECT_GT(fd.norm(), 1e-3);
  EXPECT_EQ(grads.d_weight.norm(), S(0));
  EXPECT_EQ(grads.d_logits.norm(), S(0));
}

TYPED_TEST(SequenceBalanceTest, GradSigmoidMatchesFiniteDifferences) { check_gradient<TypeParam>(Scoring::sigmoid, 42); }

TYPED_TEST(SequenceBalanceTest, GradSoftmaxMatchesFiniteDifferences) { check_gradient<TypeParam>(Scoring::softmax, 43); }

TYPED_TEST(SequenceBalanceTest, GradWithMaskMatchesFiniteDifferences) {
  using S = TypeParam;
  const std::vector<std::uint8_t> mask = {1, 1, 0, 0, 0, 0, 1, 0, 1};
  const auto z = tl::spaced_logits(kTokens, kExperts, 44);
  auto plan_d = tl::make_plan<double>(z, kTopK, Scoring::sigmoid);
  const moe::SequenceBalanceLoss<double> loss_d(config(1));
  const auto fd = tl::finite_differences(plan_d.logits, [&] {
    tl::rescore(plan_d, Scoring::sigmoid);
    return loss_d.evaluate(plan_d, mask, nullptr);
  });
  const auto plan = tl::make_plan<S>(z, kTopK, Scoring::sigmoid);
  moe::RouterGradients<S> grads;
  grads.reset(plan);
  moe::SequenceBalanceLoss<S>(config(1)).evaluate(plan, mask, &grads);
  EXPECT_LE(tl::relative_error(tl::logit_gradient(plan, grads, Scoring::sigmoid), fd), tl::gradient_tolerance<S>());
  EXPECT_GT(fd.norm(), 1e-3);
}

TYPED_TEST(SequenceBalanceTest, MaskExcludesPadding) {
  using S = TypeParam;
  const auto plan = tl::make_plan<S>(tl::spaced_logits(kTokens, kExperts, 45), kTopK, Scoring::sigmoid);
  const moe::SequenceBalanceLoss<S> loss(config(1));

  // A padded sequence drops out of the mean: the loss is that of the other two sequences.
  const std::vector<std::uint8_t> middle_padded = {1, 1, 1, 0, 0, 0, 1, 1, 1};
  const auto sub = tl::sub_plan(plan, {0, 1, 2, 6, 7, 8});
  const double unpadded = loss.evaluate(sub, {}, nullptr);
  EXPECT_NEAR(loss.evaluate(plan, middle_padded, nullptr), unpadded, 1e-6 * unpadded);

  // Padding inside a sequence shortens it: the loss is the mean of the sequences evaluated alone.
  const std::vector<std::uint8_t> tail_padded = {1, 1, 1, 0, 0, 0, 1, 1, 0};
  const double first = loss.evaluate(tl::sub_plan(plan, {0, 1, 2}), {}, nullptr);
  const double last = moe::SequenceBalanceLoss<S>(config(1, 2))
                          .evaluate(tl::sub_plan(plan, {6, 7}), {}, nullptr);
  moe::RouterGradients<S> grads;
  grads.reset(plan);
  const double masked = loss.evaluate(plan, tail_padded, &grads);
  EXPECT_NEAR(masked, 0.5 * (first + last), 1e-6 * masked);
  EXPECT_NEAR(masked, reference(plan, kSeqLen, tail_padded), 1e-6 * masked);
  EXPECT_GT(std::abs(masked - unpadded), 1e-4);
  for (const Index t : {3, 4, 5, 8}) EXPECT_EQ(grads.d_scores.row(t).norm(), 0.0);
}

TYPED_TEST(SequenceBalanceTest, BadConfigsAndShapesThrow) {
  using S = TypeParam;
  for (const double c : {0.0, -1e-4, std::numeric_limits<double>::infinity()})
    tl::expect_throw_naming<moe::config_error>([&] { moe::SequenceBalanceLoss<S>(config(c)); },
                                               {"SequenceBalanceLoss", "coefficient"});
  tl::expect_throw_naming<moe::config_error>([&] { moe::SequenceBalanceLoss<S>({.coefficient = 1e-4}); },
                                             {"SequenceBalanceLoss", "sequence_length = 0"});
  tl::expect_throw_naming<moe::config_error>([&] { moe::SequenceBalanceLoss<S>(config(1, -3)); },
                                             {"sequence_length = -3"});

  const auto plan = tl::make_plan<S>(tl::spaced_logits(kTokens, kExperts, 49), kTopK, Scoring::sigmoid);
  tl::expect_throw_naming<moe::shape_error>(
      [&] { moe::SequenceBalanceLoss<S>(config(1, 4)).evaluate(plan, {}, nullptr); },
      {"SequenceBalanceLoss::evaluate", "num_tokens = 9", "sequence_length = 4"});
  const moe::SequenceBalanceLoss<S> loss(config(1));
  const std::vector<std::uint8_t> short_mask(kTokens - 3, 1);
  tl::expect_throw_naming<moe::shape_error>([&] { loss.evaluate(plan, short_mask, nullptr); },
                                            {"mask.size() = 6", "num_tokens = 9"});
}

}  // namespace
