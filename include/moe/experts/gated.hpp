// GatedExpert: y = W2 · (act(W1 · x) ⊙ W3 · x), the gated FFN of Shazeer 2020 ("GLU variants").
// SwiGLU is Mixtral's expert: w1 is the activated branch, w3 the up projection, w2 the down.
//   w1, w3: [E, d_ff, d_model]   w2: [E, d_model, d_ff]   (no biases, as in Mixtral/DeepSeek/Qwen)
#pragma once

#include "moe/experts/activations.hpp"
#include "moe/experts/expert_config.hpp"
#include "moe/experts/param_bank.hpp"
#include "moe/train/parameters.hpp"

namespace moe {

template <class S, class Activation>
class GatedExpert {
 public:
  using Scalar = S;
  using Gradients = GatedExpert;  // gradients have the parameters' names and shapes

  explicit GatedExpert(const ExpertConfig& config) : GatedExpert(config, /*zeros=*/false) {}

  Index num_experts() const { return config_.num_experts; }
  Index d_model() const { return config_.d_model; }
  Index d_ff() const { return config_.d_ff; }
  const ExpertConfig& config() const { return config_; }

  // forward's working memory, kept for backward in training: h1 = x·w1ᵀ, h3 = x·w3ᵀ and
  // h = act(h1) ⊙ h3, each [n, d_ff].
  Index scratch_size(Index n) const { return 3 * n * config_.d_ff; }
  Index backward_scratch_size(Index n) const { return 2 * n * config_.d_ff; }

  // See the Expert concept.
  void forward(Index e, ConstMatrixRef<S> x, MatrixRef<S> y, std::span<S> scratch) const {
    detail::check_expert_call<S>("GatedExpert::forward", e, num_experts(), d_model(), x, y,
                                 scratch_size(x.rows()), scratch);
    const Index n = x.rows(), f = d_ff();
    Eigen::Map<RowMatrix<S>> h1(scratch.data(), n, f), h3(scratch.data() + n * f, n, f),
        h(scratch.data() + 2 * n * f, n, f);
    h1.noalias() = x * w1_[e].transpose();
    h3.noalias() = x * w3_[e].transpose();
    h.array() = Activation::apply(h1.array()) * h3.array();
    y.noalias() = h * w2_[e].transpose();
  }

  // See the TrainableExpert concept. With d_h = d_y·w2:
  //   d_w2 += d_yᵀ·h,  d_h1 = d_h ⊙ h3 ⊙ act'(h1),  d_h3 = d_h ⊙ act(h1),
  //   d_w1 += d_h1ᵀ·x, d_w3 += d_h3ᵀ·x,  d_x = d_h1·w1 + d_h3·w3.
  void backward(Index e, ConstMatrixRef<S> x, std::span<const S> saved, ConstMatrixRef<S> d_y, MatrixRef<S> d_x,
                Gradients& grads, std::span<S> scratch) const {
    detail::check_expert_backward<S>("GatedExpert::backward", e, num_experts(), d_model(), x, d_y, d_x,
                                     scratch_size(x.rows()), saved, backward_scratch_size(x.rows()), scratch);
    detail::check_same_shape("GatedExpert::backward", config_, grads.config_);
    const Index n = x.rows(), f = d_ff();
    const Eigen::Map<const RowMatrix<S>> h1(saved.data(), n, f), h3(saved.data() + n * f, n, f),
        h(saved.data() + 2 * n * f, n, f);
    Eigen::Map<RowMatrix<S>> d_h1(scratch.data(), n, f), d_h3(scratch.data() + n * f, n, f);
    grads.w2_[e].noalias() += d_y.transpose() * h;
    d_h3.noalias() = d_y * w2_[e];  // d_h for now
    d_h1.array() = d_h3.array() * h3.array() * Activation::derivative(h1.array());
    d_h3.array() *= Activation::apply(h1.array());
    grads.w1_[e].noalias() += d_h1.transpose() * x;
    grads.w3_[e].noalias() += d_h3.transpose() * x;
    d_x.noalias() = d_h1 * w1_[e];
    d_x.noalias() += d_h3 * w3_[e];
  }

  Gradients make_gradients() const { return GatedExpert(config_, /*zeros=*/true); }

  void collect_parameters(const std::string& prefix, ParameterList<S>& out) {
    add_parameter(out, prefix, "w1", w1_);
    add_parameter(out, prefix, "w2", w2_);
    add_parameter(out, prefix, "w3", w3_);
  }

  ParamBank<S>& w1() { return w1_; }
  const ParamBank<S>& w1() const { return w1_; }
  ParamBank<S>& w2() { return w2_; }
  const ParamBank<S>& w2() const { return w2_; }
  ParamBank<S>& w3() { return w3_; }
  const ParamBank<S>& w3() const { return w3_; }

 private:
  GatedExpert(const ExpertConfig& config, bool zeros) : config_(config) {
    detail::check_expert_config(config, "GatedExpert", /*needs_d_ff=*/true);
    detail::check_config(!config.bias, "GatedExpert", "bias = true but gated experts have no biases");
    const Index E = config.num_experts, d = config.d_model, f = config.d_ff;
    w1_ = ParamBank<S>(E, f, d);
    w3_ = ParamBank<S>(E, f, d);
    w2_ = ParamBank<S>(E, d, f);
    if (zeros) return;
    Generator rng(config.seed);
    w1_.init_uniform(d, rng);
    w3_.init_uniform(d, rng);
    w2_.init_uniform(f, rng);
  }

  ExpertConfig config_;
  ParamBank<S> w1_, w2_, w3_;
};

template <class S> using SwiGluExpert = GatedExpert<S, Silu>;
template <class S> using GeGluExpert = GatedExpert<S, Gelu>;

}  // namespace moe
