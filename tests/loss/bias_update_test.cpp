// BiasUpdater (DeepSeek-V3 auxiliary-loss-free balancing): the stated example, sign(0) = 0 at
// balance, the rate, a reference loop over random loads, and the checks.
#include <moe/loss/bias_update.hpp>

#include "loss/loss_cases.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
namespace tl = moe::test::loss;

template <class S>
class BiasUpdateTest : public ::testing::Test {};
TYPED_TEST_SUITE(BiasUpdateTest, moe::test::Scalars);

TYPED_TEST(BiasUpdateTest, KnownLoadsGiveKnownStep) {
  using S = TypeParam;
  moe::Vector<S> bias(4);
  bias << S(0.5), S(-0.25), S(0), S(1);
  const std::vector<Index> loads = {3, 1, 0, 0};  // mean 1
  moe::BiasUpdater().update(bias, loads);
  moe::Vector<S> expected(4);
  expected << S(0.5 - 1e-3), S(-0.25), S(1e-3), S(1 + 1e-3);
  EXPECT_TRUE(bias == expected) << bias.transpose();
}

TYPED_TEST(BiasUpdateTest, BalancedLoadsLeaveTheBias) {
  using S = TypeParam;
  moe::Vector<S> bias = moe::test::random_matrix<S>(6, 1, 5);
  const moe::Vector<S> before = bias;
  moe::BiasUpdater({.rate = 0.1}).update(bias, std::vector<Index>(6, 7));
  EXPECT_TRUE(bias == before);
  moe::update_selection_bias(bias, std::vector<Index>(6, 0));  // no tokens at all
  EXPECT_TRUE(bias == before);
}

TYPED_TEST(BiasUpdateTest, MatchesReferenceLoopWithGivenRate) {
  using S = TypeParam;
  const std::vector<Index> loads = {4, 9, 2, 5, 0, 7, 8};  // mean 5: expert 3 is exactly at it
  moe::Vector<S> bias = moe::test::random_matrix<S>(7, 1, 9);
  moe::Vector<double> expected = bias.template cast<double>();
  double mean = 0;
  for (const Index l : loads) mean += double(l) / 7;
  for (Index e = 0; e < 7; ++e) {
    const double diff = mean - double(loads[e]);
    if (std::abs(diff) > 1e-9) expected[e] += diff > 0 ? 0.25 : -0.25;
  }
  moe::update_selection_bias(bias, loads, 0.25);
  MOE_EXPECT_CLOSE(S, bias, expected);
  EXPECT_EQ(bias[3], S(moe::test::random_matrix<S>(7, 1, 9)(3, 0)));  // sign(0) = 0
}

TYPED_TEST(BiasUpdateTest, WrongSizeAndBadRateThrow) {
  using S = TypeParam;
  moe::Vector<S> bias = moe::Vector<S>::Zero(4);
  tl::expect_throw_naming<moe::shape_error>([&] { moe::BiasUpdater().update(bias, std::vector<Index>(5, 1)); },
                                            {"BiasUpdater::update", "loads.size() = 5", "bias.size() = 4"});
  EXPECT_TRUE(bias.isZero(0));  // nothing written before the throw
  for (const double rate : {0.0, -1e-3, std::numeric_limits<double>::infinity()})
    tl::expect_throw_naming<moe::config_error>([&] { moe::BiasUpdater({.rate = rate}); }, {"BiasUpdater", "rate"});
  tl::expect_throw_naming<moe::config_error>([&] { moe::update_selection_bias(bias, std::vector<Index>(4), -2); },
                                             {"rate = -2"});
}

}  // namespace
