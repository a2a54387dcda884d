// Helpers shared by every test: seeded inputs, the normalised error ‖a − b‖² / ‖b‖², bit equality.
#pragma once

#include <moe/random.hpp>
#include <moe/types.hpp>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace moe::test {

// The bound on normalised_error for a result computed in S (issue: 1e-12 in double, 1e-6 in float).
template <class S>
constexpr double tolerance() {
  return sizeof(S) == sizeof(float) ? 1e-6 : 1e-12;
}

// ‖a − b‖² / ‖b‖² in double (‖a‖² when b is zero, so that an all-zero reference still checks).
template <class A, class B>
double normalised_error(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  const double diff = (a.template cast<double>() - b.template cast<double>()).squaredNorm();
  const double norm = b.template cast<double>().squaredNorm();
  return norm > 0 ? diff / norm : diff;
}

// Seeded U(-1, 1) matrix (never Eigen's Random(), whose sequence is not ours to fix).
template <class S>
RowMatrix<S> random_matrix(Index rows, Index cols, std::uint64_t seed) {
  Generator rng(seed);
  RowMatrix<S> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<S>(uniform(rng, -1.0, 1.0));
  return m;
}

// Whether a has the bits of rows [first, first + a.rows()) of b (NaN-safe, unlike ==).
template <class A, class B>
bool same_bits_as_rows(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b, Index first = 0) {
  static_assert(std::is_same_v<typename A::Scalar, typename B::Scalar>);
  if (a.cols() != b.cols() || first < 0 || first + a.rows() > b.rows()) return false;
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < a.cols(); ++j)
      if (const typename A::Scalar u = a(i, j), v = b(first + i, j); std::memcmp(&u, &v, sizeof u) != 0) return false;
  return true;
}

using Scalars = ::testing::Types<float, double>;

}  // namespace moe::test

// EXPECT that a result matches a reference within tolerance<S>(), printing the error.
#define MOE_EXPECT_CLOSE(S, actual, expected)                                                   \
  EXPECT_LE(::moe::test::normalised_error((actual), (expected)), ::moe::test::tolerance<S>()) \
      << "normalised error of " #actual " against " #expected
