#include <moe/random.hpp>
#include <moe/types.hpp>

#include <gtest/gtest.h>

#include <cmath>

namespace MOE_TEST_FILE_ID {

// std::mt19937_64 is specified exactly by the standard: its 10000th output from the default
// seed is 9981545732273789042 ([rand.predef]). So these values are the same on every platform.
TEST(Random, GeneratorIsTheStandardMersenneTwister) {
  moe::Generator rng;
  rng.discard(9999);
  EXPECT_EQ(rng(), 9981545732273789042ULL);
}

TEST(Random, Uniform01IsTheTop53BitsOfOneDraw) {
  moe::Generator a(42), b(42);
  for (int i = 0; i < 100; ++i) {
    const double u = moe::uniform01(a);
    EXPECT_EQ(u, static_cast<double>(b() >> 11) * 0x1.0p-53);
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

TEST(Random, StandardNormalHasUnitMomentsAndIsSeeded) {
  moe::Generator rng(7), again(7);
  const int n = 200000;
  double sum = 0, sum_sq = 0;
  for (int i = 0; i < n; ++i) {
    const double z = moe::standard_normal(rng);
    ASSERT_TRUE(std::isfinite(z));
    ASSERT_EQ(z, moe::standard_normal(again));
    sum += z;
    sum_sq += z * z;
  }
  // Standard errors: 1/√n ≈ 0.0022 for the mean, √(2/n) ≈ 0.0032 for the variance; 5 sigma.
  EXPECT_NEAR(sum / n, 0.0, 0.012);
  EXPECT_NEAR(sum_sq / n, 1.0, 0.016);
}

TEST(Random, InitLinearUniformStaysWithinTheFanInBound) {
  moe::Generator rng(1);
  moe::RowMatrix<double> w(16, 25);
  moe::init_linear_uniform(w, 25, rng);
  EXPECT_LE(w.cwiseAbs().maxCoeff(), 0.2);            // 1/√25
  EXPECT_GT(w.cwiseAbs().maxCoeff(), 0.15);           // and actually spreads over it
  EXPECT_NEAR(w.mean(), 0.0, 0.05);
}

}  // namespace
