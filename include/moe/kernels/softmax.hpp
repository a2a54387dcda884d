// Row-wise score functions of router logits.
//   logits, scores: [T, E]; scores overwritten. Aliasing logits and scores is allowed.
#pragma once

#include "moe/types.hpp"

#include <cmath>

namespace moe::kernels {

// scores[t] = softmax(logits[t]), computed as exp(z - max z) / Σ exp(z - max z).
template <class S>
void softmax_rows(ConstMatrixRef<S> logits, MatrixRef<S> scores) {
  for (Index t = 0; t < logits.rows(); ++t) {
    const S max = logits.row(t).maxCoeff();
    scores.row(t) = (logits.row(t).array() - max).exp();
    scores.row(t) /= scores.row(t).sum();
  }
}

// scores = 1 / (1 + exp(-logits)), elementwise.
template <class S>
void sigmoid(ConstMatrixRef<S> logits, MatrixRef<S> scores) {
  scores = (S(1) + (-logits.array()).exp()).inverse().matrix();
}

// log Σ_e exp(z_e) of one row, stable for large |z|.
template <class Derived>
typename Derived::Scalar log_sum_exp(const Eigen::MatrixBase<Derived>& z) {
  using S = typename Derived::Scalar;
  const S max = z.maxCoeff();
  return max + std::log((z.array() - max).exp().sum());
}

// Softmax backward of one row: d_z = s ⊙ (d_s − ⟨d_s, s⟩), added into d_z.
//   s, d_s, d_z: [E] (d_z accumulated)
template <class A, class B, class C>
void softmax_backward_add(const Eigen::MatrixBase<A>& s, const Eigen::MatrixBase<B>& d_s, Eigen::MatrixBase<C>& d_z) {
  const auto dot = d_s.dot(s);
  d_z.array() += s.array() * (d_s.array() - dot);
}

// Softmax of a short vector in place (used for the selected logits of one token).
template <class S>
void softmax_inplace(S* values, Index n) {
  S max = values[0];
  for (Index i = 1; i < n; ++i) max = std::max(max, values[i]);
  S sum = 0;
  for (Index i = 0; i < n; ++i) sum += (values[i] = std::exp(values[i] - max));
  for (Index i = 0; i < n; ++i) values[i] /= sum;
}

}  // namespace moe::kernels
