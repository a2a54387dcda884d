// LinearExpert: y = x·W_eᵀ (+ b_e) against the per-token reference, and its contract.
#include <moe/concepts.hpp>
#include <moe/experts/linear.hpp>

#include <moe/testing/gradient_check.hpp>

#include "support/compare.hpp"
#include "support/reference_experts.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;

static_assert(moe::Expert<moe::LinearExpert<float>>);
static_assert(moe::Expert<moe::LinearExpert<double>>);

constexpr Index kTokens = 7, kModel = 8, kExperts = 4;

template <class S>
moe::LinearExpert<S> make_expert(bool bias, std::uint64_t seed = 42) {
  return moe::LinearExpert<S>({.num_experts = kExperts, .d_model = kModel, .bias = bias, .seed = seed});
}

template <class S>
class LinearExpertTest : public ::testing::Test {};
TYPED_TEST_SUITE(LinearExpertTest, moe::test::Scalars);

TYPED_TEST(LinearExpertTest, MatchesReferenceForEveryExpertWithAndWithoutBias) {
  using S = TypeParam;
  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 1);
  for (bool bias : {false, true}) {
    const auto expert = make_expert<S>(bias);
    for (Index e = 0; e < kExperts; ++e) {
      SCOPED_TRACE(::testing::Message() << "bias = " << bias << ", expert " << e);
      RowMatrix<S> y(kTokens, kModel);
      expert.forward(e, x, y, {});
      MOE_EXPECT_CLOSE(S, y, moe::test::reference::linear_expert(expert, e, x));
    }
  }
}

TYPED_TEST(LinearExpertTest, WeightsAreOutByIn) {
  // torch.nn.Linear layout: W(i, j) connects input j to output i. A cyclic shift W(i, (i+1) % d) = 1
  // gives y[i] = x[(i+1) % d] exactly; the transposed layout would shift the other way.
  using S = TypeParam;
  auto expert = make_expert<S>(/*bias=*/true);
  const Index e = 2;
  expert.weight()[e].setZero();
  for (Index i = 0; i < kModel; ++i) expert.weight()[e](i, (i + 1) % kModel) = S(1);
  for (Index i = 0; i < kModel; ++i) expert.bias()[e](0, i) = S(i);
  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 2);
  RowMatrix<S> y(kTokens, kModel);
  expert.forward(e, x, y, {});
  for (Index t = 0; t < kTokens; ++t)
    for (Index i = 0; i < kModel; ++i) EXPECT_EQ(y(t, i), x(t, (i + 1) % kModel) + S(i)) << t << ", " << i;
}

TYPED_TEST(LinearExpertTest, SingleRowMatchesReferenceAndTheBatchedRow) {
  using S = TypeParam;
  const auto expert = make_expert<S>(/*bias=*/true);
  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 3);
  RowMatrix<S> batch(kTokens, kModel);
  expert.forward(1, x, batch, {});
  for (Index t = 0; t < kTokens; ++t) {
    const RowMatrix<S> row = x.row(t);
    RowMatrix<S> y(1, kModel);
    expert.forward(1, row, y, {});
    MOE_EXPECT_CLOSE(S, y, moe::test::reference::linear_expert(expert, 1, row));
    MOE_EXPECT_CLOSE(S, y, batch.row(t));
  }
}

TYPED_TEST(LinearExpertTest, RowBlockBindsWithoutCopyAndOnlyItsOutputRowsAreWritten) {
  using S = TypeParam;
  const auto expert = make_expert<S>(/*bias=*/true);
  const RowMatrix<S> big = moe::test::random_matrix<S>(kTokens + 5, kModel, 4);
  const moe::ConstMatrixRef<S> x = big.middleRows(3, kTokens);
  ASSERT_EQ(x.data(), big.row(3).data()) << "a row block must bind to the Ref without a copy";

  const S sentinel = S(-123.5);
  RowMatrix<S> out = RowMatrix<S>::Constant(kTokens + 4, kModel, sentinel);
  expert.forward(3, x, out.middleRows(2, kTokens), {});
  const RowMatrix<S> block = big.middleRows(3, kTokens);
  MOE_EXPECT_CLOSE(S, out.middleRows(2, kTokens), moe::test::reference::linear_expert(expert, 3, block));
  EXPECT_TRUE((out.topRows(2).array() == sentinel).all());
  EXPECT_TRUE((out.bottomRows(2).array() == sentinel).all());
}

TYPED_TEST(LinearExpertTest, ZeroRowsIsANoOp) {
  using S = TypeParam;
  const auto expert = make_expert<S>(/*bias=*/true);
  const RowMatrix<S> x(0, kModel);
  RowMatrix<S> y(0, kModel);
  EXPECT_NO_THROW(expert.forward(0, x, y, {}));
  EXPECT_EQ(y.rows(), 0);
}

TYPED_TEST(LinearExpertTest, NeedsNoScratch) {
  using S = TypeParam;
  const auto expert = make_expert<S>(/*bias=*/false);
  EXPECT_EQ(expert.scratch_size(0), 0);
  EXPECT_EQ(expert.scratch_size(1), 0);
  EXPECT_EQ(expert.scratch_size(kTokens), 0);
  // A scratch span that is passed anyway is left alone.
  std::vector<S> scratch(16, S(7));
  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 5);
  RowMatrix<S> y(kTokens, kModel), y_no_scratch(kTokens, kModel);
  expert.forward(0, x, y, scratch);
  expert.forward(0, x, y_no_scratch);
  EXPECT_EQ(y, y_no_scratch);
  for (S v : scratch) EXPECT_EQ(v, S(7));
}

TYPED_TEST(LinearExpertTest, BadCallsThrowShapeErrorNamingFunctionAndNumbers) {
  using S = TypeParam;
  using moe::test::expect_throw_containing;
  const auto expert = make_expert<S>(/*bias=*/false);
  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 6);
  const RowMatrix<S> x_narrow = moe::test::random_matrix<S>(kTokens, kModel - 1, 6);
  const S sentinel = S(9);
  RowMatrix<S> y = RowMatrix<S>::Constant(kTokens, kModel, sentinel);
  RowMatrix<S> y_short(kTokens - 1, kModel), y_wide(kTokens, kModel + 1);

  expect_throw_containing<moe::shape_error>([&] { expert.forward(0, x_narrow, y, {}); },
                                            {"LinearExpert::forward", "x.cols() = 7", "d_model = 8"});
  expect_throw_containing<moe::shape_error>([&] { expert.forward(0, x, y_short, {}); },
                                            {"LinearExpert::forward", "y.rows() = 6", "x.rows() = 7"});
  expect_throw_containing<moe::shape_error>([&] { expert.forward(0, x, y_wide, {}); },
                                            {"LinearExpert::forward", "y.cols() = 9", "d_model = 8"});
  expect_throw_containing<moe::shape_error>([&] { expert.forward(kExperts, x, y, {}); },
                                            {"LinearExpert::forward", "expert = 4", "num_experts = 4"});
  expect_throw_containing<moe::shape_error>([&] { expert.forward(-1, x, y, {}); },
                                            {"LinearExpert::forward", "expert = -1", "num_experts = 4"});
  EXPECT_TRUE((y.array() == sentinel).all()) << "a rejected call must not write its output";
}

TYPED_TEST(LinearExpertTest, SeededInitialisation) {
  using S = TypeParam;
  const auto a = make_expert<S>(/*bias=*/true, 7), b = make_expert<S>(/*bias=*/true, 7);
  const auto c = make_expert<S>(/*bias=*/true, 8);
  ASSERT_EQ(a.weight().num_experts(), kExperts);
  ASSERT_EQ(a.weight().rows(), kModel);
  ASSERT_EQ(a.weight().cols(), kModel);
  ASSERT_EQ(a.bias().num_experts(), kExperts);
  ASSERT_EQ(a.bias().rows(), 1);
  ASSERT_EQ(a.bias().cols(), kModel);
  EXPECT_EQ(a.weight().all(), b.weight().all());
  EXPECT_EQ(a.bias().all(), b.bias().all());
  EXPECT_NE(a.weight().all(), c.weight().all());
  EXPECT_NE(a.bias().all(), c.bias().all());

  // U(±1/√fan_in) with fan_in = d_model for both, as torch.nn.Linear.
  const S bound = static_cast<S>(1.0 / std::sqrt(static_cast<double>(kModel)));
  EXPECT_LE(a.weight().all().cwiseAbs().maxCoeff(), bound);
  EXPECT_LE(a.bias().all().cwiseAbs().maxCoeff(), bound);
  // ... and the draws use the range: not all tiny, not all one sign.
  EXPECT_GT(a.weight().all().maxCoeff(), S(0.5) * bound);
  EXPECT_LT(a.weight().all().minCoeff(), S(-0.5) * bound);
  // Each expert gets its own draws.
  EXPECT_NE(a.weight()[0], a.weight()[1]);
}

TYPED_TEST(LinearExpertTest, WithoutBiasTheBiasBankIsEmpty) {
  using S = TypeParam;
  const auto expert = make_expert<S>(/*bias=*/false);
  EXPECT_TRUE(expert.bias().empty());
  EXPECT_EQ(expert.bias().size(), 0);
  // The weights do not depend on whether biases are drawn after them.
  EXPECT_EQ(expert.weight().all(), make_expert<S>(/*bias=*/true).weight().all());
}

// Backward against central finite differences in double.
TEST(LinearExpertGrad, MatchesFiniteDifferencesWithAndWithoutBias) {
  static_assert(moe::TrainableExpert<moe::LinearExpert<double>>);
  for (const bool bias : {false, true}) {
    const moe::testing::GradCheckResult result = moe::testing::check_expert(make_expert<double>(bias), 5, 4);
    EXPECT_TRUE(result.ok) << "bias = " << bias << "\n" << result.log;
  }
}

}  // namespace
