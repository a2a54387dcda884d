// Router: the gate's linear projection, logits = x·Wgᵀ (+ b), with the finiteness check that
// every gate relies on (top-k and sorting are undefined on NaN).
//   weight: [E, d_model] (torch.nn.Linear layout, HF name `gate.weight`)   bias: [E]
#pragma once

#include "moe/detail/aligned_allocator.hpp"
#include "moe/errors.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/parameters.hpp"
#include "moe/random.hpp"
#include "moe/types.hpp"

#include <span>
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

  // logits = x·Wgᵀ (+ b), with `work` as the product's scratch.
  //   x: [T, d_model];  logits: [T, E] (overwritten)
  //   throws: std::domain_error "<who>: router logits of token t are not finite" (a NaN or ±inf
  //           in x or in the weights ends here).
  // The products here are kernels::gemm's, in which every element is one sum in a fixed order: a
  // token's logits (and backward's d_x row) have the same bits whatever other tokens the call has
  // (Eigen's have not: a single token takes its matrix-vector path, and its blocking follows the
  // batch), so a batch split into chunks or over processes routes as the whole batch does.
  void project(ConstMatrixRef<S> x, MatrixRef<S> logits, std::string_view who, detail::AlignedVector<S>& work) const {
    const Index d = d_model();
    kernels::gemm<S>(kernels::strided<S>(x), kernels::Strided<S>{weight_.data(), 1, d}, d, logits, false,
                     scratch(work, kernels::gemm_workspace_size<S>(x.rows(), num_experts(), d)));
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
  void backward(ConstMatrixRef<S> x, ConstMatrixRef<S> d_logits, MatrixRef<S> d_x, Router& grads,
                detail::AlignedVector<S>& work) const {
    grads.weight_.noalias() += d_logits.transpose() * x;
    if (has_bias_) grads.bias_ += d_logits.colwise().sum().transpose();
    const Index d = d_model(), E = num_experts();
    kernels::gemm<S>(kernels::strided<S>(d_logits), kernels::strided<S>(weight_), E, d_x, true,
                     scratch(work, kernels::gemm_workspace_size<S>(x.rows(), d, E)));
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
  static std::span<S> scratch(detail::AlignedVector<S>& work, Index size) {
    if (Index(work.size()) < size) work.resize(static_cast<std::size_t>(size));
    return {work.data(), work.size()};
  }

  RowMatrix<S> weight_;
  Vector<S> bias_;
  bool has_bias_ = false;
};

}  // namespace moe
