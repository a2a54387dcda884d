// Score kernels: softmax_rows, sigmoid, log_sum_exp and softmax_inplace against plain loops in
// double, including logits far outside exp's range.
#include <moe/gating/scoring.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;

constexpr Index kTokens = 7, kExperts = 4;

// p_e = exp(z_e - c) / Σ_j exp(z_j - c); any c gives the same p, c = the row's first entry keeps
// moderate rows exact and is not the library's choice (the max).
template <class S>
RowMatrix<double> reference_softmax(const RowMatrix<S>& z) {
  RowMatrix<double> p(z.rows(), z.cols());
  for (Index t = 0; t < z.rows(); ++t) {
    const double c = static_cast<double>(z(t, 0));
    double sum = 0.0;
    for (Index e = 0; e < z.cols(); ++e) sum += std::exp(static_cast<double>(z(t, e)) - c);
    for (Index e = 0; e < z.cols(); ++e) p(t, e) = std::exp(static_cast<double>(z(t, e)) - c) / sum;
  }
  return p;
}

template <class S>
class SoftmaxTest : public ::testing::Test {};
TYPED_TEST_SUITE(SoftmaxTest, moe::test::Scalars);

TYPED_TEST(SoftmaxTest, RowsMatchReference) {
  using S = TypeParam;
  const RowMatrix<S> logits = moe::test::random_matrix<S>(kTokens, kExperts, 1) * S(4);
  RowMatrix<S> scores = RowMatrix<S>::Constant(kTokens, kExperts, std::numeric_limits<S>::quiet_NaN());
  moe::scoring::softmax_rows<S>(logits, scores);
  MOE_EXPECT_CLOSE(S, scores, reference_softmax(logits));
  for (Index t = 0; t < kTokens; ++t) {
    EXPECT_NEAR(scores.row(t).sum(), S(1), 10 * std::numeric_limits<S>::epsilon()) << "token " << t;
    EXPECT_GT(scores.row(t).minCoeff(), S(0)) << "token " << t;
  }
}

TYPED_TEST(SoftmaxTest, OrderFollowsLogitsAndEqualLogitsGiveEqualScores) {
  using S = TypeParam;
  RowMatrix<S> logits(1, kExperts);
  logits << S(0.5), S(-1), S(2), S(0.5);
  RowMatrix<S> scores(1, kExperts);
  moe::scoring::softmax_rows<S>(logits, scores);
  EXPECT_EQ(scores(0, 0), scores(0, 3));
  EXPECT_GT(scores(0, 2), scores(0, 0));
  EXPECT_GT(scores(0, 0), scores(0, 1));
  // Uniform logits: every expert gets 1/E.
  RowMatrix<S> uniform = RowMatrix<S>::Constant(1, kExperts, S(3));
  moe::scoring::softmax_rows<S>(uniform, scores);
  for (Index e = 0; e < kExperts; ++e) EXPECT_NEAR(scores(0, e), S(1) / S(kExperts), 1e-7);
}

TYPED_TEST(SoftmaxTest, LargeLogitsAreStable) {
  // exp(1000) overflows both precisions; softmax is shift-invariant, so these rows equal the
  // softmax of the same rows shifted to moderate values.
  using S = TypeParam;
  RowMatrix<S> logits(3, kExperts), shifted(3, kExperts);
  logits << S(1000), S(999), S(998), S(1000),     //
      S(-1000), S(-1001), S(-1000), S(-1003),     //
      S(1000), S(-1000), S(0), S(1000);
  shifted << S(2), S(1), S(0), S(2),   //
      S(3), S(2), S(3), S(0),          //
      S(1000), S(-1000), S(0), S(1000);
  RowMatrix<S> scores(3, kExperts);
  moe::scoring::softmax_rows<S>(logits, scores);
  ASSERT_TRUE(scores.allFinite());
  MOE_EXPECT_CLOSE(S, scores.topRows(2), reference_softmax<S>(shifted.topRows(2)));
  EXPECT_EQ(scores(2, 0), S(0.5));
  EXPECT_EQ(scores(2, 3), S(0.5));
  // exp(-1000), exp(-2000) are 0 up to underflow. Eigen's vectorised exp clamps its argument and
  // returns about the smallest normal number there, its scalar exp returns 0: accept both.
  EXPECT_GE(scores(2, 1), S(0));
  EXPECT_LE(scores(2, 1), std::numeric_limits<S>::min());
  EXPECT_GE(scores(2, 2), S(0));
  EXPECT_LE(scores(2, 2), std::numeric_limits<S>::min());
}

TYPED_TEST(SoftmaxTest, InPlaceAndOnARowBlock) {
  using S = TypeParam;
  const RowMatrix<S> logits = moe::test::random_matrix<S>(kTokens, kExperts, 2) * S(4);
  RowMatrix<S> expected(kTokens, kExperts);
  moe::scoring::softmax_rows<S>(logits, expected);

  RowMatrix<S> in_place = logits;  // logits and scores may alias
  moe::scoring::softmax_rows<S>(in_place, in_place);
  EXPECT_EQ(in_place, expected);

  RowMatrix<S> block = RowMatrix<S>::Zero(kTokens + 2, kExperts);
  moe::scoring::softmax_rows<S>(logits.middleRows(2, 3), block.middleRows(1, 3));
  EXPECT_EQ(RowMatrix<S>(block.middleRows(1, 3)), RowMatrix<S>(expected.middleRows(2, 3)));
  EXPECT_TRUE(block.row(0).isZero(0));
  EXPECT_TRUE(block.bottomRows(kTokens + 2 - 4).isZero(0));
}

TYPED_TEST(SoftmaxTest, ZeroTokens) {
  using S = TypeParam;
  const RowMatrix<S> logits(0, kExperts);
  RowMatrix<S> scores(0, kExperts);
  moe::scoring::softmax_rows<S>(logits, scores);
  moe::scoring::sigmoid_rows<S>(logits, scores);
  EXPECT_EQ(scores.rows(), 0);
}

TYPED_TEST(SoftmaxTest, SigmoidMatchesReferenceAndSaturates) {
  using S = TypeParam;
  const RowMatrix<S> logits = moe::test::random_matrix<S>(kTokens, kExperts, 3) * S(6);
  RowMatrix<S> scores(kTokens, kExperts);
  moe::scoring::sigmoid_rows<S>(logits, scores);
  RowMatrix<double> expected(kTokens, kExperts);
  for (Index t = 0; t < kTokens; ++t)
    for (Index e = 0; e < kExperts; ++e) expected(t, e) = 1.0 / (1.0 + std::exp(-static_cast<double>(logits(t, e))));
  MOE_EXPECT_CLOSE(S, scores, expected);

  RowMatrix<S> known(1, 4);
  known << S(0), S(1000), S(-1000), S(std::log(3.0));
  RowMatrix<S> s(1, 4);
  moe::scoring::sigmoid_rows<S>(known, s);
  ASSERT_TRUE(s.allFinite());
  EXPECT_EQ(s(0, 0), S(0.5));
  EXPECT_EQ(s(0, 1), S(1));
  EXPECT_EQ(s(0, 2), S(0));
  EXPECT_NEAR(s(0, 3), S(0.75), 1e-6);

  RowMatrix<S> aliased = logits;
  moe::scoring::sigmoid_rows<S>(aliased, aliased);
  EXPECT_EQ(aliased, scores);
}

TYPED_TEST(SoftmaxTest, LogSumExp) {
  using S = TypeParam;
  const double tol = sizeof(S) == sizeof(float) ? 1e-6 : 1e-14;
  // z = 0 of length E: log E.
  for (Index n : {Index(1), Index(2), kExperts, Index(7)})
    EXPECT_NEAR(moe::scoring::log_sum_exp(Eigen::Matrix<S, 1, Eigen::Dynamic>::Zero(n)), std::log(double(n)),
                tol * std::log(double(n) + 1))
        << "n = " << n;

  const RowMatrix<S> logits = moe::test::random_matrix<S>(kTokens, kExperts, 4) * S(5);
  for (Index t = 0; t < kTokens; ++t) {
    double sum = 0.0;
    for (Index e = 0; e < kExperts; ++e) sum += std::exp(static_cast<double>(logits(t, e)));
    EXPECT_NEAR(moe::scoring::log_sum_exp(logits.row(t)), std::log(sum), tol * 10) << "token " << t;
  }

  // Stable where exp overflows or underflows: log Σ exp(1000 + z) = 1000 + log Σ exp(z).
  const Eigen::Matrix<S, 1, Eigen::Dynamic> big = Eigen::Matrix<S, 1, Eigen::Dynamic>::Constant(kExperts, S(1000));
  EXPECT_NEAR(moe::scoring::log_sum_exp(big), 1000.0 + std::log(double(kExperts)), 1000 * tol);
  const Eigen::Matrix<S, 1, Eigen::Dynamic> small = Eigen::Matrix<S, 1, Eigen::Dynamic>::Constant(kExperts, S(-1000));
  EXPECT_NEAR(moe::scoring::log_sum_exp(small), -1000.0 + std::log(double(kExperts)), 1000 * tol);
}

TYPED_TEST(SoftmaxTest, SoftmaxInPlaceOfAShortVector) {
  using S = TypeParam;
  RowMatrix<S> as_row(1, 3);
  as_row << S(0.3), S(-1.2), S(2.0);
  std::vector<S> values(as_row.data(), as_row.data() + 3);
  moe::scoring::softmax_inplace(values.data(), 3);
  MOE_EXPECT_CLOSE(S, (Eigen::Map<const RowMatrix<S>>(values.data(), 1, 3)), reference_softmax(as_row));

  // Only the first n entries are touched.
  std::vector<S> prefix = {S(1), S(1), S(42)};
  moe::scoring::softmax_inplace(prefix.data(), 2);
  EXPECT_NEAR(prefix[0], S(0.5), 1e-7);
  EXPECT_NEAR(prefix[1], S(0.5), 1e-7);
  EXPECT_EQ(prefix[2], S(42));

  S one = S(-7);
  moe::scoring::softmax_inplace(&one, 1);
  EXPECT_EQ(one, S(1));

  std::vector<S> large = {S(1000), S(1000), S(-1000), S(999)};
  moe::scoring::softmax_inplace(large.data(), 4);
  for (S v : large) EXPECT_TRUE(std::isfinite(v));
  const double e1 = std::exp(-1.0), denom = 2.0 + e1;
  EXPECT_NEAR(large[0], 1.0 / denom, 1e-6);
  EXPECT_NEAR(large[1], 1.0 / denom, 1e-6);
  EXPECT_EQ(large[2], S(0));
  EXPECT_NEAR(large[3], e1 / denom, 1e-6);
}

}  // namespace
