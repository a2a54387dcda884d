// GatedExpert: y = W2 · (act(W1 · x) ⊙ W3 · x), the gated FFN of Shazeer 2020 ("GLU variants").
// SwiGLU is Mixtral's expert: w1 is the activated branch, w3 the up projection, w2 the down.
//   w1, w3: [E, d_ff, d_model]   w2: [E, d_model, d_ff]   (no biases, as in Mixtral/DeepSeek/Qwen)
#pragma once

#include "moe/experts/activations.hpp"
#include "moe/experts/expert_config.hpp"
#include "moe/experts/param_bank.hpp"

namespace moe {

template <class S, class Activation>
class GatedExpert {
 public:
  using Scalar = S;

  explicit GatedExpert(const ExpertConfig& config) : config_(config) {
    detail::check_expert_config(config, "GatedExpert", /*needs_d_ff=*/true);
    detail::check_config(!config.bias, "GatedExpert", "bias = true but gated experts have no biases");
    const Index E = config.num_experts, d = config.d_model, f = config.d_ff;
    Generator rng(config.seed);
    w1_ = ParamBank<S>(E, f, d);
    w1_.init_uniform(d, rng);
    w3_ = ParamBank<S>(E, f, d);
    w3_.init_uniform(d, rng);
    w2_ = ParamBank<S>(E, d, f);
    w2_.init_uniform(f, rng);
  }

  Index num_experts() const { return config_.num_experts; }
  Index d_model() const { return config_.d_model; }
  Index d_ff() const { return config_.d_ff; }
  const ExpertConfig& config() const { return config_; }
  Index scratch_size(Index n) const { return 2 * n * config_.d_ff; }

  // See the Expert concept. scratch holds the two hidden blocks [n, d_ff]: act(x·w1ᵀ) and x·w3ᵀ.
  void forward(Index e, ConstMatrixRef<S> x, MatrixRef<S> y, std::span<S> scratch) const {
    detail::check_expert_call<S>("GatedExpert::forward", e, num_experts(), d_model(), x, y,
                                 scratch_size(x.rows()), scratch);
    const Index n = x.rows(), f = d_ff();
    Eigen::Map<RowMatrix<S>> gate(scratch.data(), n, f), up(scratch.data() + n * f, n, f);
    gate.noalias() = x * w1_[e].transpose();
    up.noalias() = x * w3_[e].transpose();
    gate.array() = Activation::apply(gate.array()) * up.array();
    y.noalias() = gate * w2_[e].transpose();
  }

  ParamBank<S>& w1() { return w1_; }
  const ParamBank<S>& w1() const { return w1_; }
  ParamBank<S>& w2() { return w2_; }
  const ParamBank<S>& w2() const { return w2_; }
  ParamBank<S>& w3() { return w3_; }
  const ParamBank<S>& w3() const { return w3_; }

 private:
  ExpertConfig config_;
  ParamBank<S> w1_, w2_, w3_;
};

template <class S> using SwiGluExpert = GatedExpert<S, Silu>;
template <class S> using GeGluExpert = GatedExpert<S, Gelu>;

}  // namespace moe
