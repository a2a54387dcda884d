// DenseGate: the classic mixture of experts (Jacobs, Jordan, Nowlan & Hinton 1991, "Adaptive
// mixtures of local experts"): every token goes to every expert, weighted by softmax(x·Wgᵀ + b).
// Slot j of every token is expert j.
#pragma once

#include "moe/detail/scratch.hpp"
#include "moe/gating/router.hpp"
#include "moe/gating/scoring.hpp"
#include "moe/routing.hpp"

#include <cstdint>

namespace moe {

struct DenseGateConfig {
  Index d_model = 0;
  Index num_experts = 0;
  bool router_bias = true;
  std::uint64_t seed = 0;
};

template <class S>
class DenseGate {
 public:
  using Scalar = S;

  explicit DenseGate(const DenseGateConfig& config) : config_(config) {
    detail::check_config(config.d_model >= 1, "DenseGate", "d_model = ", config.d_model, " but must be >= 1");
    detail::check_config(config.num_experts >= 1, "DenseGate", "num_experts = ", config.num_experts,
                         " but must be >= 1");
    Generator rng(config.seed);
    router_ = Router<S>(config.d_model, config.num_experts, config.router_bias, rng);
  }

  Index d_model() const { return config_.d_model; }
  Index num_experts() const { return config_.num_experts; }
  Index slots_per_token() const { return config_.num_experts; }
  const DenseGateConfig& config() const { return config_; }

  // See the Gate and ConcurrentGate concepts. Deterministic in both modes.
  void route(ConstMatrixRef<S> x, RoutingPlan<S>& plan, Mode) const { route(x, plan); }
  void route(ConstMatrixRef<S> x, RoutingPlan<S>& plan) const {
    detail::check_dim("DenseGate::route", "x.cols()", x.cols(), "d_model", d_model());
    const Index T = x.rows(), E = num_experts();
    plan.reset(T, E, E);
    router_.project(x, plan.logits, "DenseGate::route", plan.work.product);
    scoring::softmax_rows<S>(plan.logits, plan.scores);
    for (Index t = 0; t < T; ++t)
      for (Index e = 0; e < E; ++e) plan.expert(t, e) = static_cast<std::int32_t>(e);
    plan.weight = plan.scores;
  }

  using Gradients = DenseGate;  // gradients have the parameters' names and shapes
  Gradients make_gradients() const {
    DenseGate zeros = *this;
    zeros.router_ = router_.zeros_like();
    return zeros;
  }
  void collect_parameters(const std::string& prefix, ParameterList<S>& out) { router_.collect_parameters(prefix, out); }

  // See the TrainableGate concept. weight = scores = softmax(logits), so
  //   d_logits += softmax backward of d_scores and of d_weight (slot e is expert e).
  void backward(ConstMatrixRef<S> x, const RoutingPlan<S>& plan, const RouterGradients<S>& grads, MatrixRef<S> d_x,
                Gradients& param_grads) {
    detail::check_dim("DenseGate::backward", "d_x.rows()", d_x.rows(), "x.rows()", x.rows());
    d_logits_ = grads.d_logits;
    for (Index t = 0; t < x.rows(); ++t) {
      auto row = d_logits_.row(t);
      scoring::add_scores_backward(Scoring::softmax, plan.scores.row(t).data(), grads.d_scores.row(t).data(),
                                   num_experts(), row.data());
      scoring::softmax_backward_add(plan.scores.row(t), grads.d_weight.row(t), row);
    }
    router_.backward(x, d_logits_, d_x, param_grads.router_, product_);
  }

  Router<S>& router() { return router_; }
  const Router<S>& router() const { return router_; }

 private:
  DenseGateConfig config_;
  Router<S> router_;
  detail::Scratch<RowMatrix<S>> d_logits_;  // backward's
  detail::Scratch<detail::AlignedVector<S>> product_;
};

}  // namespace moe
