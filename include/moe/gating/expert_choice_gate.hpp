// ExpertChoiceGate (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing"): experts
// choose tokens. Scores are softmax(x·Wgᵀ) over the experts of each token; expert e takes the C
// tokens with the highest score for e, C = ceil(capacity_factor · T / E) (at most T), equal scores
// going to the lower token. A token may be taken by any number of experts, including none; its
// slot e holds expert e (weight = its score) or kEmptySlot.
#pragma once

#include "moe/detail/scratch.hpp"
#include "moe/gating/capacity.hpp"
#include "moe/gating/router.hpp"
#include "moe/gating/scoring.hpp"
#include "moe/kernels/top_k.hpp"
#include "moe/routing.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace moe {

struct ExpertChoiceGateConfig {
  Index d_model = 0;
  Index num_experts = 0;
  double capacity_factor = 2.0;  // the paper's c: the mean number of experts per token
  bool router_bias = false;
  std::uint64_t seed = 0;
};

template <class S>
class ExpertChoiceGate {
 public:
  using Scalar = S;

  explicit ExpertChoiceGate(const ExpertChoiceGateConfig& config) : config_(config) {
    constexpr const char* who = "ExpertChoiceGate";
    detail::check_config(config.d_model >= 1, who, "d_model = ", config.d_model, " but must be >= 1");
    detail::check_config(config.num_experts >= 1, who, "num_experts = ", config.num_experts, " but must be >= 1");
    detail::check_config(std::isfinite(config.capacity_factor) && config.capacity_factor > 0, who,
                         "capacity factor = ", config.capacity_factor, " but must be finite and > 0");
    Generator rng(config.seed);
    router_ = Router<S>(config.d_model, config.num_experts, config.router_bias, rng);
  }

  Index d_model() const { return config_.d_model; }
  Index num_experts() const { return config_.num_experts; }
  Index slots_per_token() const { return config_.num_experts; }
  const ExpertChoiceGateConfig& config() const { return config_; }

  // Tokens each expert takes for a batch of T tokens.
  Index capacity(Index num_tokens) const {
    const double ideal = config_.capacity_factor * static_cast<double>(num_tokens) / static_cast<double>(num_experts());
    return std::min(num_tokens, detail::ceil_exact(ideal));
  }

  // See the Gate and ConcurrentGate concepts. Deterministic in both modes.
  void route(ConstMatrixRef<S> x, RoutingPlan<S>& plan, Mode) const { route(x, plan); }
  void route(ConstMatrixRef<S> x, RoutingPlan<S>& plan) const {
    detail::check_dim("ExpertChoiceGate::route", "x.cols()", x.cols(), "d_model", d_model());
    const Index T = x.rows(), E = num_experts(), C = capacity(T);
    plan.reset(T, E, E);
    router_.project(x, plan.logits, "ExpertChoiceGate::route", plan.work.product);
    scoring::softmax_rows<S>(plan.logits, plan.scores);
    if (C == 0) return;
    Vector<S>& column = plan.work.values;
    std::vector<std::int32_t>& chosen = plan.work.ids;
    chosen.resize(static_cast<std::size_t>(C));
    for (Index e = 0; e < E; ++e) {
      column = plan.scores.col(e);
      kernels::top_k(column.data(), T, C, chosen.data());
      for (const std::int32_t t : chosen) {
        plan.expert(t, e) = static_cast<std::int32_t>(e);
        plan.weight(t, e) = plan.scores(t, e);
      }
    }
  }

  using Gradients = ExpertChoiceGate;  // gradients have the parameters' names and shapes
  Gradients make_gradients() const {
    ExpertChoiceGate zeros = *this;
    zeros.router_ = router_.zeros_like();
    return zeros;
  }
  void collect_parameters(const std::string& prefix, ParameterList<S>& out) { router_.collect_parameters(prefix, out); }

  // See the TrainableGate concept. weight(t, e) = scores(t, e) for the chosen (t, e), so
  //   d_logits += softmax backward of d_scores and of d_weight (zero on empty slots). The choice
  //   gets no gradient.
  void backward(ConstMatrixRef<S> x, const RoutingPlan<S>& plan, const RouterGradients<S>& grads, MatrixRef<S> d_x,
                Gradients& param_grads) {
    detail::check_dim("ExpertChoiceGate::backward", "d_x.rows()", d_x.rows(), "x.rows()", x.rows());
    d_logits_ = grads.d_logits;
    d_scores_.resize(num_experts());
    for (Index t = 0; t < x.rows(); ++t) {
      for (Index e = 0; e < num_experts(); ++e)
        d_scores_[e] = plan.expert(t, e) == kEmptySlot ? S(0) : grads.d_weight(t, e);
      auto row = d_logits_.row(t);
      scoring::add_scores_backward(Scoring::softmax, plan.scores.row(t).data(), grads.d_scores.row(t).data(),
                                   num_experts(), row.data());
      scoring::softmax_backward_add(plan.scores.row(t), d_scores_.transpose(), row);
    }
    router_.backward(x, d_logits_, d_x, param_grads.router_, product_);
  }

  Router<S>& router() { return router_; }
  const Router<S>& router() const { return router_; }

 private:
  ExpertChoiceGateConfig config_;
  Router<S> router_;
  detail::Scratch<Vector<S>> d_scores_;  // backward's
  detail::Scratch<RowMatrix<S>> d_logits_;
  detail::Scratch<detail::AlignedVector<S>> product_;
};

}  // namespace moe
