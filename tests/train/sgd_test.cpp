// Sgd against a plain double loop of torch.optim.SGD's formulas, hand-computed steps, a quadratic,
// and the config errors. The step contract (shapes, state, non-finite gradients) is checked for
// every optimizer in optimizer_contract_test.cpp.
#include <moe/train/sgd.hpp>

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
  RowMatrix<S> w = moe::test::random_matrix<S>(3, 4, 11), b = moe::test::random_matrix<S>(1, 5, 12);
  RowMatrix<S> d_w = RowMatrix<S>::Zero(3, 4), d_b = RowMatrix<S>::Zero(1, 5);

  moe::ParameterList<S> params() { return {moe::view<S>("w", w), moe::view<S>("b", b)}; }
  moe::ParameterList<S> grads() { return {moe::view<S>("w", d_w), moe::view<S>("b", d_b)}; }
  // Copies into the existing storage: a move assignment would leave earlier views dangling.
  void draw_gradients(std::uint64_t seed) {
    d_w.noalias() = moe::test::random_matrix<S>(3, 4, seed);
    d_b.noalias() = moe::test::random_matrix<S>(1, 5, seed + 1000);
  }
};

// torch.optim.SGD._single_tensor_sgd for one tensor, in double, written the way torch writes it.
struct ReferenceSgd {
  moe::SgdConfig config;
  std::vector<RowMatrix<double>> buffers;  // empty entry: "buf is None"

  void step(std::vector<RowMatrix<double>*> params, std::vector<RowMatrix<double>> grads) {
    buffers.resize(params.size());
    for (std::size_t i = 0; i < params.size(); ++i) {
      RowMatrix<double>& param = *params[i];
      RowMatrix<double> d_p = grads[i];
      if (config.weight_decay != 0) d_p += config.weight_decay * param;
      if (config.momentum != 0) {
        if (buffers[i].size() == 0) {
          buffers[i] = d_p;
        } else {
          buffers[i] = config.momentum * buffers[i] + d_p;
        }
        if (config.nesterov) {
          d_p += config.momentum * buffers[i];
        } else {
          d_p = buffers[i];
        }
      }
      param -= config.lr * d_p;
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
class SgdTest : public ::testing::Test {};
TYPED_TEST_SUITE(SgdTest, moe::test::Scalars);

TYPED_TEST(SgdTest, KnownNumbers) {
  using S = TypeParam;
  RowMatrix<S> theta = RowMatrix<S>::Constant(1, 1, S(1)), grad = RowMatrix<S>::Constant(1, 1, S(2));
  const moe::ParameterList<S> params{moe::view<S>("theta", theta)}, grads{moe::view<S>("theta", grad)};

  moe::Sgd<S> sgd({.lr = 0.1});
  sgd.step(params, grads);
  EXPECT_NEAR(theta(0, 0), 0.8, 1e-7);
  EXPECT_EQ(grad(0, 0), S(2));  // gradients are read, not changed
  EXPECT_EQ(sgd.steps(), 1);

  // Nesterov, momentum 0.5: step 1: buf = 2, θ = 1 − 0.1·(2 + 0.5·2) = 0.7;
  //                         step 2: buf = 0.5·2 + 2 = 3, θ = 0.7 − 0.1·(2 + 0.5·3) = 0.35.
  theta(0, 0) = S(1);
  moe::Sgd<S> nesterov({.lr = 0.1, .momentum = 0.5, .nesterov = true});
  nesterov.step(params, grads);
  EXPECT_NEAR(theta(0, 0), 0.7, 1e-7);
  nesterov.step(params, grads);
  EXPECT_NEAR(theta(0, 0), 0.35, 1e-7);

  // Momentum 0.9 with weight decay 0.5: step 1: g = 2 + 0.5·1 = 2.5, buf = 2.5, θ = 0.75;
  //                                     step 2: g = 2 + 0.375, buf = 0.9·2.5 + 2.375 = 4.625, θ = 0.2875.
  theta(0, 0) = S(1);
  moe::Sgd<S> heavy({.lr = 0.1, .momentum = 0.9, .weight_decay = 0.5});
  heavy.step(params, grads);
  EXPECT_NEAR(theta(0, 0), 0.75, 1e-7);
  heavy.step(params, grads);
  EXPECT_NEAR(theta(0, 0), 0.2875, 1e-7);
}

TYPED_TEST(SgdTest, MatchesTheTorchFormulasOverSeveralSteps) {
  using S = TypeParam;
  const std::vector<moe::SgdConfig> configs{
      {.lr = 0.1},
      {.lr = 0.05, .momentum = 0.9},
      {.lr = 0.05, .momentum = 0.9, .nesterov = true},
      {.lr = 0.2, .weight_decay = 0.1},
      {.lr = 0.03, .momentum = 0.7, .weight_decay = 0.01, .nesterov = true},
  };
  for (const auto& config : configs) {
    SCOPED_TRACE(::testing::Message() << "lr " << config.lr << " momentum " << config.momentum << " wd "
                                      << config.weight_decay << " nesterov " << config.nesterov);
    Problem<S> p;
    RowMatrix<double> w = p.w.template cast<double>(), b = p.b.template cast<double>();
    moe::Sgd<S> sgd(config);
    ReferenceSgd reference{config, {}};
    for (int step = 0; step < 6; ++step) {
      p.draw_gradients(100 + step);
      sgd.step(p.params(), p.grads());
      reference.step({&w, &b}, {p.d_w.template cast<double>(), p.d_b.template cast<double>()});
      MOE_EXPECT_CLOSE(S, p.w, w);
      MOE_EXPECT_CLOSE(S, p.b, b);
    }
    EXPECT_EQ(sgd.steps(), 6);
  }
}

TYPED_TEST(SgdTest, FirstMomentumStepIsAPlainStep) {
  // torch starts the buffer as a copy of the gradient, so the first step ignores momentum.
  using S = TypeParam;
  Problem<S> plain, heavy;
  plain.draw_gradients(7);
  heavy.draw_gradients(7);
  moe::Sgd<S>({.lr = 0.1}).step(plain.params(), plain.grads());
  moe::Sgd<S>({.lr = 0.1, .momentum = 0.9}).step(heavy.params(), heavy.grads());
  EXPECT_EQ(heavy.w, plain.w);
  EXPECT_EQ(heavy.b, plain.b);
}

TYPED_TEST(SgdTest, MinimisesAQuadratic) {
  // ½‖θ − c‖² has gradient θ − c; gradients are zeroed and accumulated as a training loop would.
  using S = TypeParam;
  const RowMatrix<S> start = moe::test::random_matrix<S>(1, 10, 21);
  RowMatrix<S> theta = start, grad(1, 10);
  const RowMatrix<S> c = moe::test::random_matrix<S>(1, 10, 22);
  const moe::ParameterList<S> params{moe::view<S>("theta", theta)}, grads{moe::view<S>("theta", grad)};
  grad.setConstant(S(123));
  for (const bool nesterov : {false, true}) {
    theta = start;  // a copy into the same storage: the views stay valid
    moe::Sgd<S> sgd({.lr = 0.1, .momentum = 0.9, .nesterov = nesterov});
    for (int step = 0; step < 300; ++step) {
      moe::zero(grads);
      grad += theta - c;
      sgd.step(params, grads);
    }
    EXPECT_LT((theta - c).norm(), 1e-4) << "nesterov " << nesterov;
  }
}

TYPED_TEST(SgdTest, ConfigErrorsNameTheOptimizerAndTheNumber) {
  using S = TypeParam;
  expect_error_naming([] { moe::Sgd<S>({.lr = -0.5}); }, {"Sgd", "lr = -0.5", "> 0"});
  expect_error_naming([] { moe::Sgd<S>({.lr = 0}); }, {"Sgd", "lr = 0"});
  expect_error_naming([] { moe::Sgd<S>(moe::SgdConfig{}); }, {"Sgd", "lr = 0"});
  expect_error_naming([] { moe::Sgd<S>({.lr = std::numeric_limits<double>::infinity()}); }, {"Sgd", "lr = inf"});
  expect_error_naming([] { moe::Sgd<S>({.lr = 0.1, .momentum = -0.25}); }, {"Sgd", "momentum = -0.25"});
  expect_error_naming([] { moe::Sgd<S>({.lr = 0.1, .weight_decay = -2}); }, {"Sgd", "weight_decay = -2"});
  expect_error_naming([] { moe::Sgd<S>({.lr = 0.1, .nesterov = true}); }, {"Sgd", "nesterov", "momentum = 0"});
  EXPECT_THROW(moe::Sgd<S>({.lr = -1}), moe::config_error);
  EXPECT_NO_THROW((moe::Sgd<S>({.lr = 1e-3, .momentum = 0.99, .weight_decay = 0, .nesterov = true})));
}

}  // namespace
