// LinearExpert: y = x·Wᵀ (+ b), one [d_model, d_model] matrix per expert.
#pragma once

#include "moe/experts/expert_config.hpp"
#include "moe/param_bank.hpp"
#include "moe/parameters.hpp"

namespace moe {

template <class S>
class LinearExpert {
 public:
  using Scalar = S;
  using Gradients = LinearExpert;  // gradients have the parameters' names and shapes

  explicit LinearExpert(const ExpertConfig& config) : LinearExpert(config, /*zeros=*/false) {}

  Index num_experts() const { return config_.num_experts; }
  Index d_model() const { return config_.d_model; }
  const ExpertConfig& config() const { return config_; }
  Index scratch_size(Index) const { return 0; }
  Index backward_scratch_size(Index) const { return 0; }

  // See the Expert concept.
  void forward(Index e, ConstMatrixRef<S> x, MatrixRef<S> y, std::span<S> scratch = {}) const {
    detail::check_expert_call<S>("LinearExpert::forward", e, num_experts(), d_model(), x, y, 0, scratch);
    y.noalias() = x * weight_[e].transpose();
    if (config_.bias) y.rowwise() += bias_[e].row(0);
  }

  // See the TrainableExpert concept: d_w += d_yᵀ·x, d_b += Σ_rows d_y, d_x = d_y·w.
  void backward(Index e, ConstMatrixRef<S> x, std::span<const S> saved, ConstMatrixRef<S> d_y, MatrixRef<S> d_x,
                Gradients& grads, std::span<S> scratch = {}) const {
    detail::check_expert_backward<S>("LinearExpert::backward", e, num_experts(), d_model(), x, d_y, d_x, 0,
                                     saved, 0, scratch);
    detail::check_same_shape("LinearExpert::backward", config_, grads.config_);
    grads.weight_[e].noalias() += d_y.transpose() * x;
    if (config_.bias) grads.bias_[e].row(0) += d_y.colwise().sum();
    d_x.noalias() = d_y * weight_[e];
  }

  Gradients make_gradients() const { return LinearExpert(config_, /*zeros=*/true); }

  void collect_parameters(const std::string& prefix, ParameterList<S>& out) {
    add_parameter(out, prefix, "weight", weight_);
    add_parameter(out, prefix, "bias", bias_);
  }

  ParamBank<S>& weight() { return weight_; }  // [E, d_model, d_model]
  const ParamBank<S>& weight() const { return weight_; }
  ParamBank<S>& bias() { return bias_; }      // [E, 1, d_model], empty without bias
  const ParamBank<S>& bias() const { return bias_; }

 private:
  LinearExpert(const ExpertConfig& config, bool zeros) : config_(config) {
    detail::check_expert_config(config, "LinearExpert", /*needs_d_ff=*/false);
    const Index E = config.num_experts, d = config.d_model;
    weight_ = ParamBank<S>(E, d, d);
    if (config.bias) bias_ = ParamBank<S>(E, 1, d);
    if (zeros || config.init == Init::zeros) return;
    Generator rng(config.seed);
    weight_.init_uniform(d, rng);
    if (config.bias) bias_.init_uniform(d, rng);
  }

  ExpertConfig config_;
  ParamBank<S> weight_, bias_;
};

}  // namespace moe
