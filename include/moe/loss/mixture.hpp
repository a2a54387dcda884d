// The mixture-of-experts losses of Jacobs, Jordan, Nowlan & Hinton 1991, "Adaptive mixtures of
// local experts" (Neural Computation 3(1)), for a layer whose gate weights p_i sum to 1 over the
// experts that see a token (DenseGate; top-k with renormalisation works the same on its k):
//
//   cooperative   L_t = ‖d − Σ_i p_i o_i‖²               experts share the error (eq. 1)
//   competitive   L_t = Σ_i p_i ‖d − o_i‖²               each expert fits d alone (eq. 2)
//   likelihood    L_t = −log Σ_i p_i exp(−½‖d − o_i‖²)   the mixture's negative log-likelihood (eq. 3)
//
// d = target[t], o_i = the unweighted output of token t's i-th expert, L = mean over tokens.
// These losses look at each expert's output, so they drive SparseMoE::backward_experts() instead
// of backward(): they return ∂L/∂o (batch order) and ∂L/∂p (per slot). They read the outputs where
// a layer of one process keeps them (SparseMoE's LocalExchange: the batch is in dispatch order).
#pragma once

#include "moe/errors.hpp"
#include "moe/routing.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace moe {

enum class MixtureLoss { cooperative, competitive, likelihood };

// Returns L and writes its gradients.
//   cache: a training forward's LayerCache of a SparseMoE;  target: [T, d_model]
//   d_expert_out: [rows, d_model] (overwritten);  d_weight: [T, k] (overwritten)
// Shared experts are not part of these losses (the classic mixture has none).
template <class S, class Cache>
double mixture_loss(MixtureLoss kind, const Cache& cache, ConstMatrixRef<S> target, MatrixRef<S> d_expert_out,
                    MatrixRef<S> d_weight) {
  constexpr const char* who = "mixture_loss";
  const RoutingPlan<S>& plan = cache.tokens.plan;
  const DispatchPlan& dispatch = cache.tokens.dispatch;
  const RowMatrix<S>& expert_out = cache.experts.batch.out;
  const Index T = plan.num_tokens(), k = plan.slots_per_token(), rows = dispatch.num_rows();
  detail::check_dim(who, "target.rows()", target.rows(), "tokens", T);
  detail::check_dim(who, "target.cols()", target.cols(), "d_model", expert_out.cols());
  detail::check_dim(who, "d_expert_out.rows()", d_expert_out.rows(), "dispatch rows", rows);
  detail::check_dim(who, "d_expert_out.cols()", d_expert_out.cols(), "d_model", target.cols());
  detail::check_dim(who, "d_weight.rows()", d_weight.rows(), "tokens", T);
  detail::check_dim(who, "d_weight.cols()", d_weight.cols(), "slots", k);
  d_weight.setZero();
  d_expert_out.setZero();
  if (T == 0) return 0.0;

  const S inv_T = S(1) / S(T);
  const auto out = [&](Index r) { return expert_out.row(r); };
  double total = 0;
  for (Index t = 0; t < T; ++t) {
    const auto d = target.row(t);
    const auto slot = [&](Index j) { return dispatch.row[t * k + j]; };
    if (kind == MixtureLoss::cooperative) {
      // y = Σ p_i o_i;  ∂/∂o_i = 2 p_i (y − d);  ∂/∂p_i = 2 ⟨y − d, o_i⟩.
      Eigen::Matrix<S, 1, Eigen::Dynamic> residual = -d;
      for (Index j = 0; j < k; ++j)
        if (slot(j) != kEmptySlot) residual += plan.weight(t, j) * out(slot(j));
      total += double(residual.squaredNorm());
      for (Index j = 0; j < k; ++j)
        if (const auto r = slot(j); r != kEmptySlot) {
          d_expert_out.row(r) = (2 * inv_T * plan.weight(t, j)) * residual;
          d_weight(t, j) = 2 * inv_T * residual.dot(out(r));
        }
    } else if (kind == MixtureLoss::competitive) {
      // ∂/∂o_i = 2 p_i (o_i − d);  ∂/∂p_i = ‖d − o_i‖².
      for (Index j = 0; j < k; ++j)
        if (const auto r = slot(j); r != kEmptySlot) {
          const S error = (out(r) - d).squaredNorm();
          total += double(plan.weight(t, j) * error);
          d_expert_out.row(r) = (2 * inv_T * plan.weight(t, j)) * (out(r) - d);
          d_weight(t, j) = inv_T * error;
        }
    } else {
      // a_i = log p_i − ½‖d − o_i‖²,  L_t = −logsumexp(a),  q = softmax(a) (the posterior):
      // ∂/∂o_i = q_i (o_i − d);  ∂/∂p_i = −exp(−½‖d − o_i‖² − logsumexp(a)).
      S max = -std::numeric_limits<S>::infinity();
      for (Index j = 0; j < k; ++j)
        if (const auto r = slot(j); r != kEmptySlot)
          max = std::max(max, std::log(plan.weight(t, j)) - S(0.5) * (out(r) - d).squaredNorm());
      S sum = 0;
      for (Index j = 0; j < k; ++j)
        if (const auto r = slot(j); r != kEmptySlot)
          sum += std::exp(std::log(plan.weight(t, j)) - S(0.5) * (out(r) - d).squaredNorm() - max);
      const S lse = max + std::log(sum);
      total -= double(lse);
      for (Index j = 0; j < k; ++j)
        if (const auto r = slot(j); r != kEmptySlot) {
          const S half_error = S(0.5) * (out(r) - d).squaredNorm();
          const S likelihood = std::exp(-half_error - lse);  // e_i / Σ_j p_j e_j
          d_expert_out.row(r) = (inv_T * plan.weight(t, j) * likelihood) * (out(r) - d);
          d_weight(t, j) = -inv_T * likelihood;
        }
    }
  }
  return total / double(T);
}

}  // namespace moe
