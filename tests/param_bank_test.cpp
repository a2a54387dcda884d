// ParamBank: one contiguous, 64-byte aligned block [num_experts, rows, cols] with a row-major
// view per expert, and torch.nn.Linear's seeded U(±1/√fan_in) initialisation.
#include <moe/param_bank.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <utility>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::ParamBank;

constexpr Index kExperts = 4, kRows = 3, kCols = 5;

template <class S>
std::uintptr_t address(const S* p) {
  return reinterpret_cast<std::uintptr_t>(p);
}

template <class S>
class ParamBankTest : public ::testing::Test {};
TYPED_TEST_SUITE(ParamBankTest, moe::test::Scalars);

TYPED_TEST(ParamBankTest, DefaultIsEmpty) {
  const ParamBank<TypeParam> bank;
  EXPECT_TRUE(bank.empty());
  EXPECT_EQ(bank.size(), 0);
  EXPECT_EQ(bank.num_experts(), 0);
  EXPECT_EQ(bank.rows(), 0);
  EXPECT_EQ(bank.cols(), 0);
  EXPECT_EQ(bank.all().rows(), 0);
}

TYPED_TEST(ParamBankTest, ShapeAndZeroInitialisation) {
  using S = TypeParam;
  const ParamBank<S> bank(kExperts, kRows, kCols);
  EXPECT_FALSE(bank.empty());
  EXPECT_EQ(bank.num_experts(), kExperts);
  EXPECT_EQ(bank.rows(), kRows);
  EXPECT_EQ(bank.cols(), kCols);
  EXPECT_EQ(bank.size(), kExperts * kRows * kCols);
  EXPECT_EQ(bank.all().rows(), kExperts * kRows);
  EXPECT_EQ(bank.all().cols(), kCols);
  EXPECT_EQ(bank[2].rows(), kRows);
  EXPECT_EQ(bank[2].cols(), kCols);
  EXPECT_TRUE((bank.all().array() == S(0)).all());
}

TYPED_TEST(ParamBankTest, AlignedAndContiguous) {
  using S = TypeParam;
  ParamBank<S> bank(kExperts, kRows, kCols);
  const S* data = bank.all().data();
  EXPECT_EQ(address(data) % 64, 0u) << "the bank must start on a 64-byte boundary";
  for (Index e = 0; e < kExperts; ++e) {
    EXPECT_EQ(bank[e].data(), data + e * kRows * kCols) << "expert " << e;
    EXPECT_EQ(std::as_const(bank)[e].data(), data + e * kRows * kCols) << "expert " << e;
  }
  // Row-major inside an expert: (e, i, j) lives at data + (e·rows + i)·cols + j.
  for (Index e = 0; e < kExperts; ++e)
    for (Index i = 0; i < kRows; ++i)
      for (Index j = 0; j < kCols; ++j) bank[e](i, j) = static_cast<S>(100 * e + 10 * i + j);
  for (Index e = 0; e < kExperts; ++e)
    for (Index i = 0; i < kRows; ++i)
      for (Index j = 0; j < kCols; ++j) {
        EXPECT_EQ(data[(e * kRows + i) * kCols + j], static_cast<S>(100 * e + 10 * i + j));
        EXPECT_EQ(bank.all()(e * kRows + i, j), static_cast<S>(100 * e + 10 * i + j));
      }
}

TYPED_TEST(ParamBankTest, CopiesAreDeepAndStayAligned) {
  using S = TypeParam;
  ParamBank<S> bank(kExperts, kRows, kCols);
  bank[1](2, 3) = S(5);
  ParamBank<S> copy = bank;
  EXPECT_NE(copy.all().data(), bank.all().data());
  EXPECT_EQ(address(copy.all().data()) % 64, 0u);
  EXPECT_EQ(copy.all(), bank.all());
  copy[1](2, 3) = S(6);
  EXPECT_EQ(bank[1](2, 3), S(5));

  ParamBank<S> moved = std::move(copy);
  EXPECT_EQ(moved[1](2, 3), S(6));
  EXPECT_EQ(address(moved.all().data()) % 64, 0u);
}

TYPED_TEST(ParamBankTest, SeededUniformInitialisation) {
  using S = TypeParam;
  const Index fan_in = 7;
  ParamBank<S> a(kExperts, kRows, kCols), b(kExperts, kRows, kCols), c(kExperts, kRows, kCols);
  moe::Generator rng_a(1), rng_b(1), rng_c(2);
  a.init_uniform(fan_in, rng_a);
  b.init_uniform(fan_in, rng_b);
  c.init_uniform(fan_in, rng_c);
  EXPECT_EQ(a.all(), b.all()) << "same seed, same weights";
  EXPECT_NE(a.all(), c.all()) << "another seed, other weights";

  const S bound = static_cast<S>(1.0 / std::sqrt(static_cast<double>(fan_in)));
  EXPECT_LE(a.all().cwiseAbs().maxCoeff(), bound);
  EXPECT_GT(a.all().maxCoeff(), S(0.25) * bound);
  EXPECT_LT(a.all().minCoeff(), S(-0.25) * bound);
  // Every entry was drawn: with 60 draws none is left at its initial zero.
  EXPECT_TRUE((a.all().array() != S(0)).all());

  // The draws continue the generator: a second bank from the same generator differs from the first.
  ParamBank<S> next(kExperts, kRows, kCols);
  next.init_uniform(fan_in, rng_a);
  EXPECT_NE(next.all(), a.all());
}

TYPED_TEST(ParamBankTest, InitialisationIsPortable) {
  // The first draws of Generator(0) through moe::uniform pin the bits: the same on every standard
  // library (std::uniform_real_distribution is not portable, moe::uniform is).
  using S = TypeParam;
  const Index fan_in = 4;  // bound 0.5
  ParamBank<S> bank(1, 1, 3);
  moe::Generator rng(0);
  bank.init_uniform(fan_in, rng);
  moe::Generator check(0);
  for (Index j = 0; j < 3; ++j) {
    const double u = static_cast<double>(check() >> 11) * 0x1.0p-53;  // 53 random bits in [0, 1)
    EXPECT_EQ(bank[0](0, j), static_cast<S>(-0.5 + 1.0 * u)) << j;
  }
}

}  // namespace
