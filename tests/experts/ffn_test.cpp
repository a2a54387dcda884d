// FfnExpert: y = W2·act(W1·x + b1) + b2 for each activation, against the per-token reference,
// and its contract (row blocks, scratch, errors, seeded initialisation).
#include <moe/concepts.hpp>
#include <moe/experts/ffn.hpp>

#include <moe/testing/gradient_check.hpp>

#include "support/compare.hpp"
#include "support/expert_checks.hpp"
#include "support/reference_experts.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;
using moe::test::nan_scratch;

static_assert(moe::Expert<moe::ReluExpert<float>>);
static_assert(moe::Expert<moe::ReluExpert<double>>);
static_assert(moe::Expert<moe::GeluExpert<float>>);
static_assert(moe::Expert<moe::GeluExpert<double>>);
static_assert(moe::Expert<moe::GeluTanhExpert<float>>);
static_assert(moe::Expert<moe::GeluTanhExpert<double>>);
static_assert(moe::Expert<moe::SiluExpert<float>>);
static_assert(moe::Expert<moe::SiluExpert<double>>);

constexpr Index kTokens = 7, kModel = 8, kHidden = 16, kExperts = 4;

template <class S, class Activation>
moe::FfnExpert<S, Activation> make_expert(bool bias, std::uint64_t seed = 42) {
  return moe::FfnExpert<S, Activation>(
      {.num_experts = kExperts, .d_model = kModel, .d_ff = kHidden, .bias = bias, .seed = seed});
}

template <class S, class Activation>
void check_matches_reference() {
  SCOPED_TRACE(Activation::name);
  // Inputs of scale 3 reach the non-linear part of every activation (not only its linear tail).
  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 1) * S(3);
  for (bool bias : {false, true}) {
    const auto expert = make_expert<S, Activation>(bias);
    EXPECT_EQ(expert.b1().empty(), !bias);
    EXPECT_EQ(expert.b2().empty(), !bias);
    auto scratch = nan_scratch<S>(expert.scratch_size(kTokens));
    for (Index e = 0; e < kExperts; ++e) {
      SCOPED_TRACE(::testing::Message() << "bias = " << bias << ", expert " << e);
      RowMatrix<S> y(kTokens, kModel);
      expert.forward(e, x, y, scratch);
      MOE_EXPECT_CLOSE(S, y, moe::test::reference::ffn_expert(expert, e, x));
    }
  }
}

template <class S>
class FfnExpertTest : public ::testing::Test {};
TYPED_TEST_SUITE(FfnExpertTest, moe::test::Scalars);

TYPED_TEST(FfnExpertTest, ReluMatchesReference) { check_matches_reference<TypeParam, moe::Relu>(); }
TYPED_TEST(FfnExpertTest, GeluMatchesReference) { check_matches_reference<TypeParam, moe::Gelu>(); }
TYPED_TEST(FfnExpertTest, GeluTanhMatchesReference) { check_matches_reference<TypeParam, moe::GeluTanh>(); }
TYPED_TEST(FfnExpertTest, SiluMatchesReference) { check_matches_reference<TypeParam, moe::Silu>(); }

TYPED_TEST(FfnExpertTest, HandComputedRelu) {
  // One hidden unit on, one clipped by relu: y = W2[:, 0] · relu(x0 + 1) + W2[:, 1] · relu(-x0 - 1) + b2.
  using S = TypeParam;
  auto expert = make_expert<S, moe::Relu>(/*bias=*/true);
  const Index e = 3;
  expert.w1()[e].setZero();
  expert.w1()[e](0, 0) = S(1);
  expert.w1()[e](1, 0) = S(-1);
  expert.b1()[e].setZero();
  expert.b1()[e](0, 0) = S(1);
  expert.b1()[e](0, 1) = S(-1);
  RowMatrix<S> x = RowMatrix<S>::Zero(1, kModel);
  x(0, 0) = S(0.5);
  RowMatrix<S> y(1, kModel);
  auto scratch = nan_scratch<S>(expert.scratch_size(1));
  expert.forward(e, x, y, scratch);
  for (Index i = 0; i < kModel; ++i)
    EXPECT_NEAR(y(0, i), S(1.5) * expert.w2()[e](i, 0) + expert.b2()[e](0, i), 1e-6) << i;
}

TYPED_TEST(FfnExpertTest, SingleRowMatchesReferenceAndTheBatchedRow) {
  using S = TypeParam;
  const auto expert = make_expert<S, moe::Gelu>(/*bias=*/true);
  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 3);
  RowMatrix<S> batch(kTokens, kModel);
  auto scratch = nan_scratch<S>(expert.scratch_size(kTokens));
  expert.forward(2, x, batch, scratch);
  for (Index t = 0; t < kTokens; ++t) {
    const RowMatrix<S> row = x.row(t);
    RowMatrix<S> y(1, kModel);
    auto one = nan_scratch<S>(expert.scratch_size(1));
    expert.forward(2, row, y, one);
    MOE_EXPECT_CLOSE(S, y, moe::test::reference::ffn_expert(expert, 2, row));
    MOE_EXPECT_CLOSE(S, y, batch.row(t));
  }
}

TYPED_TEST(FfnExpertTest, RowBlockBindsWithoutCopyAndOnlyItsOutputRowsAreWritten) {
  using S = TypeParam;
  const auto expert = make_expert<S, moe::Silu>(/*bias=*/true);
  const RowMatrix<S> big = moe::test::random_matrix<S>(kTokens + 5, kModel, 4);
  const moe::ConstMatrixRef<S> x = big.middleRows(3, kTokens);
  ASSERT_EQ(x.data(), big.row(3).data()) << "a row block must bind to the Ref without a copy";

  const S sentinel = S(-123.5);
  RowMatrix<S> out = RowMatrix<S>::Constant(kTokens + 4, kModel, sentinel);
  auto scratch = nan_scratch<S>(expert.scratch_size(kTokens));
  expert.forward(1, x, out.middleRows(2, kTokens), scratch);
  const RowMatrix<S> block = big.middleRows(3, kTokens);
  MOE_EXPECT_CLOSE(S, out.middleRows(2, kTokens), moe::test::reference::ffn_expert(expert, 1, block));
  EXPECT_TRUE((out.topRows(2).array() == sentinel).all());
  EXPECT_TRUE((out.bottomRows(2).array() == sentinel).all());
}

TYPED_TEST(FfnExpertTest, ScratchContract) {
  using S = TypeParam;
  const auto expert = make_expert<S, moe::Relu>(/*bias=*/false);
  EXPECT_EQ(expert.scratch_size(0), 0);
  EXPECT_EQ(expert.scratch_size(1), 2 * kHidden);  // pre-activation and activation, kept for backward
  EXPECT_EQ(expert.scratch_size(kTokens), 2 * kTokens * kHidden);

  // Exactly scratch_size(n) is enough (ASan would see an overrun of the vector); a longer buffer
  // is used only up to scratch_size(n), and the caller's tail is left as it was.
  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 5);
  const Index needed = expert.scratch_size(kTokens);
  const S canary = S(31.25);
  std::vector<S> scratch(static_cast<std::size_t>(needed + 9), canary);
  RowMatrix<S> y(kTokens, kModel);
  expert.forward(0, x, y, scratch);
  for (Index i = needed; i < needed + 9; ++i) EXPECT_EQ(scratch[static_cast<std::size_t>(i)], canary) << i;
  MOE_EXPECT_CLOSE(S, y, moe::test::reference::ffn_expert(expert, 0, x));

  // A reused scratch holding the previous call's values gives the same result (overwritten, not accumulated).
  RowMatrix<S> again(kTokens, kModel);
  expert.forward(0, x, again, scratch);
  EXPECT_EQ(again, y);
}

// The layer's fast path, with and without biases: ragged sizes, rows past a tile and hidden units
// past a panel.
TYPED_TEST(FfnExpertTest, PackedPathGivesTheSameBitsPrepackedOrPackedAsUsed) {
  static_assert(moe::PackedExpert<moe::ReluExpert<TypeParam>>);
  for (const bool bias : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "bias = " << bias);
    moe::GeluExpert<TypeParam> expert({.num_experts = 2, .d_model = 40, .d_ff = 70, .bias = bias, .seed = 9});
    moe::test::check_packed_path(expert, 1, moe::kernels::Blocking<TypeParam>::kMR + 3);
  }
}

TYPED_TEST(FfnExpertTest, ZeroRowsIsANoOp) {
  using S = TypeParam;
  const auto expert = make_expert<S, moe::Silu>(/*bias=*/true);
  const RowMatrix<S> x(0, kModel);
  RowMatrix<S> y(0, kModel);
  EXPECT_NO_THROW(expert.forward(0, x, y, {}));
  EXPECT_EQ(y.rows(), 0);
}

TYPED_TEST(FfnExpertTest, BadCallsThrowShapeErrorNamingFunctionAndNumbers) {
  using S = TypeParam;
  using moe::test::expect_throw_containing;
  const auto expert = make_expert<S, moe::Relu>(/*bias=*/true);
  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 6);
  const RowMatrix<S> x_narrow = moe::test::random_matrix<S>(kTokens, kModel - 1, 6);
  const S sentinel = S(9);
  RowMatrix<S> y = RowMatrix<S>::Constant(kTokens, kModel, sentinel);
  RowMatrix<S> y_short(kTokens - 1, kModel), y_wide(kTokens, kModel + 1);
  auto scratch = nan_scratch<S>(expert.scratch_size(kTokens));
  auto small = nan_scratch<S>(expert.scratch_size(kTokens) - 1);

  expect_throw_containing<moe::shape_error>([&] { expert.forward(0, x_narrow, y, scratch); },
                                            {"FfnExpert::forward", "x.cols() = 7", "d_model = 8"});
  expect_throw_containing<moe::shape_error>([&] { expert.forward(0, x, y_short, scratch); },
                                            {"FfnExpert::forward", "y.rows() = 6", "x.rows() = 7"});
  expect_throw_containing<moe::shape_error>([&] { expert.forward(0, x, y_wide, scratch); },
                                            {"FfnExpert::forward", "y.cols() = 9", "d_model = 8"});
  expect_throw_containing<moe::shape_error>([&] { expert.forward(kExperts, x, y, scratch); },
                                            {"FfnExpert::forward", "expert = 4", "num_experts = 4"});
  expect_throw_containing<moe::shape_error>([&] { expert.forward(-1, x, y, scratch); },
                                            {"FfnExpert::forward", "expert = -1", "num_experts = 4"});
  expect_throw_containing<moe::shape_error>(
      [&] { expert.forward(0, x, y, small); },
      {"FfnExpert::forward", "scratch.size() = 223", "scratch_size(n) = 224"});
  expect_throw_containing<moe::shape_error>(
      [&] { expert.forward(0, x, y, {}); }, {"FfnExpert::forward", "scratch.size() = 0", "scratch_size(n) = 224"});
  EXPECT_TRUE((y.array() == sentinel).all()) << "a rejected call must not write its output";
}

TYPED_TEST(FfnExpertTest, SeededInitialisation) {
  using S = TypeParam;
  const auto a = make_expert<S, moe::Silu>(/*bias=*/true, 7), b = make_expert<S, moe::Silu>(/*bias=*/true, 7);
  const auto c = make_expert<S, moe::Silu>(/*bias=*/true, 8);

  // Shapes: w1 [E, d_ff, d_model], w2 [E, d_model, d_ff], b1 [E, 1, d_ff], b2 [E, 1, d_model].
  const struct {
    const moe::ParamBank<S>& bank;
    Index rows, cols, fan_in;
    const moe::ParamBank<S>& same_seed;
    const moe::ParamBank<S>& other_seed;
    const char* name;
  } banks[] = {
      {a.w1(), kHidden, kModel, kModel, b.w1(), c.w1(), "w1"},
      {a.w2(), kModel, kHidden, kHidden, b.w2(), c.w2(), "w2"},
      {a.b1(), 1, kHidden, kModel, b.b1(), c.b1(), "b1"},
      {a.b2(), 1, kModel, kHidden, b.b2(), c.b2(), "b2"},
  };
  for (const auto& p : banks) {
    SCOPED_TRACE(p.name);
    EXPECT_EQ(p.bank.num_experts(), kExperts);
    EXPECT_EQ(p.bank.rows(), p.rows);
    EXPECT_EQ(p.bank.cols(), p.cols);
    EXPECT_EQ(p.bank.all(), p.same_seed.all());
    EXPECT_NE(p.bank.all(), p.other_seed.all());
    const S bound = static_cast<S>(1.0 / std::sqrt(static_cast<double>(p.fan_in)));
    EXPECT_LE(p.bank.all().cwiseAbs().maxCoeff(), bound);
    EXPECT_GT(p.bank.all().maxCoeff(), S(0.25) * bound);
    EXPECT_LT(p.bank.all().minCoeff(), S(-0.25) * bound);
  }
  // The activation does not take part in initialisation: same seed, same weights.
  const auto relu = make_expert<S, moe::Relu>(/*bias=*/true, 7);
  EXPECT_EQ(relu.w1().all(), a.w1().all());
  EXPECT_EQ(relu.w2().all(), a.w2().all());
}

// Backward against central finite differences in double, every activation, with and without biases.
template <class Activation>
void expect_ffn_gradients(bool bias) {
  const moe::testing::GradCheckResult result = moe::testing::check_expert(make_expert<double, Activation>(bias), 5, 3);
  EXPECT_TRUE(result.ok) << Activation::name << (bias ? " with" : " without") << " bias\n" << result.log;
}

TEST(FfnExpertGrad, BackwardUsesTheScratchItAsksForAndNoMore) {
  // d_model 40 and d_ff 70 span several panels at any packet width: two threads split each product.
  moe::test::check_backward_scratch(
      moe::GeluExpert<float>({.num_experts = 2, .d_model = 40, .d_ff = 70, .bias = true, .seed = 9}), 1, kTokens);
}

TEST(FfnExpertGrad, EveryActivationMatchesFiniteDifferences) {
  static_assert(moe::TrainableExpert<moe::ReluExpert<float>>);
  for (const bool bias : {false, true}) {
    expect_ffn_gradients<moe::Relu>(bias);
    expect_ffn_gradients<moe::Gelu>(bias);
    expect_ffn_gradients<moe::GeluTanh>(bias);
    expect_ffn_gradients<moe::Silu>(bias);
  }
}

}  // namespace
