// Router: the gate's linear projection, logits = x·Wgᵀ (+ b), with the finiteness check that
// every gate relies on (top-k and sorting are undefined on NaN).
//   weight: [E, d_model] (torch.nn.Linear layout, HF name `gate.weight`)   bias: [E]
#pragma once

#include "moe/errors.hpp"
#include "moe/random.hpp"
#include "moe/parameters.hpp"
#include "moe/types.hpp"

#include <stdexcept>
#include <string_view>

namespace moe {

template <class S>
class Router {
 public:
  Router() = default;
  Router(Index d_model, Index num_experts, bool bias, Generator& rng)
      : weight_(num_experts, d_model), has_bias_(bias) {
    init_linear_uniform(weight_, d_model, rng);
    bias_.setZero(bias ? num_experts : 0);
    if (bias) init_linear_uniform(bias_, d_model, rng);
  }

  Index d_model() const { return weight_.cols(); }
  Index num_experts() const { return weight_.rows(); }
  bool has_bias() const { return has_bias_; }

  // logits = x·Wgᵀ (+ b)
  //   x: [T, d_model];  logits: [T, E] (overwritten)
  //   throws: std::domain_error "<who>: router logits of token t are not finite" (a NaN or ±inf
  //           in x or in the weights ends here).
  void project(ConstMatrixRef<S> x, MatrixRef<S> logits, std::string_view who) const {
    logits.noalias() = x * weight_.transpose();
    if (has_bias_) logits.rowwise() += bias_.transpose();
    check_finite(logits, who);
  }

  static void check_finite(ConstMatrixRef<S> logits, std::string_view who) {
    for (Index t = 0; t < logits.rows(); ++t)
      if (!logits.row(t).allFinite())
        MOE_THROW(std::domain_error(detail::concat(who, ": router logits of token ", t, " are not finite")));
  }

  // d_x += d_logits·Wg; grads.weight += d_logitsᵀ·x; grads.bias += Σ_t d_logits (all accumulated).
  //   x: [T, d_model] (what the router saw);  d_logits: [T, E];  d_x: [T, d_model]
  void backward(ConstMatrixRef<S> x, ConstMatrixRef<S> d_logits, MatrixRef<S> d_x, Router& grads) const {
    grads.weight_.noalias() += d_logits.transpose() * x;
    if (has_bias_) grads.bias_ += d_logits.colwise().sum().transpose();
    d_x.noalias() += d_logits * weight_;
  }

  // A router of the same shape with every parameter zero (its gradients).
  Router zeros_like() const {
    Router zeros;
    zeros.weight_.setZero(weight_.rows(), weight_.cols());
    zeros.bias_.setZero(bias_.size());
    zeros.has_bias_ = has_bias_;
    return zeros;
  }

  void collect_parameters(const std::string& prefix, ParameterList<S>& out) {
    add_parameter(out, prefix, "weight", weight_);
    add_parameter(out, prefix, "bias", bias_);
  }

  RowMatrix<S>& weight() { return weight_; }
  const RowMatrix<S>& weight() const { return weight_; }
  Vector<S>& bias() { return bias_; }  // empty without bias
  const Vector<S>& bias() const { return bias_; }

 private:
  RowMatrix<S> weight_;
  Vector<S> bias_;
  bool has_bias_ = false;
};

}  // namespace moe
