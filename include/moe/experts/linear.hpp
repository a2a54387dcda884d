// LinearExpert: y = x·Wᵀ (+ b), one [d_model, d_model] matrix per expert.
#pragma once

#include "moe/experts/expert_config.hpp"
#include "moe/experts/param_bank.hpp"

namespace moe {

template <class S>
class LinearExpert {
 public:
  using Scalar = S;

  explicit LinearExpert(const ExpertConfig& config) : config_(config) {
    detail::check_expert_config(config, "LinearExpert", /*needs_d_ff=*/false);
    const Index E = config.num_experts, d = config.d_model;
    Generator rng(config.seed);
    weight_ = ParamBank<S>(E, d, d);
    weight_.init_uniform(d, rng);
    if (config.bias) {
      bias_ = ParamBank<S>(E, 1, d);
      bias_.init_uniform(d, rng);
    }
  }

  Index num_experts() const { return config_.num_experts; }
  Index d_model() const { return config_.d_model; }
  const ExpertConfig& config() const { return config_; }
  Index scratch_size(Index) const { return 0; }

  // See the Expert concept.
  void forward(Index e, ConstMatrixRef<S> x, MatrixRef<S> y, std::span<S> scratch = {}) const {
    detail::check_expert_call<S>("LinearExpert::forward", e, num_experts(), d_model(), x, y, 0, scratch);
    y.noalias() = x * weight_[e].transpose();
    if (config_.bias) y.rowwise() += bias_[e].row(0);
  }

  ParamBank<S>& weight() { return weight_; }        // [E, d_model, d_model]
  const ParamBank<S>& weight() const { return weight_; }
  ParamBank<S>& bias() { return bias_; }            // [E, 1, d_model], empty without bias
  const ParamBank<S>& bias() const { return bias_; }

 private:
  ExpertConfig config_;
  ParamBank<S> weight_, bias_;
};

}  // namespace moe
