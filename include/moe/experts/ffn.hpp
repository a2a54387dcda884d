// FfnExpert: y = W2 · act(W1 · x + b1) + b2 (biases optional), the classic transformer FFN.
//   w1: [E, d_ff, d_model]   w2: [E, d_model, d_ff]   b1: [E, 1, d_ff]   b2: [E, 1, d_model]
#pragma once

#include "moe/experts/activations.hpp"
#include "moe/experts/expert_config.hpp"
#include "moe/experts/param_bank.hpp"
#include "moe/train/parameters.hpp"

namespace moe {

template <class S, class Activation>
class FfnExpert {
 public:
  using Scalar = S;
  using Gradients = FfnExpert;  // gradients have the parameters' names and shapes

  explicit FfnExpert(const ExpertConfig& config) : FfnExpert(config, /*zeros=*/false) {}

  Index num_experts() const { return config_.num_experts; }
  Index d_model() const { return config_.d_model; }
  Index d_ff() const { return config_.d_ff; }
  const ExpertConfig& config() const { return config_; }

  // forward's working memory, kept for backward in training: a = x·w1ᵀ + b1 and h = act(a),
  // each [n, d_ff].
  Index scratch_size(Index n) const { return 2 * n * config_.d_ff; }
  Index backward_scratch_size(Index n) const { return n * config_.d_ff; }

  // See the Expert concept.
  void forward(Index e, ConstMatrixRef<S> x, MatrixRef<S> y, std::span<S> scratch) const {
    detail::check_expert_call<S>("FfnExpert::forward", e, num_experts(), d_model(), x, y,
                                 scratch_size(x.rows()), scratch);
    const Index n = x.rows(), f = d_ff();
    Eigen::Map<RowMatrix<S>> a(scratch.data(), n, f), h(scratch.data() + n * f, n, f);
    a.noalias() = x * w1_[e].transpose();
    if (config_.bias) a.rowwise() += b1_[e].row(0);
    h.array() = Activation::apply(a.array());
    y.noalias() = h * w2_[e].transpose();
    if (config_.bias) y.rowwise() += b2_[e].row(0);
  }

  // See the TrainableExpert concept:
  //   d_w2 += d_yᵀ·h, d_b2 += Σ_rows d_y, d_a = (d_y·w2) ⊙ act'(a), d_w1 += d_aᵀ·x,
  //   d_b1 += Σ_rows d_a, d_x = d_a·w1.
  void backward(Index e, ConstMatrixRef<S> x, std::span<const S> saved, ConstMatrixRef<S> d_y, MatrixRef<S> d_x,
                Gradients& grads, std::span<S> scratch) const {
    detail::check_expert_backward<S>("FfnExpert::backward", e, num_experts(), d_model(), x, d_y, d_x,
                                     scratch_size(x.rows()), saved, backward_scratch_size(x.rows()), scratch);
    detail::check_same_shape("FfnExpert::backward", config_, grads.config_);
    const Index n = x.rows(), f = d_ff();
    const Eigen::Map<const RowMatrix<S>> a(saved.data(), n, f), h(saved.data() + n * f, n, f);
    Eigen::Map<RowMatrix<S>> d_a(scratch.data(), n, f);
    grads.w2_[e].noalias() += d_y.transpose() * h;
    d_a.noalias() = d_y * w2_[e];
    d_a.array() *= Activation::derivative(a.array());
    grads.w1_[e].noalias() += d_a.transpose() * x;
    if (config_.bias) {
      grads.b2_[e].row(0) += d_y.colwise().sum();
      grads.b1_[e].row(0) += d_a.colwise().sum();
    }
    d_x.noalias() = d_a * w1_[e];
  }

  Gradients make_gradients() const { return FfnExpert(config_, /*zeros=*/true); }

  void collect_parameters(const std::string& prefix, ParameterList<S>& out) {
    add_parameter(out, prefix, "w1", w1_);
    add_parameter(out, prefix, "b1", b1_);
    add_parameter(out, prefix, "w2", w2_);
    add_parameter(out, prefix, "b2", b2_);
  }

  ParamBank<S>& w1() { return w1_; }
  const ParamBank<S>& w1() const { return w1_; }
  ParamBank<S>& w2() { return w2_; }
  const ParamBank<S>& w2() const { return w2_; }
  ParamBank<S>& b1() { return b1_; }  // empty without bias
  const ParamBank<S>& b1() const { return b1_; }
  ParamBank<S>& b2() { return b2_; }
  const ParamBank<S>& b2() const { return b2_; }

 private:
  FfnExpert(const ExpertConfig& config, bool zeros) : config_(config) {
    detail::check_expert_config(config, "FfnExpert", /*needs_d_ff=*/true);
    const Index E = config.num_experts, d = config.d_model, f = config.d_ff;
    w1_ = ParamBank<S>(E, f, d);
    w2_ = ParamBank<S>(E, d, f);
    if (config.bias) {
      b1_ = ParamBank<S>(E, 1, f);
      b2_ = ParamBank<S>(E, 1, d);
    }
    if (zeros) return;
    Generator rng(config.seed);
    w1_.init_uniform(d, rng);
    w2_.init_uniform(f, rng);
    if (config.bias) {
      b1_.init_uniform(d, rng);
      b2_.init_uniform(f, rng);
    }
  }

  ExpertConfig config_;
  ParamBank<S> w1_, w2_, b1_, b2_;
};

template <class S> using ReluExpert = FfnExpert<S, Relu>;
template <class S> using GeluExpert = FfnExpert<S, Gelu>;
template <class S> using GeluTanhExpert = FfnExpert<S, GeluTanh>;
template <class S> using SiluExpert = FfnExpert<S, Silu>;

}  // namespace moe
