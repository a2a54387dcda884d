// FfnExpert: y = W2 · act(W1 · x + b1) + b2 (biases optional), the classic transformer FFN.
//   w1: [E, d_ff, d_model]   w2: [E, d_model, d_ff]   b1: [E, 1, d_ff]   b2: [E, 1, d_model]
#pragma once

#include "moe/experts/activations.hpp"
#include "moe/experts/expert_config.hpp"
#include "moe/experts/param_bank.hpp"

namespace moe {

template <class S, class Activation>
class FfnExpert {
 public:
  using Scalar = S;

  explicit FfnExpert(const ExpertConfig& config) : config_(config) {
    detail::check_expert_config(config, "FfnExpert", /*needs_d_ff=*/true);
    const Index E = config.num_experts, d = config.d_model, f = config.d_ff;
    Generator rng(config.seed);
    w1_ = ParamBank<S>(E, f, d);
    w1_.init_uniform(d, rng);
    w2_ = ParamBank<S>(E, d, f);
    w2_.init_uniform(f, rng);
    if (config.bias) {
      b1_ = ParamBank<S>(E, 1, f);
      b1_.init_uniform(d, rng);
      b2_ = ParamBank<S>(E, 1, d);
      b2_.init_uniform(f, rng);
    }
  }

  Index num_experts() const { return config_.num_experts; }
  Index d_model() const { return config_.d_model; }
  Index d_ff() const { return config_.d_ff; }
  const ExpertConfig& config() const { return config_; }
  Index scratch_size(Index n) const { return n * config_.d_ff; }

  // See the Expert concept. scratch holds the hidden activations h: [n, d_ff].
  void forward(Index e, ConstMatrixRef<S> x, MatrixRef<S> y, std::span<S> scratch) const {
    detail::check_expert_call<S>("FfnExpert::forward", e, num_experts(), d_model(), x, y,
                                 scratch_size(x.rows()), scratch);
    Eigen::Map<RowMatrix<S>> h(scratch.data(), x.rows(), d_ff());
    h.noalias() = x * w1_[e].transpose();
    if (config_.bias) h.rowwise() += b1_[e].row(0);
    h.array() = Activation::apply(h.array());
    y.noalias() = h * w2_[e].transpose();
    if (config_.bias) y.rowwise() += b2_[e].row(0);
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
  ExpertConfig config_;
  ParamBank<S> w1_, w2_, b1_, b2_;
};

template <class S> using ReluExpert = FfnExpert<S, Relu>;
template <class S> using GeluExpert = FfnExpert<S, Gelu>;
template <class S> using GeluTanhExpert = FfnExpert<S, GeluTanh>;
template <class S> using SiluExpert = FfnExpert<S, Silu>;

}  // namespace moe
