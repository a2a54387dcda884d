// Activations: known values, agreement with the scalar formulas, and finite limits at extreme inputs.
#include <moe/experts/activations.hpp>

#include "support/compare.hpp"
#include "support/reference_experts.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string_view>
#include <vector>

namespace MOE_TEST_FILE_ID {

namespace ref = moe::test::reference;

template <class S>
using Array = Eigen::Array<S, Eigen::Dynamic, 1>;

template <class Activation, class S>
Array<S> apply(const Array<S>& a) {
  return Activation::apply(a);
}

// Applies the policy to 19 copies of x, so that the value goes through Eigen's vectorised path
// (full packets) and its scalar tail alike. Both must agree to a few ulps (Eigen's packet exp is
// not bit-identical to std::exp, so exact equality would test Eigen, not the activation).
template <class Activation, class S>
S apply_one(S x) {
  const Array<S> in = Array<S>::Constant(19, x);
  const Array<S> out = apply<Activation>(in);
  const S ulps = 4 * std::numeric_limits<S>::epsilon();
  for (Eigen::Index i = 1; i < out.size(); ++i)
    EXPECT_LE(std::abs(out(i) - out(0)), ulps * std::abs(out(0)))
        << Activation::name << "(" << x << ") differs between lanes: " << out(i) << " vs " << out(0);
  return out(0);
}

// Known values agree to a few ulps of S.
template <class S>
double value_tolerance() {
  return sizeof(S) == sizeof(float) ? 2e-6 : 1e-14;
}

// An input whose exp(|x|) is close to the largest finite S: ±80 in float, ±700 in double.
template <class S>
S extreme() {
  return sizeof(S) == sizeof(float) ? S(80) : S(700);
}

template <class S>
class ActivationsTest : public ::testing::Test {};
TYPED_TEST_SUITE(ActivationsTest, moe::test::Scalars);

TEST(Activations, NamesAreTheConfigSpellings) {
  EXPECT_EQ(std::string_view(moe::Relu::name), "relu");
  EXPECT_EQ(std::string_view(moe::Gelu::name), "gelu");
  EXPECT_EQ(std::string_view(moe::GeluTanh::name), "gelu_tanh");
  EXPECT_EQ(std::string_view(moe::Silu::name), "silu");
}

TEST(Activations, ReferenceFormulasGiveKnownValues) {
  // The reference itself is checked against published values, so the comparisons below mean something.
  EXPECT_EQ(ref::relu(-1.0), 0.0);
  EXPECT_EQ(ref::relu(2.5), 2.5);
  EXPECT_NEAR(ref::gelu(1.0), 0.8413447460685429, 1e-15);
  EXPECT_NEAR(ref::gelu_tanh(1.0), 0.8411919906082768, 1e-15);
  EXPECT_NEAR(ref::silu(1.0), 0.7310585786300049, 1e-15);
  EXPECT_EQ(ref::silu(0.0), 0.0);
}

TYPED_TEST(ActivationsTest, KnownValues) {
  using S = TypeParam;
  const double tol = value_tolerance<S>();
  EXPECT_EQ(apply_one<moe::Relu>(S(-1)), S(0));
  EXPECT_EQ(apply_one<moe::Relu>(S(0)), S(0));
  EXPECT_EQ(apply_one<moe::Relu>(S(1.5)), S(1.5));
  EXPECT_EQ(apply_one<moe::Silu>(S(0)), S(0));
  EXPECT_EQ(apply_one<moe::Gelu>(S(0)), S(0));
  EXPECT_EQ(apply_one<moe::GeluTanh>(S(0)), S(0));
  EXPECT_NEAR(apply_one<moe::Gelu>(S(1)), 0.8413447460685429, tol);
  EXPECT_NEAR(apply_one<moe::GeluTanh>(S(1)), 0.8411919906082768, tol);
  EXPECT_NEAR(apply_one<moe::Silu>(S(1)), 0.7310585786300049, tol);
  // Odd-symmetry partners: gelu(-1) = -1 + gelu(1), silu(-1) = -1 + silu(1).
  EXPECT_NEAR(apply_one<moe::Gelu>(S(-1)), 0.8413447460685429 - 1.0, tol);
  EXPECT_NEAR(apply_one<moe::GeluTanh>(S(-1)), 0.8411919906082768 - 1.0, tol);
  EXPECT_NEAR(apply_one<moe::Silu>(S(-1)), 0.7310585786300049 - 1.0, tol);
}

template <class Activation, class S>
void check_against_reference() {
  constexpr Eigen::Index n = 161;  // -8, -7.9, ..., 8
  Array<S> x(n);
  Eigen::Matrix<double, Eigen::Dynamic, 1> expected(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    x(i) = static_cast<S>(-8.0 + 0.1 * static_cast<double>(i));
    expected(i) = ref::ActivationOf<Activation>::apply(static_cast<double>(x(i)));
  }
  const Array<S> y = apply<Activation>(x);
  SCOPED_TRACE(Activation::name);
  MOE_EXPECT_CLOSE(S, y.matrix(), expected);
  for (Eigen::Index i = 0; i < n; ++i)
    EXPECT_NEAR(static_cast<double>(y(i)), expected(i), 10 * value_tolerance<S>() * (1 + std::abs(expected(i))))
        << Activation::name << "(" << x(i) << ")";
}

// GELU's float path is Eigen's vectorised erf (an approximation): within 2e-6 of the exact GELU on
// a fine grid over [-12, 12], as activations.hpp says; double within 1e-14.
TYPED_TEST(ActivationsTest, GeluIsCloseToExactOnAFineGrid) {
  using S = TypeParam;
  constexpr Eigen::Index n = 4801;  // -12, -11.995, ..., 12
  Array<S> x(n);
  for (Eigen::Index i = 0; i < n; ++i) x(i) = static_cast<S>(-12.0 + 0.005 * static_cast<double>(i));
  const Array<S> y = apply<moe::Gelu>(x);
  double worst = 0;
  for (Eigen::Index i = 0; i < n; ++i)
    worst = std::max(worst, std::abs(static_cast<double>(y(i)) - ref::gelu(static_cast<double>(x(i)))));
  EXPECT_LE(worst, sizeof(S) == sizeof(float) ? 2e-6 : 1e-14);
}

TYPED_TEST(ActivationsTest, MatchReferenceOnAGrid) {
  check_against_reference<moe::Relu, TypeParam>();
  check_against_reference<moe::Gelu, TypeParam>();
  check_against_reference<moe::GeluTanh, TypeParam>();
  check_against_reference<moe::Silu, TypeParam>();
}

// f(x) → x as x → +∞ and f(x) → 0 as x → −∞ for all four, with no NaN or inf on the way.
template <class Activation, class S>
void check_limits() {
  SCOPED_TRACE(Activation::name);
  const S big = extreme<S>();
  const S high = apply_one<Activation>(big);
  const S low = apply_one<Activation>(-big);
  ASSERT_TRUE(std::isfinite(high)) << Activation::name << "(" << big << ") = " << high;
  ASSERT_TRUE(std::isfinite(low)) << Activation::name << "(" << -big << ") = " << low;
  EXPECT_NEAR(high, big, static_cast<double>(big) * value_tolerance<S>());
  EXPECT_NEAR(low, S(0), value_tolerance<S>());
  EXPECT_LE(low, S(0)) << "the negative tail approaches 0 from below (or is 0)";
}

TYPED_TEST(ActivationsTest, ExtremeInputsAreFiniteWithTheRightLimits) {
  check_limits<moe::Relu, TypeParam>();
  check_limits<moe::Gelu, TypeParam>();
  check_limits<moe::GeluTanh, TypeParam>();
  check_limits<moe::Silu, TypeParam>();
}

TYPED_TEST(ActivationsTest, AppliesElementwiseToMatrices) {
  // Experts apply the policy to h.array() of a row-major [n, d_ff] block; each entry is independent.
  using S = TypeParam;
  const moe::RowMatrix<S> h = moe::test::random_matrix<S>(7, 16, 11) * S(4);
  const moe::RowMatrix<S> y = moe::Silu::apply(h.array()).matrix();
  moe::RowMatrix<double> expected(7, 16);
  for (Eigen::Index i = 0; i < 7; ++i)
    for (Eigen::Index j = 0; j < 16; ++j) expected(i, j) = ref::silu(static_cast<double>(h(i, j)));
  MOE_EXPECT_CLOSE(S, y, expected);
}

// elementwise(): each element's bits depend on its value only, not on where it sits (Eigen's own
// evaluation uses its scalar functions for an unaligned head and a tail, its vector ones elsewhere,
// and the two differ in the last bits: per-thread scratch made backward's bits depend on the thread).
template <class Activation, class S>
void check_same_bits_at_any_offset() {
  constexpr Eigen::Index n = 37;
  const moe::RowMatrix<S> values = moe::test::random_matrix<S>(1, n, 12) * S(6);
  std::vector<S> at_start(n);
  moe::elementwise<S>(n, at_start.data(), [](const auto& a) { return Activation::apply(a); }, values.data());
  for (Eigen::Index offset = 1; offset < 17; ++offset) {
    std::vector<S> in(n + offset), out(n + offset);
    std::copy_n(values.data(), n, in.begin() + offset);
    moe::elementwise<S>(n, out.data() + offset, [](const auto& a) { return Activation::apply(a); }, in.data() + offset);
    EXPECT_EQ(std::memcmp(out.data() + offset, at_start.data(), n * sizeof(S)), 0)
        << Activation::name << " at offset " << offset;
  }
  moe::RowMatrix<double> expected(1, n);
  for (Eigen::Index i = 0; i < n; ++i) expected(0, i) = ref::ActivationOf<Activation>::apply(double(values(0, i)));
  MOE_EXPECT_CLOSE(S, Eigen::Map<const moe::RowMatrix<S>>(at_start.data(), 1, n), expected);
}

TYPED_TEST(ActivationsTest, ElementwiseGivesTheSameBitsAtAnyAddress) {
  check_same_bits_at_any_offset<moe::Gelu, TypeParam>();
  check_same_bits_at_any_offset<moe::GeluTanh, TypeParam>();
  check_same_bits_at_any_offset<moe::Silu, TypeParam>();
}

}  // namespace
