#include <moe/detail/float16.hpp>
#include <moe/io/dtype.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <vector>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

namespace MOE_TEST_FILE_ID {

using moe::detail::bf16_to_float;
using moe::detail::float_to_bf16;
using moe::detail::float_to_half;
using moe::detail::half_to_float;
using moe::io::Dtype;

std::uint32_t bits(float f) { return std::bit_cast<std::uint32_t>(f); }

TEST(Dtype, NamesSizesAndParsing) {
  EXPECT_EQ(moe::io::dtype_name(Dtype::BF16), "BF16");
  EXPECT_EQ(moe::io::dtype_size(Dtype::F16), 2u);
  EXPECT_EQ(moe::io::dtype_size(Dtype::F64), 8u);
  EXPECT_EQ(moe::io::parse_dtype("F32"), Dtype::F32);
  EXPECT_EQ(moe::io::parse_dtype("I64"), Dtype::I64);
  EXPECT_FALSE(moe::io::parse_dtype("f32").has_value());
  EXPECT_FALSE(moe::io::parse_dtype("").has_value());
  EXPECT_TRUE(moe::io::is_float_dtype(Dtype::BF16));
  EXPECT_FALSE(moe::io::is_float_dtype(Dtype::I32));
}

// Known F16 bit patterns (IEEE 754 binary16).
TEST(Half, KnownValuesDecode) {
  EXPECT_EQ(half_to_float(0x3c00), 1.0f);
  EXPECT_EQ(half_to_float(0xc100), -2.5f);
  EXPECT_EQ(half_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));        // smallest subnormal
  EXPECT_EQ(half_to_float(0x03ff), std::ldexp(1023.0f, -24));     // largest subnormal
  EXPECT_EQ(half_to_float(0x0400), std::ldexp(1.0f, -14));         // smallest normal
  EXPECT_EQ(half_to_float(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(half_to_float(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(half_to_float(0x7e00)));
  EXPECT_TRUE(std::isnan(half_to_float(0x7c01)));  // signalling NaN stays NaN (not inf)
  EXPECT_EQ(bits(half_to_float(0x8000)), 0x80000000u);  // -0
}

TEST(Half, KnownValuesEncode) {
  EXPECT_EQ(float_to_half(1.0f), 0x3c00);
  EXPECT_EQ(float_to_half(-2.5f), 0xc100);
  EXPECT_EQ(float_to_half(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(float_to_half(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(float_to_half(-0.0f), 0x8000);
  EXPECT_EQ(float_to_half(65519.0f), 0x7bff);  // below the halfway point to 65536
  EXPECT_EQ(float_to_half(65520.0f), 0x7c00);  // the tie rounds to even: inf
  EXPECT_EQ(float_to_half(1e10f), 0x7c00);
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 2^-24: even
  EXPECT_EQ(float_to_half(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(float_to_half(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 · 2^-24: tie, to even (2)
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie, to even (down)
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(3.0f, -11)), 0x3c02);  // tie, to even (up)
  const std::uint16_t nan = float_to_half(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);
  // A signalling NaN whose payload lives only in the low bits must not become inf.
  EXPECT_NE(float_to_half(std::bit_cast<float>(0x7f800001u)) & 0x03ff, 0);
}

// Every F16 value widens to a float and narrows back to the same bits (NaNs: to a NaN).
TEST(Half, EveryValueRoundTrips) {
  for (std::uint32_t h = 0; h <= 0xffff; ++h) {
    const auto half = static_cast<std::uint16_t>(h);
    const float f = half_to_float(half);
    if ((half & 0x7c00) == 0x7c00 && (half & 0x03ff) != 0) {
      ASSERT_TRUE(std::isnan(f)) << h;
      ASSERT_TRUE(std::isnan(half_to_float(float_to_half(f)))) << h;
    } else {
      ASSERT_EQ(float_to_half(f), half) << "bits 0x" << std::hex << h;
    }
  }
}

// Rounding of arbitrary floats: the result is the nearest half (ties to even), checked against the
// neighbours in double, where every half and every midpoint is exact.
TEST(Half, RoundsToNearestEven) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::uint32_t> mantissa(0, 0x7fffff), exponent(97, 144), sign(0, 1);
  for (int i = 0; i < 200000; ++i) {
    // 2^-30 <= |f| < 2^18: below the subnormals, through the normals, past the largest half.
    const float f = std::bit_cast<float>(sign(rng) << 31 | exponent(rng) << 23 | mantissa(rng));
    const std::uint16_t h = float_to_half(f);
    const double got = half_to_float(h), x = f;
    if (std::isinf(got)) {
      ASSERT_GE(std::abs(x), 65520.0) << f;
      continue;
    }
    const double up = half_to_float(static_cast<std::uint16_t>(h + 1));
    const double down = (h & 0x7fff) ? half_to_float(static_cast<std::uint16_t>(h - 1)) : -got;
    ASSERT_LE(std::abs(x - got), std::abs(x - up)) << f;
    ASSERT_LE(std::abs(x - got), std::abs(x - down)) << f;
    if (std::abs(x - got) == std::abs(x - up) || std::abs(x - got) == std::abs(x - down)) {
      ASSERT_EQ(h & 1, 0) << "tie not to even: " << f;
    }
  }
}

TEST(BFloat16, KnownValues) {
  EXPECT_EQ(bf16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_float(0xc020), -2.5f);
  EXPECT_EQ(bf16_to_float(0x0001), std::bit_cast<float>(0x00010000u));  // smallest subnormal
  EXPECT_EQ(bf16_to_float(0x7f80), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(bf16_to_float(0x7fc0)));
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16(-2.5f), 0xc020);
  EXPECT_EQ(float_to_bf16(65504.0f), 0x4780);  // 65504 is not a bf16: nearest is 65536
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x00010000u)), 0x0001);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x3f808000u)), 0x3f80);  // tie, to even (down)
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x3f818000u)), 0x3f82);  // tie, to even (up)
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x3f808001u)), 0x3f81);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::bit_cast<float>(0x7f800001u)))));
  for (std::uint32_t b = 0; b <= 0xffff; ++b) {
    if (!std::isnan(bf16_to_float(static_cast<std::uint16_t>(b)))) {
      ASSERT_EQ(float_to_bf16(bf16_to_float(static_cast<std::uint16_t>(b))), b);
    }
  }
}

// float_to_bf16 against the rounding written out in double: the nearer of the two bf16 values that
// bracket x, the one with an even last bit on a tie — for random bit patterns and for every tie
// just above and below 1.
TEST(BFloat16, RoundsToNearestEvenAgainstADoubleReference) {
  const auto reference = [](float x) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
    const auto down = static_cast<std::uint16_t>(bits >> 16), up = static_cast<std::uint16_t>(down + 1);
    const double below = std::abs(double(x) - double(bf16_to_float(down)));
    const double above = std::abs(double(bf16_to_float(up)) - double(x));
    if (below != above) return below < above ? down : up;
    return (down & 1) == 0 ? down : up;
  };
  std::uint32_t state = 12345;
  std::vector<std::uint32_t> patterns;
  for (int i = 0; i < 200000; ++i) patterns.push_back(state = state * 1664525u + 1013904223u);
  for (std::uint32_t m = 0; m < 128; ++m) patterns.push_back(0x3f800000u | (m << 16) | 0x8000u);  // ties
  for (const std::uint32_t bits : patterns) {
    const float x = std::bit_cast<float>(bits);
    if (!std::isfinite(x) || std::abs(x) >= std::numeric_limits<float>::max() / 2) continue;
    ASSERT_EQ(float_to_bf16(x), reference(x)) << std::hex << bits;
  }
}

template <class S>
class Convert : public ::testing::Test {};
TYPED_TEST_SUITE(Convert, moe::test::Scalars);

// Stored bytes at an odd address (safetensors data need not be aligned) convert exactly.
TYPED_TEST(Convert, UnalignedBytesOfEveryFloatDtype) {
  using S = TypeParam;
  const S values[4] = {S(1), S(-2.5), S(65504), S(0.5)};
  for (const Dtype d : {Dtype::F16, Dtype::BF16, Dtype::F32, Dtype::F64}) {
    alignas(8) std::byte buffer[1 + 4 * 8];
    moe::detail::convert_to(d, values, 4, buffer + 1);
    S back[4];
    moe::detail::convert_from(d, buffer + 1, 4, back);
    EXPECT_EQ(back[0], S(1)) << moe::io::dtype_name(d);
    EXPECT_EQ(back[1], S(-2.5)) << moe::io::dtype_name(d);
    EXPECT_EQ(back[2], d == Dtype::BF16 ? S(65536) : S(65504)) << moe::io::dtype_name(d);
    EXPECT_EQ(back[3], S(0.5)) << moe::io::dtype_name(d);
  }
}

}  // namespace
