// Plain reference loops for the kernels' products: a triple loop in double, written from the
// definition C = A·B and not from the kernels' packing or blocking.
#pragma once

#include <moe/types.hpp>

namespace moe::test::reference {

// c(i, j) = Σ_k a(i, k) · b(k, j) in double, k ascending.
//   a: [m, depth];  b: [depth, n];  returns [m, n]
template <class A, class B>
RowMatrix<double> product(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  RowMatrix<double> c = RowMatrix<double>::Zero(a.rows(), b.cols());
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < b.cols(); ++j)
      for (Index k = 0; k < a.cols(); ++k) c(i, j) += double(a(i, k)) * double(b(k, j));
  return c;
}

}  // namespace moe::test::reference
