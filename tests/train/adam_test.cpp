// Adam and AdamW against a plain double loop of torch.optim.Adam/AdamW's formulas, the exact first
// step, decoupled decay, a quadratic, a schedule, and the config errors. The step contract (shapes,
// state, non-finite gradients) is checked for every optimizer in optimizer_contract_test.cpp.
#include <moe/train/adam.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;

// Two tensors of odd shapes, "w" [3, 4] and "b" [1, 5], and their gradients.
template <class S>
struct Problem {
  RowMatrix<S> w = moe::test::random_matrix<S>(3, 4, 31), b = moe::test::random_matrix<S>(1, 5, 32);
  RowMatrix<S> d_w = RowMatrix<S>::Zero(3, 4), d_b = RowMatrix<S>::Zero(1, 5);

  moe::ParameterList<S> params() { return {moe::view<S>("w", w), moe::view<S>("b", b)}; }
  moe::ParameterList<S> grads() { return {moe::view<S>("w", d_w), moe::view<S>("b", d_b)}; }
  // Copies into the existing storage: a move assignment would leave earlier views dangling.
  void draw_gradients(std::uint64_t seed) {
    d_w.noalias() = moe::test::random_matrix<S>(3, 4, seed);
    d_b.noalias() = moe::test::random_matrix<S>(1, 5, seed + 1000);
  }
};

// torch.optim.adam._single_tensor_adam (amsgrad off, not capturable), in double, written the way
// torch writes it (lerp for the first moment; AdamW decays the parameter before the moments).
struct ReferenceAdam {
  moe::AdamConfig config;
  std::vector<RowMatrix<double>> exp_avg, exp_avg_sq;
  int step_t = 0;

  void step(std::vector<RowMatrix<double>*> params, std::vector<RowMatrix<double>> grads) {
    ++step_t;
    for (std::size_t i = 0; i < params.size(); ++i) {
      RowMatrix<double>& param = *params[i];
      RowMatrix<double> grad = grads[i];
      if (exp_avg.size() <= i) {
        exp_avg.push_back(RowMatrix<double>::Zero(param.rows(), param.cols()));
        exp_avg_sq.push_back(RowMatrix<double>::Zero(param.rows(), param.cols()));
      }
      if (config.weight_decay != 0) {
        if (config.decoupled) {
          param *= 1 - config.lr * config.weight_decay;
        } else {
          grad += config.weight_decay * param;
        }
      }
      exp_avg[i] += (1 - config.beta1) * (grad - exp_avg[i]);  // lerp_
      exp_avg_sq[i] = config.beta2 * exp_avg_sq[i] + (1 - config.beta2) * grad.cwiseProduct(grad);
      const double bias_correction1 = 1 - std::pow(config.beta1, step_t);
      const double bias_correction2 = 1 - std::pow(config.beta2, step_t);
      const double step_size = config.lr / bias_correction1;
      const RowMatrix<double> denom =
          (exp_avg_sq[i].cwiseSqrt() / std::sqrt(bias_correction2)).array() + config.eps;
      param -= step_size * exp_avg[i].cwiseQuotient(denom);
    }
  }
};

template <class F>
void expect_error_naming(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no exception";
  } catch (const std::exception& e) {
    for (const auto& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

template <class S>
class AdamTest : public ::testing::Test {};
TYPED_TEST_SUITE(AdamTest, moe::test::Scalars);

TYPED_TEST(AdamTest, FirstStepMovesEachParameterByLrTimesTheSignOfItsGradient) {
  // Step 1: m̂ = g and √v̂ = |g|, so Δθ = −lr · g / (|g| + eps): lr · sign(g) up to eps.
  using S = TypeParam;
  RowMatrix<S> theta(1, 6), grad(1, 6);
  theta << S(0.5), S(-1), S(2), S(0.25), S(-0.75), S(1);
  grad << S(0.5), S(-2), S(3), S(-1e-3), S(1e-5), S(-0.125);
  const RowMatrix<S> theta0 = theta;
  const double lr = 0.01, eps = 1e-8;
  moe::Adam<S> adam({.lr = lr, .eps = eps});
  EXPECT_EQ(adam.steps(), 0);
  adam.step({moe::view<S>("theta", theta)}, {moe::view<S>("theta", grad)});
  EXPECT_EQ(adam.steps(), 1);
  for (Index j = 0; j < 6; ++j) {
    const double g = grad(0, j), expected = double(theta0(0, j)) - lr * g / (std::abs(g) + eps);
    EXPECT_NEAR(theta(0, j), expected, 4 * std::numeric_limits<S>::epsilon()) << j;
    if (std::abs(g) >= 1e-3) {
      EXPECT_NEAR(theta0(0, j) - theta(0, j), lr * (g > 0 ? 1 : -1), 1e-4 * lr) << j;
    }
  }
  // eps matters for a tiny gradient: 1e-5 / (1e-5 + 1e-8) = 1 − 1e-3 (approximately).
  EXPECT_NEAR((theta(0, 4) - theta0(0, 4)) / -lr, 1e-5 / (1e-5 + 1e-8), sizeof(S) == 4 ? 1e-4 : 1e-10);
  // The moments after one step: m = (1 − β1)·g, v = (1 − β2)·g².
  EXPECT_NEAR(adam.first_moment(0)(0, 1), 0.1 * -2, 1e-7);
  EXPECT_NEAR(adam.second_moment(0)(0, 1), 0.001 * 4, 1e-8);
}

TYPED_TEST(AdamTest, MatchesTheTorchFormulasOverSeveralSteps) {
  using S = TypeParam;
  const std::vector<moe::AdamConfig> configs{
      {},
      {.lr = 0.05, .beta1 = 0.8, .beta2 = 0.99},
      {.lr = 0.01, .weight_decay = 0.1},                       // Adam: L2 through the gradient
      {.lr = 0.01, .weight_decay = 0.1, .decoupled = true},    // AdamW
      {.lr = 0.02, .beta1 = 0, .beta2 = 0.5, .eps = 1e-3, .weight_decay = 0.3, .decoupled = true},
  };
  for (const auto& config : configs) {
    SCOPED_TRACE(::testing::Message() << "lr " << config.lr << " betas " << config.beta1 << ", " << config.beta2
                                      << " eps " << config.eps << " wd " << config.weight_decay << " decoupled "
                                      << config.decoupled);
    Problem<S> p;
    RowMatrix<double> w = p.w.template cast<double>(), b = p.b.template cast<double>();
    moe::Adam<S> adam(config);
    ReferenceAdam reference{config, {}, {}, 0};
    for (int step = 0; step < 8; ++step) {
      p.draw_gradients(200 + step);
      adam.step(p.params(), p.grads());
      reference.step({&w, &b}, {p.d_w.template cast<double>(), p.d_b.template cast<double>()});
      MOE_EXPECT_CLOSE(S, p.w, w);
      MOE_EXPECT_CLOSE(S, p.b, b);
    }
    EXPECT_EQ(adam.steps(), 8);
    MOE_EXPECT_CLOSE(S, adam.first_moment(0), reference.exp_avg[0]);
    MOE_EXPECT_CLOSE(S, adam.second_moment(1), reference.exp_avg_sq[1]);
  }
}

TYPED_TEST(AdamTest, AdamWDecaysTheParameterItselfAdamDecaysThroughTheGradient) {
  // θ = 4, g = 0, lr = 0.1, wd = 0.5.
  //   AdamW: θ ← 4·(1 − 0.1·0.5) = 3.8, then m = v = 0 and the Adam update is 0 exactly.
  //   Adam:  g ← 0.5·4 = 2, and the first step moves by lr·sign(g): θ ≈ 3.9.
  using S = TypeParam;
  RowMatrix<S> theta = RowMatrix<S>::Constant(1, 1, S(4)), grad = RowMatrix<S>::Zero(1, 1);
  const moe::ParameterList<S> params{moe::view<S>("theta", theta)}, grads{moe::view<S>("theta", grad)};

  auto adamw = moe::adamw<S>({.lr = 0.1, .weight_decay = 0.5});
  EXPECT_TRUE(adamw.config().decoupled);
  adamw.step(params, grads);
  EXPECT_EQ(theta(0, 0), S(4) * S(0.95));
  adamw.step(params, grads);
  EXPECT_EQ(theta(0, 0), S(4) * S(0.95) * S(0.95));

  theta(0, 0) = S(4);
  moe::Adam<S> adam({.lr = 0.1, .weight_decay = 0.5});
  adam.step(params, grads);
  EXPECT_NEAR(theta(0, 0), 3.9, 1e-6);
  EXPECT_EQ(grad(0, 0), S(0));  // the decay is added to a copy, not to the caller's gradient
}

TYPED_TEST(AdamTest, AdamWDecaysBeforeTheAdamUpdate) {
  // θ = 4, g = 1, lr = 0.1, wd = 0.5, first step (m̂ = g, v̂ = g²: the update is lr·g/(|g| + ε)):
  //   decay, then update: 4·0.95 − 0.1 = 3.7;   update, then decay: (4 − 0.1)·0.95 = 3.705.
  using S = TypeParam;
  RowMatrix<S> theta = RowMatrix<S>::Constant(1, 1, S(4)), grad = RowMatrix<S>::Ones(1, 1);
  const moe::ParameterList<S> params{moe::view<S>("theta", theta)}, grads{moe::view<S>("theta", grad)};
  auto adamw = moe::adamw<S>({.lr = 0.1, .weight_decay = 0.5});
  adamw.step(params, grads);
  EXPECT_NEAR(theta(0, 0), 3.7, 1e-6);
}

TYPED_TEST(AdamTest, MinimisesAQuadratic) {
  // ½‖θ − c‖² has gradient θ − c; gradients are zeroed and accumulated as a training loop would.
  using S = TypeParam;
  const RowMatrix<S> start = moe::test::random_matrix<S>(1, 10, 41), c = moe::test::random_matrix<S>(1, 10, 42);
  RowMatrix<S> theta = start, grad(1, 10);
  const moe::ParameterList<S> params{moe::view<S>("theta", theta)}, grads{moe::view<S>("theta", grad)};
  for (const bool decoupled : {false, true}) {
    theta = start;  // a copy into the same storage: the views stay valid
    moe::Adam<S> adam({.lr = 0.05, .weight_decay = decoupled ? 1e-4 : 0.0, .decoupled = decoupled});
    const double distance0 = (theta - c).norm();
    for (int step = 0; step < 1000; ++step) {
      moe::zero(grads);
      grad += theta - c;
      adam.step(params, grads);
    }
    // AdamW's decay pulls the minimum towards 0 by about wd·c / (1 + wd): far below the bound.
    EXPECT_LT((theta - c).norm(), 1e-3 * distance0) << "decoupled " << decoupled;
  }
}

TYPED_TEST(AdamTest, ConfigErrorsNameTheOptimizerAndTheNumber) {
  using S = TypeParam;
  expect_error_naming([] { moe::Adam<S>({.lr = 0}); }, {"Adam", "lr = 0", "> 0"});
  expect_error_naming([] { moe::Adam<S>({.lr = -0.5}); }, {"Adam", "lr = -0.5"});
  expect_error_naming([] { moe::Adam<S>({.beta1 = 1}); }, {"Adam", "beta1 = 1", "[0, 1)"});
  expect_error_naming([] { moe::Adam<S>({.beta1 = -0.1}); }, {"Adam", "beta1 = -0.1"});
  expect_error_naming([] { moe::Adam<S>({.beta2 = 1.5}); }, {"Adam", "beta2 = 1.5"});
  expect_error_naming([] { moe::Adam<S>({.beta2 = std::numeric_limits<double>::quiet_NaN()}); },
                      {"Adam", "beta2 = nan"});
  expect_error_naming([] { moe::Adam<S>({.eps = 0}); }, {"Adam", "eps = 0"});
  expect_error_naming([] { moe::Adam<S>({.eps = -1e-8}); }, {"Adam", "eps = -1e-08"});
  expect_error_naming([] { moe::Adam<S>({.weight_decay = -0.01}); }, {"Adam", "weight_decay = -0.01"});
  expect_error_naming([] { moe::adamw<S>({.lr = -1}); }, {"AdamW", "lr = -1"});
  EXPECT_THROW(moe::Adam<S>({.beta1 = 1}), moe::config_error);
  EXPECT_NO_THROW((moe::Adam<S>({.beta1 = 0, .beta2 = 0})));
}


// A schedule changes lr between steps; the second step uses the new lr with the kept moments.
TEST(AdamSchedule, SetLrKeepsTheMoments) {
  RowMatrix<double> theta(1, 1), grad(1, 1), twin(1, 1);
  theta << 1.0;
  twin << 1.0;
  grad << 0.5;
  moe::Adam<double> adam({.lr = 0.1}), reference({.lr = 0.1});
  adam.step({moe::view<double>("p", theta)}, {moe::view<double>("p", grad)});
  reference.step({moe::view<double>("p", twin)}, {moe::view<double>("p", grad)});
  adam.set_lr(0.01);
  const double before = theta(0, 0), reference_before = twin(0, 0);
  adam.step({moe::view<double>("p", theta)}, {moe::view<double>("p", grad)});
  reference.step({moe::view<double>("p", twin)}, {moe::view<double>("p", grad)});
  // Same gradient twice: m̂ = g and v̂ = g², so each step moves by lr · g / (|g| + eps).
  EXPECT_NEAR(before - theta(0, 0), 0.01, 1e-8);  // eps = 1e-8 shifts it by ~2e-10
  EXPECT_NEAR(reference_before - twin(0, 0), 0.1, 1e-8);
  EXPECT_EQ(adam.steps(), 2);
  EXPECT_THROW(adam.set_lr(0.0), moe::config_error);
}

}  // namespace
