// Router: logits = x·Wgᵀ (+ b) against a plain dot-product loop, its initialisation, and the
// finiteness check every gate relies on.
#include <moe/gating/router.hpp>

#include "support/compare.hpp"
#include "support/reference_gates.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <utility>
#include <limits>
#include <stdexcept>
#include <string>

namespace MOE_TEST_FILE_ID {

constexpr moe::Index kTokens = 7, kDModel = 8, kExperts = 4;

template <class S>
class RouterTest : public ::testing::Test {};

// The products' scratch (each test's thread owns it).
template <class S>
moe::detail::AlignedVector<S>& work() {
  static moe::detail::AlignedVector<S> scratch;
  return scratch;
}
TYPED_TEST_SUITE(RouterTest, moe::test::Scalars);

TYPED_TEST(RouterTest, ShapesFollowTorchLinear) {
  using S = TypeParam;
  moe::Generator rng(1);
  const moe::Router<S> with_bias(kDModel, kExperts, true, rng);
  EXPECT_EQ(with_bias.d_model(), kDModel);
  EXPECT_EQ(with_bias.num_experts(), kExperts);
  EXPECT_TRUE(with_bias.has_bias());
  EXPECT_EQ(with_bias.weight().rows(), kExperts);
  EXPECT_EQ(with_bias.weight().cols(), kDModel);
  EXPECT_EQ(with_bias.bias().size(), kExperts);

  const moe::Router<S> without_bias(kDModel, kExperts, false, rng);
  EXPECT_FALSE(without_bias.has_bias());
  EXPECT_EQ(without_bias.bias().size(), 0);
}

TYPED_TEST(RouterTest, InitialisationIsSeededAndBoundedLikeTorchLinear) {
  using S = TypeParam;
  moe::Generator rng_a(42), rng_b(42), rng_c(43);
  const moe::Router<S> a(kDModel, kExperts, true, rng_a);
  const moe::Router<S> b(kDModel, kExperts, true, rng_b);
  const moe::Router<S> c(kDModel, kExperts, true, rng_c);
  EXPECT_TRUE(a.weight() == b.weight());
  EXPECT_TRUE(a.bias() == b.bias());
  EXPECT_FALSE(a.weight() == c.weight());

  // U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both weight and bias; not all equal.
  const double bound = 1.0 / std::sqrt(static_cast<double>(kDModel));
  EXPECT_LE(a.weight().cwiseAbs().maxCoeff(), S(bound));
  EXPECT_LE(a.bias().cwiseAbs().maxCoeff(), S(bound));
  EXPECT_GT(a.weight().maxCoeff() - a.weight().minCoeff(), S(0.1 * bound));
  EXPECT_GT(a.bias().maxCoeff() - a.bias().minCoeff(), S(0));
}

TYPED_TEST(RouterTest, ProjectMatchesDotProductsWithoutBias) {
  using S = TypeParam;
  moe::Generator rng(3);
  const moe::Router<S> router(kDModel, kExperts, false, rng);
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 11);
  moe::RowMatrix<S> logits(kTokens, kExperts);
  router.project(x, logits, "test", work<S>());
  const auto expected = moe::test::ref::router_logits(moe::test::ref::to_double(x),
                                                      moe::test::ref::to_double(router.weight()), {});
  MOE_EXPECT_CLOSE(S, logits, expected);
  EXPECT_GT(expected.norm(), 0.1);
}

TYPED_TEST(RouterTest, ProjectMatchesDotProductsWithBias) {
  using S = TypeParam;
  moe::Generator rng(4);
  moe::Router<S> router(kDModel, kExperts, true, rng);
  router.bias() << S(0.5), S(-1), S(2), S(0.25);  // large enough that a missing bias fails
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 12);
  moe::RowMatrix<S> logits(kTokens, kExperts);
  router.project(x, logits, "test", work<S>());
  const auto expected = moe::test::ref::router_logits(
      moe::test::ref::to_double(x), moe::test::ref::to_double(router.weight()),
      moe::test::ref::to_row(router.bias()));
  MOE_EXPECT_CLOSE(S, logits, expected);
}

TYPED_TEST(RouterTest, ProjectWritesIntoARowBlock) {
  using S = TypeParam;
  moe::Generator rng(5);
  const moe::Router<S> router(kDModel, kExperts, true, rng);
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 13);
  moe::RowMatrix<S> whole = moe::RowMatrix<S>::Constant(kTokens + 2, kExperts, S(-7));
  router.project(x, whole.middleRows(1, kTokens), "test", work<S>());
  moe::RowMatrix<S> direct(kTokens, kExperts);
  router.project(x, direct, "test", work<S>());
  EXPECT_TRUE(whole.middleRows(1, kTokens) == direct);
  EXPECT_TRUE((whole.row(0).array() == S(-7)).all());
  EXPECT_TRUE((whole.row(kTokens + 1).array() == S(-7)).all());
}

TYPED_TEST(RouterTest, ZeroAndOneTokens) {
  using S = TypeParam;
  moe::Generator rng(6);
  const moe::Router<S> router(kDModel, kExperts, true, rng);
  moe::RowMatrix<S> none(0, kExperts);
  router.project(moe::RowMatrix<S>(0, kDModel), none, "test", work<S>());
  EXPECT_EQ(none.rows(), 0);

  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(1, kDModel, 14);
  moe::RowMatrix<S> one(1, kExperts);
  router.project(x, one, "test", work<S>());
  const auto expected = moe::test::ref::router_logits(
      moe::test::ref::to_double(x), moe::test::ref::to_double(router.weight()),
      moe::test::ref::to_row(router.bias()));
  MOE_EXPECT_CLOSE(S, one, expected);
}

TYPED_TEST(RouterTest, NonFiniteInputNamesTheTokenAndTheCaller) {
  using S = TypeParam;
  moe::Generator rng(7);
  const moe::Router<S> router(kDModel, kExperts, false, rng);
  moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 15);
  moe::RowMatrix<S> logits(kTokens, kExperts);
  for (const S bad : {std::numeric_limits<S>::quiet_NaN(), std::numeric_limits<S>::infinity()}) {
    x(3, 2) = bad;
    try {
      router.project(x, logits, "Caller::route", work<S>());
      FAIL() << "expected std::domain_error for " << bad;
    } catch (const std::domain_error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("Caller::route"), std::string::npos) << message;
      EXPECT_NE(message.find("token 3"), std::string::npos) << message;
    }
  }
}

TYPED_TEST(RouterTest, CheckFiniteReportsTheFirstBadToken) {
  using S = TypeParam;
  moe::RowMatrix<S> logits = moe::RowMatrix<S>::Zero(kTokens, kExperts);
  EXPECT_NO_THROW(moe::Router<S>::check_finite(logits, "who"));
  logits(5, 1) = -std::numeric_limits<S>::infinity();
  logits(6, 0) = std::numeric_limits<S>::quiet_NaN();
  try {
    moe::Router<S>::check_finite(logits, "who");
    FAIL() << "expected std::domain_error";
  } catch (const std::domain_error& e) {
    EXPECT_NE(std::string(e.what()).find("who: router logits of token 5"), std::string::npos) << e.what();
  }
}

}  // namespace

namespace MOE_TEST_FILE_ID {

// A token's logits, and its row of backward's d_x, have the same bits whatever other tokens the
// call has: alone, in a block starting at an odd row, or in the whole batch (depths that cross the
// product's blocks; rows at the edges of its tiles).
TYPED_TEST(RouterTest, ATokensLogitsAndDxDoNotDependOnTheOtherTokens) {
  using S = TypeParam;
  constexpr moe::Index T = 29, d = 600, E = 6;
  moe::Generator rng(8);
  const moe::Router<S> router(d, E, true, rng);
  auto grads = router.zeros_like();
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(T, d, 16), d_logits = moe::test::random_matrix<S>(T, E, 17);
  moe::RowMatrix<S> logits(T, E), d_x = moe::RowMatrix<S>::Constant(T, d, S(0.5));
  router.project(x, logits, "test", work<S>());
  router.backward(x, d_logits, d_x, grads, work<S>());
  for (const auto& [first, count] : {std::pair<moe::Index, moe::Index>{0, 1}, {13, 1}, {T - 1, 1}, {3, 14}, {5, T - 5}}) {
    moe::RowMatrix<S> part(count, E), part_d_x = moe::RowMatrix<S>::Constant(count, d, S(0.5));
    router.project(x.middleRows(first, count), part, "test", work<S>());
    router.backward(x.middleRows(first, count), d_logits.middleRows(first, count), part_d_x, grads, work<S>());
    EXPECT_TRUE(moe::test::same_bits_as_rows(part, logits, first)) << first << " + " << count;
    EXPECT_TRUE(moe::test::same_bits_as_rows(part_d_x, d_x, first)) << first << " + " << count;
  }
}

// backward accumulates: grads.weight += d_logitsᵀ·x, grads.bias += Σ_t d_logits, d_x += d_logits·W,
// against the products written out, on gradients and d_x that already hold values.
TYPED_TEST(RouterTest, BackwardAccumulatesIntoEveryOutput) {
  using S = TypeParam;
  moe::Generator rng(3);
  const moe::Router<S> router(kDModel, kExperts, true, rng);
  auto grads = router.zeros_like();
  grads.weight().setConstant(S(0.5));
  grads.bias().setConstant(S(-0.25));
  const moe::RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kDModel, 4);
  const moe::RowMatrix<S> d_logits = moe::test::random_matrix<S>(kTokens, kExperts, 5);
  moe::RowMatrix<S> d_x = moe::RowMatrix<S>::Constant(kTokens, kDModel, S(2));
  router.backward(x, d_logits, d_x, grads, work<S>());
  router.backward(x, d_logits, d_x, grads, work<S>());
  const moe::RowMatrix<S> weight_grad = moe::RowMatrix<S>::Constant(kExperts, kDModel, S(0.5)) +
                                        S(2) * (d_logits.transpose() * x);
  const moe::Vector<S> bias_grad =
      moe::Vector<S>::Constant(kExperts, S(-0.25)) + S(2) * d_logits.colwise().sum().transpose();
  MOE_EXPECT_CLOSE(S, grads.weight(), weight_grad);
  MOE_EXPECT_CLOSE(S, moe::RowMatrix<S>(grads.bias().transpose()), moe::RowMatrix<S>(bias_grad.transpose()));
  MOE_EXPECT_CLOSE(S, d_x, moe::RowMatrix<S>(moe::RowMatrix<S>::Constant(kTokens, kDModel, S(2)) +
                                             S(2) * (d_logits * router.weight())));
}

}  // namespace MOE_TEST_FILE_ID
