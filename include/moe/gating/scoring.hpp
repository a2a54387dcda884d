// Score functions of router logits, forward and Jacobian: the one place that knows them.
//
//   softmax            s = softmax(z) over the E experts of a token
//   sigmoid            s = σ(z) = 1 / (1 + e^{−z}), expert by expert (DeepSeek-V3)
//   softmax_selected   scores are softmax(z); the combine weights are the softmax over the k
//                      selected logits only (Shazeer 2017; Mixtral's normalised top-k equals it)
//
// Gates compute plan.scores here and map every gradient with respect to them to the logits here:
// the auxiliary losses write d_scores and never need to know which function made the scores.
#pragma once

#include "moe/types.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace moe {

enum class Scoring {
  softmax,           // scores = softmax(logits); weights = the selected scores
  sigmoid,           // scores = σ(logits) (DeepSeek-V3); weights = the selected scores
  softmax_selected,  // select by logits; weights = softmax over the k selected logits
};

namespace scoring {

// The score functions run element by element with std::exp and sum in index order, so that a
// token's scores have the same bits wherever its row sits and whatever other rows there are
// (Eigen's vectorised exp and sums take a scalar path for the elements before an aligned
// address, and their bits differ from the vector path's).

// scores[t] = softmax(logits[t]), computed as exp(z − max z) / Σ exp(z − max z).
//   logits, scores: [T, E] (scores overwritten; they may be the same matrix)
template <class S>
void softmax_rows(ConstMatrixRef<S> logits, MatrixRef<S> scores) {
  const Index E = logits.cols();
  for (Index t = 0; t < logits.rows(); ++t) {
    S max = logits(t, 0);
    for (Index e = 1; e < E; ++e) max = std::max(max, logits(t, e));
    S sum = 0;
    for (Index e = 0; e < E; ++e) sum += (scores(t, e) = std::exp(logits(t, e) - max));
    for (Index e = 0; e < E; ++e) scores(t, e) /= sum;
  }
}

// scores = 1 / (1 + exp(−logits)), elementwise.
template <class S>
void sigmoid_rows(ConstMatrixRef<S> logits, MatrixRef<S> scores) {
  for (Index t = 0; t < logits.rows(); ++t)
    for (Index e = 0; e < logits.cols(); ++e) scores(t, e) = S(1) / (S(1) + std::exp(-logits(t, e)));
}

// scores = the score function of the logits (softmax_selected: softmax).
template <class S>
void score_rows(Scoring scoring, ConstMatrixRef<S> logits, MatrixRef<S> scores) {
  if (scoring == Scoring::sigmoid)
    sigmoid_rows<S>(logits, scores);
  else
    softmax_rows<S>(logits, scores);
}

// Softmax of a short vector in place: the k selected logits of one token.
template <class S>
void softmax_inplace(S* values, Index n) {
  S max = values[0];
  for (Index i = 1; i < n; ++i) max = std::max(max, values[i]);
  S sum = 0;
  for (Index i = 0; i < n; ++i) sum += (values[i] = std::exp(values[i] - max));
  for (Index i = 0; i < n; ++i) values[i] /= sum;
}

// log Σ_e exp(z_e) of one row, stable for large |z| (its gradient is softmax(z)).
template <class Derived>
typename Derived::Scalar log_sum_exp(const Eigen::MatrixBase<Derived>& z) {
  using S = typename Derived::Scalar;
  const S max = z.maxCoeff();
  return max + std::log((z.array() - max).exp().sum());
}

// ---- Jacobians: d_z += (∂s/∂z)ᵀ · d_s for one token ------------------------------------------
//   softmax: d_z_e += s_e · (d_s_e − ⟨d_s, s⟩)        sigmoid: d_z_e += d_s_e · s_e (1 − s_e)

// A dense d_s in S (the combine weights of a gate whose every slot is an expert).
//   s, d_s, d_z: [E] (d_z accumulated)
template <class A, class B, class C>
void softmax_backward_add(const Eigen::MatrixBase<A>& s, const Eigen::MatrixBase<B>& d_s, Eigen::MatrixBase<C>& d_z) {
  const auto dot = d_s.dot(s);
  d_z.array() += s.array() * (d_s.array() - dot);
}

// A dense d_s in double (what the auxiliary losses write), added to d_z in S.
//   scores: [E] of the token;  d_scores: [E];  d_logits: [E] (accumulated)
template <class S>
void add_scores_backward(Scoring scoring, const S* scores, const double* d_scores, Index E, S* d_logits) {
  if (scoring == Scoring::sigmoid) {
    for (Index e = 0; e < E; ++e) {
      const double s = static_cast<double>(scores[e]);
      d_logits[e] += static_cast<S>(d_scores[e] * s * (1.0 - s));
    }
    return;
  }
  double dot = 0;
  for (Index e = 0; e < E; ++e) dot += static_cast<double>(scores[e]) * d_scores[e];
  for (Index e = 0; e < E; ++e) {
    const double s = static_cast<double>(scores[e]);
    d_logits[e] += static_cast<S>(s * (d_scores[e] - dot));
  }
}

// A d_s that is zero but at the k selected experts ids[j], where it is d_selected[j] (a top-k gate's
// combine weights are functions of the selected scores).
//   scores, d_logits: [E] of the token (d_logits accumulated);  ids, d_selected: [k]
template <class S>
void add_selected_scores_backward(Scoring scoring, const S* scores, const std::int32_t* ids, const S* d_selected,
                                  Index k, Index E, S* d_logits) {
  if (scoring == Scoring::sigmoid) {
    for (Index j = 0; j < k; ++j) {
      const S s = scores[ids[j]];
      d_logits[ids[j]] += d_selected[j] * s * (S(1) - s);
    }
    return;
  }
  using Row = Eigen::Matrix<S, 1, Eigen::Dynamic>;
  S dot = 0;
  for (Index j = 0; j < k; ++j) dot += d_selected[j] * scores[ids[j]];
  Eigen::Map<Row>(d_logits, E) -= dot * Eigen::Map<const Row>(scores, E);
  for (Index j = 0; j < k; ++j) d_logits[ids[j]] += d_selected[j] * scores[ids[j]];
}

// Softmax over the selected logits, w = scale · softmax(z[ids]): d_z[ids[j]] += w_j (d_w_j − ⟨d_w, w⟩ / scale).
//   weights, d_weights: [k] of the token;  d_logits: [E] (accumulated)
template <class S>
void add_softmax_selected_backward(const S* weights, const S* d_weights, const std::int32_t* ids, Index k, S scale,
                                   S* d_logits) {
  S dot = 0;  // ⟨d_p, p⟩ with p = w / scale, d_p = scale · d_w
  for (Index j = 0; j < k; ++j) dot += d_weights[j] * weights[j];
  for (Index j = 0; j < k; ++j) d_logits[ids[j]] += weights[j] * (d_weights[j] - dot / scale);
}

}  // namespace scoring
}  // namespace moe
