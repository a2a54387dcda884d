// Contracts that every auxiliary loss of the library meets in the same way (the AuxLoss concept),
// checked the same way for each. A case C names one loss with its settings and a plan for it:
//   C::template make<S>(scale)  the loss in S, its coefficient(s) times scale;
//   C::template plan<S>(T)      a plan of T tokens (T = 0 included) whose selection and top-k
//                               thresholds stay put under the checkers' ±1e-6 steps;
//   C::kTokens                  the number of tokens of the checks.
#pragma once

#include <moe/concepts.hpp>
#include <moe/errors.hpp>
#include <moe/routing.hpp>
#include <moe/testing/router_check.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace moe::test {

// The four gradients of a RouterGradients in double (d_scores already is), for loops over them.
inline constexpr std::array<const char*, 4> kGradientNames{"d_weight", "d_scores", "d_logits", "d_noise_std"};

template <class S>
std::array<RowMatrix<double>, 4> gradient_tensors(const RouterGradients<S>& g) {
  return {g.d_weight.template cast<double>(), g.d_scores, g.d_logits.template cast<double>(),
          g.d_noise_std.template cast<double>()};
}

// Padding at every fourth token from the third on: 1 1 0 1 1 1 0 1 1 ...
inline std::vector<std::uint8_t> some_padding(Index T) {
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(T), 1);
  for (Index t = 2; t < T; t += 4) mask[static_cast<std::size_t>(t)] = 0;
  return mask;
}

// Gradients of the plan's shapes filled with seeded values (to see that a loss adds, not assigns).
template <class S>
RouterGradients<S> prefilled_gradients(const RoutingPlan<S>& plan, std::uint64_t seed) {
  RouterGradients<S> g;
  g.reset(plan);
  g.d_weight = random_matrix<S>(g.d_weight.rows(), g.d_weight.cols(), seed);
  g.d_scores = random_matrix<double>(g.d_scores.rows(), g.d_scores.cols(), seed + 1);
  g.d_logits = random_matrix<S>(g.d_logits.rows(), g.d_logits.cols(), seed + 2);
  g.d_noise_std = random_matrix<S>(g.d_noise_std.rows(), g.d_noise_std.cols(), seed + 3);
  return g;
}

// In double: moe::testing::check_aux_loss passes, without and with padding. In float: the value
// and the gradients are those of the double loss (which the double instantiation checks), within
// 1e-5 relative, without and with padding.
template <class C, class S>
void check_against_finite_differences() {
  const auto plan_d = C::template plan<double>(C::kTokens);
  const auto loss_d = C::template make<double>(1);
  for (const auto& mask : {std::vector<std::uint8_t>{}, some_padding(C::kTokens)}) {
    SCOPED_TRACE(mask.empty() ? "no mask" : "some padding");
    if constexpr (std::is_same_v<S, double>) {
      const auto result = moe::testing::check_aux_loss(loss_d, plan_d, mask);
      EXPECT_TRUE(result.ok) << result.log;
    } else {
      const auto plan = C::template plan<S>(C::kTokens);
      RouterGradients<S> grads;
      RouterGradients<double> grads_d;
      grads.reset(plan);
      grads_d.reset(plan_d);
      const double value = C::template make<S>(1).evaluate(plan, mask, &grads);
      const double value_d = loss_d.evaluate(plan_d, mask, &grads_d);
      EXPECT_NEAR(value, value_d, 1e-5 * std::abs(value_d));
      const auto got = gradient_tensors(grads), expected = gradient_tensors(grads_d);
      for (std::size_t i = 0; i < got.size(); ++i)
        EXPECT_LE(moe::testing::relative_error({got[i].data(), std::size_t(got[i].size())},
                                               {expected[i].data(), std::size_t(expected[i].size())}),
                  1e-5)
            << kGradientNames[i];
    }
  }
}

// evaluate adds to gradients that hold values: by the fresh gradients, and a tensor the loss does
// not write keeps its bits.
template <class C, class S>
void check_accumulates() {
  const auto plan = C::template plan<S>(C::kTokens);
  const auto loss = C::template make<S>(1);
  RouterGradients<S> fresh;
  fresh.reset(plan);
  loss.evaluate(plan, {}, &fresh);
  auto grads = prefilled_gradients(plan, 41);
  const auto before = gradient_tensors(grads);
  loss.evaluate(plan, {}, &grads);
  const auto after = gradient_tensors(grads), added = gradient_tensors(fresh);
  double written = 0;
  for (std::size_t i = 0; i < added.size(); ++i) {
    SCOPED_TRACE(kGradientNames[i]);
    written += added[i].norm();
    if (added[i].isZero(0)) {
      EXPECT_TRUE(after[i] == before[i]);
    } else {
      MOE_EXPECT_CLOSE(S, (after[i] - before[i]).eval(), added[i]);
    }
  }
  EXPECT_GT(written, 1e-3);
}

// T = 0: the value is 0, and gradients of the plan's (empty) shapes keep them.
template <class C, class S>
void check_no_tokens() {
  const auto plan = C::template plan<S>(0);
  const auto loss = C::template make<S>(1);
  EXPECT_EQ(loss.evaluate(plan, {}, nullptr), 0.0);
  RouterGradients<S> grads, shapes;
  grads.reset(plan);
  shapes.reset(plan);
  EXPECT_EQ(loss.evaluate(plan, {}, &grads), 0.0);
  const auto after = gradient_tensors(grads), expected = gradient_tensors(shapes);
  for (std::size_t i = 0; i < after.size(); ++i) {
    EXPECT_EQ(after[i].rows(), expected[i].rows()) << kGradientNames[i];
    EXPECT_EQ(after[i].cols(), expected[i].cols()) << kGradientNames[i];
  }
}

// A mask of padding only: the value is 0 and no gradient changes (seeded values keep their bits).
template <class C, class S>
void check_all_padding() {
  const auto plan = C::template plan<S>(C::kTokens);
  const auto loss = C::template make<S>(1);
  const std::vector<std::uint8_t> none(static_cast<std::size_t>(C::kTokens), 0);
  EXPECT_EQ(loss.evaluate(plan, none, nullptr), 0.0);
  auto grads = prefilled_gradients(plan, 43);
  const auto before = gradient_tensors(grads);
  EXPECT_EQ(loss.evaluate(plan, none, &grads), 0.0);
  const auto after = gradient_tensors(grads);
  for (std::size_t i = 0; i < after.size(); ++i) EXPECT_TRUE(after[i] == before[i]) << kGradientNames[i];
  EXPECT_GT(loss.evaluate(plan, {}, nullptr), 0.0);  // without the mask the loss is not 0
}

// make(3) gives three times the value and the gradients of make(1).
template <class C, class S>
void check_coefficient_is_linear() {
  const auto plan = C::template plan<S>(C::kTokens);
  RouterGradients<S> g1, g3;
  g1.reset(plan);
  g3.reset(plan);
  const double v1 = C::template make<S>(1).evaluate(plan, {}, &g1);
  const double v3 = C::template make<S>(3).evaluate(plan, {}, &g3);
  EXPECT_NEAR(v3, 3 * v1, 1e-6 * v3);
  EXPECT_GT(v1, 1e-6);
  const auto once = gradient_tensors(g1), thrice = gradient_tensors(g3);
  double norm = 0;
  for (std::size_t i = 0; i < once.size(); ++i) {
    SCOPED_TRACE(kGradientNames[i]);
    MOE_EXPECT_CLOSE(S, thrice[i], (3 * once[i]).eval());
    norm += once[i].norm();
  }
  EXPECT_GT(norm, 1e-3);
}

// A mask of T − 1 or T + 1 entries throws shape_error, with and without gradients.
template <class C, class S>
void check_mask_size() {
  const auto plan = C::template plan<S>(C::kTokens);
  const auto loss = C::template make<S>(1);
  RouterGradients<S> grads;
  grads.reset(plan);
  for (const Index size : {C::kTokens - 1, C::kTokens + 1}) {
    const std::vector<std::uint8_t> mask(static_cast<std::size_t>(size), 1);
    EXPECT_THROW(loss.evaluate(plan, mask, nullptr), shape_error) << "mask of " << size;
    EXPECT_THROW(loss.evaluate(plan, mask, &grads), shape_error) << "mask of " << size;
  }
}

// Each of d_weight, d_scores, d_logits with a row or a column too many throws shape_error; so does
// d_noise_std for a noisy plan (the suite's only noisy plans are those of the loss that writes it).
template <class C, class S>
void check_gradient_shapes() {
  const auto plan = C::template plan<S>(C::kTokens);
  const auto loss = C::template make<S>(1);
  for (int tensor = 0; tensor < (plan.noisy ? 4 : 3); ++tensor)
    for (const bool extra_row : {true, false}) {
      RouterGradients<S> grads;
      grads.reset(plan);
      const auto grow = [&](auto& m) { m.setZero(m.rows() + (extra_row ? 1 : 0), m.cols() + (extra_row ? 0 : 1)); };
      if (tensor == 0) grow(grads.d_weight);
      if (tensor == 1) grow(grads.d_scores);
      if (tensor == 2) grow(grads.d_logits);
      if (tensor == 3) grow(grads.d_noise_std);
      EXPECT_THROW(loss.evaluate(plan, {}, &grads), shape_error)
          << kGradientNames[std::size_t(tensor)] << (extra_row ? " with a row" : " with a column")
          << " too many";
    }
}

}  // namespace moe::test
