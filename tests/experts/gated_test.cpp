// GatedExpert (SwiGLU, GeGLU): y = W2·(act(W1·x) ⊙ W3·x) against the per-token reference, and its
// contract (row blocks, scratch, errors, seeded initialisation).
#include <moe/concepts.hpp>
#include <moe/experts/gated.hpp>

#include <moe/testing/gradient_check.hpp>

#include "support/compare.hpp"
#include "support/expert_checks.hpp"
#include "support/reference_experts.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;
using moe::test::nan_scratch;

static_assert(moe::Expert<moe::SwiGluExpert<float>>);
static_assert(moe::Expert<moe::SwiGluExpert<double>>);
static_assert(moe::Expert<moe::GeGluExpert<float>>);
static_assert(moe::Expert<moe::GeGluExpert<double>>);
static_assert(std::is_same_v<moe::SwiGluExpert<float>, moe::GatedExpert<float, moe::Silu>>);
static_assert(std::is_same_v<moe::GeGluExpert<float>, moe::GatedExpert<float, moe::Gelu>>);

constexpr Index kTokens = 7, kModel = 8, kHidden = 16, kExperts = 4;

template <class S, class Activation>
moe::GatedExpert<S, Activation> make_expert(std::uint64_t seed = 42) {
  return moe::GatedExpert<S, Activation>(
      {.num_experts = kExperts, .d_model = kModel, .d_ff = kHidden, .seed = seed});
}

template <class S, class Activation>
void check_matches_reference() {
  SCOPED_TRACE(Activation::name);
  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 1) * S(3);
  const auto expert = make_expert<S, Activation>();
  auto scratch = nan_scratch<S>(expert.scratch_size(kTokens));
  for (Index e = 0; e < kExperts; ++e) {
    SCOPED_TRACE(::testing::Message() << "expert " << e);
    RowMatrix<S> y(kTokens, kModel);
    expert.forward(e, x, y, scratch);
    MOE_EXPECT_CLOSE(S, y, moe::test::reference::gated_expert(expert, e, x));
  }
}

template <class S>
class GatedExpertTest : public ::testing::Test {};
TYPED_TEST_SUITE(GatedExpertTest, moe::test::Scalars);

TYPED_TEST(GatedExpertTest, SwiGluMatchesReference) { check_matches_reference<TypeParam, moe::Silu>(); }
TYPED_TEST(GatedExpertTest, GeGluMatchesReference) { check_matches_reference<TypeParam, moe::Gelu>(); }

TYPED_TEST(GatedExpertTest, W1IsTheActivatedBranchAndW3TheUpProjection) {
  // Mixtral's naming: with one hidden unit h0 = silu(a) · b, where a = w1[0]·x and b = w3[0]·x.
  // Swapping the roles would give silu(b) · a, which differs for a ≠ b.
  using S = TypeParam;
  auto expert = make_expert<S, moe::Silu>();
  const Index e = 1;
  expert.w1()[e].setZero();
  expert.w3()[e].setZero();
  expert.w1()[e](0, 0) = S(2);  // a = 2·x0 = 1
  expert.w3()[e](0, 1) = S(3);  // b = 3·x1 = -1.5
  RowMatrix<S> x = RowMatrix<S>::Zero(1, kModel);
  x(0, 0) = S(0.5);
  x(0, 1) = S(-0.5);
  RowMatrix<S> y(1, kModel);
  auto scratch = nan_scratch<S>(expert.scratch_size(1));
  expert.forward(e, x, y, scratch);
  const double h0 = moe::test::reference::silu(1.0) * -1.5;
  for (Index i = 0; i < kModel; ++i)
    EXPECT_NEAR(y(0, i), h0 * static_cast<double>(expert.w2()[e](i, 0)), 1e-6) << i;
}

TYPED_TEST(GatedExpertTest, SingleRowMatchesReferenceAndTheBatchedRow) {
  using S = TypeParam;
  const auto expert = make_expert<S, moe::Silu>();
  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 3);
  RowMatrix<S> batch(kTokens, kModel);
  auto scratch = nan_scratch<S>(expert.scratch_size(kTokens));
  expert.forward(3, x, batch, scratch);
  for (Index t = 0; t < kTokens; ++t) {
    const RowMatrix<S> row = x.row(t);
    RowMatrix<S> y(1, kModel);
    auto one = nan_scratch<S>(expert.scratch_size(1));
    expert.forward(3, row, y, one);
    MOE_EXPECT_CLOSE(S, y, moe::test::reference::gated_expert(expert, 3, row));
    MOE_EXPECT_CLOSE(S, y, batch.row(t));
  }
}

TYPED_TEST(GatedExpertTest, RowBlockBindsWithoutCopyAndOnlyItsOutputRowsAreWritten) {
  using S = TypeParam;
  const auto expert = make_expert<S, moe::Gelu>();
  const RowMatrix<S> big = moe::test::random_matrix<S>(kTokens + 5, kModel, 4);
  const moe::ConstMatrixRef<S> x = big.middleRows(3, kTokens);
  ASSERT_EQ(x.data(), big.row(3).data()) << "a row block must bind to the Ref without a copy";

  const S sentinel = S(-123.5);
  RowMatrix<S> out = RowMatrix<S>::Constant(kTokens + 4, kModel, sentinel);
  auto scratch = nan_scratch<S>(expert.scratch_size(kTokens));
  expert.forward(0, x, out.middleRows(2, kTokens), scratch);
  const RowMatrix<S> block = big.middleRows(3, kTokens);
  MOE_EXPECT_CLOSE(S, out.middleRows(2, kTokens), moe::test::reference::gated_expert(expert, 0, block));
  EXPECT_TRUE((out.topRows(2).array() == sentinel).all());
  EXPECT_TRUE((out.bottomRows(2).array() == sentinel).all());
}

TYPED_TEST(GatedExpertTest, ScratchContract) {
  using S = TypeParam;
  const auto expert = make_expert<S, moe::Silu>();
  EXPECT_EQ(expert.scratch_size(0), 0);
  EXPECT_EQ(expert.scratch_size(1), 3 * kHidden);  // h1, h3 and h, kept for backward
  EXPECT_EQ(expert.scratch_size(kTokens), 3 * kTokens * kHidden);

  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 5);
  const Index needed = expert.scratch_size(kTokens);
  const S canary = S(31.25);
  std::vector<S> scratch(static_cast<std::size_t>(needed + 9), canary);
  RowMatrix<S> y(kTokens, kModel);
  expert.forward(2, x, y, scratch);
  for (Index i = needed; i < needed + 9; ++i) EXPECT_EQ(scratch[static_cast<std::size_t>(i)], canary) << i;
  MOE_EXPECT_CLOSE(S, y, moe::test::reference::gated_expert(expert, 2, x));

  RowMatrix<S> again(kTokens, kModel);
  expert.forward(2, x, again, scratch);
  EXPECT_EQ(again, y);
}

TYPED_TEST(GatedExpertTest, ZeroRowsIsANoOp) {
  using S = TypeParam;
  const auto expert = make_expert<S, moe::Silu>();
  const RowMatrix<S> x(0, kModel);
  RowMatrix<S> y(0, kModel);
  EXPECT_NO_THROW(expert.forward(0, x, y, {}));
  EXPECT_EQ(y.rows(), 0);
}

TYPED_TEST(GatedExpertTest, BackwardOfZeroRowsLeavesTheGradientsAlone) {
  using S = TypeParam;
  const auto expert = make_expert<S, moe::Silu>();
  auto grads = expert.make_gradients();
  for (auto* bank : {&grads.w1(), &grads.w2(), &grads.w3()}) bank->all().setConstant(S(2));
  const RowMatrix<S> x(0, kModel), d_y(0, kModel);
  RowMatrix<S> d_x(0, kModel);
  std::vector<S> saved, scratch(static_cast<std::size_t>(expert.backward_scratch_size(0)));
  expert.backward(1, x, saved, d_y, d_x, grads, scratch);
  for (const auto* bank : {&grads.w1(), &grads.w2(), &grads.w3()}) EXPECT_TRUE((bank->all().array() == S(2)).all());
}

TYPED_TEST(GatedExpertTest, BadCallsThrowShapeErrorNamingFunctionAndNumbers) {
  using S = TypeParam;
  using moe::test::expect_throw_containing;
  const auto expert = make_expert<S, moe::Silu>();
  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 6);
  const RowMatrix<S> x_narrow = moe::test::random_matrix<S>(kTokens, kModel - 1, 6);
  const S sentinel = S(9);
  RowMatrix<S> y = RowMatrix<S>::Constant(kTokens, kModel, sentinel);
  RowMatrix<S> y_short(kTokens - 1, kModel), y_wide(kTokens, kModel + 1);
  auto scratch = nan_scratch<S>(expert.scratch_size(kTokens));
  // Half of the three blocks is not enough.
  auto half = nan_scratch<S>(expert.scratch_size(kTokens) / 2);

  expect_throw_containing<moe::shape_error>([&] { expert.forward(0, x_narrow, y, scratch); },
                                            {"GatedExpert::forward", "x.cols() = 7", "d_model = 8"});
  expect_throw_containing<moe::shape_error>([&] { expert.forward(0, x, y_short, scratch); },
                                            {"GatedExpert::forward", "y.rows() = 6", "x.rows() = 7"});
  expect_throw_containing<moe::shape_error>([&] { expert.forward(0, x, y_wide, scratch); },
                                            {"GatedExpert::forward", "y.cols() = 9", "d_model = 8"});
  expect_throw_containing<moe::shape_error>([&] { expert.forward(kExperts, x, y, scratch); },
                                            {"GatedExpert::forward", "expert = 4", "num_experts = 4"});
  expect_throw_containing<moe::shape_error>([&] { expert.forward(-1, x, y, scratch); },
                                            {"GatedExpert::forward", "expert = -1", "num_experts = 4"});
  expect_throw_containing<moe::shape_error>(
      [&] { expert.forward(0, x, y, half); },
      {"GatedExpert::forward", "scratch.size() = 168", "scratch_size(n) = 336"});
  EXPECT_TRUE((y.array() == sentinel).all()) << "a rejected call must not write its output";
}

TYPED_TEST(GatedExpertTest, SeededInitialisation) {
  using S = TypeParam;
  const auto a = make_expert<S, moe::Silu>(7), b = make_expert<S, moe::Silu>(7);
  const auto c = make_expert<S, moe::Silu>(8);

  // Shapes: w1, w3 [E, d_ff, d_model]; w2 [E, d_model, d_ff].
  const struct {
    const moe::ParamBank<S>& bank;
    Index rows, cols, fan_in;
    const moe::ParamBank<S>& same_seed;
    const moe::ParamBank<S>& other_seed;
    const char* name;
  } banks[] = {
      {a.w1(), kHidden, kModel, kModel, b.w1(), c.w1(), "w1"},
      {a.w3(), kHidden, kModel, kModel, b.w3(), c.w3(), "w3"},
      {a.w2(), kModel, kHidden, kHidden, b.w2(), c.w2(), "w2"},
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
  // w1 and w3 have the same shape but are drawn separately.
  EXPECT_NE(a.w1().all(), a.w3().all());
}

// The layer's fast path: ragged sizes, rows past a tile and hidden units past a panel.
TYPED_TEST(GatedExpertTest, PackedPathGivesTheSameBitsPrepackedOrPackedAsUsed) {
  moe::SwiGluExpert<TypeParam> expert({.num_experts = 2, .d_model = 40, .d_ff = 70, .seed = 9});
  moe::test::check_packed_path(expert, 1, moe::kernels::Blocking<TypeParam>::kMR + 3);
}

// Backward against central finite differences in double (moe::testing::check_expert: d_x and
// every parameter of every expert, relative error ‖a − n‖/‖a + n‖ ≤ 1e-6).
TEST(GatedExpertGrad, SwiGluMatchesFiniteDifferences) {
  const moe::testing::GradCheckResult result = moe::testing::check_expert(make_expert<double, moe::Silu>(), 5, 1);
  EXPECT_TRUE(result.ok) << result.log;
}

TEST(GatedExpertGrad, GeGluMatchesFiniteDifferences) {
  const moe::testing::GradCheckResult result = moe::testing::check_expert(make_expert<double, moe::Gelu>(), 5, 2);
  EXPECT_TRUE(result.ok) << result.log;
}

TEST(GatedExpertGrad, BackwardUsesTheScratchItAsksForAndNoMore) {
  // d_model 40 and d_ff 70 span several panels at any packet width: two threads split each product.
  moe::test::check_backward_scratch(moe::SwiGluExpert<float>({.num_experts = 2, .d_model = 40, .d_ff = 70, .seed = 9}),
                                    1, kTokens);
  static_assert(moe::TrainableExpert<moe::SwiGluExpert<float>>);
  static_assert(moe::PackedExpert<moe::SwiGluExpert<float>>);
}

}  // namespace
