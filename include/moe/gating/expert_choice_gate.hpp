// ExpertChoiceGate (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing"): experts
// choose tokens. Scores are softmax(x·Wgᵀ) over the experts of each token; expert e takes the C
// tokens with the highest score for e, C = ceil(capacity_factor · T / E) (at most T), equal scores
// going to the lower token. A token may be taken by any number of experts, including none; its
// slot e holds expert e (weight = its score) or kEmptySlot.
#pragma once

#include "moe/gating/router.hpp"
#include "moe/kernels/softmax.hpp"
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
    return std::min(num_tokens, static_cast<Index>(std::ceil(ideal)));
  }

  // See the Gate concept. Deterministic in both modes.
  void route(ConstMatrixRef<S> x, RoutingPlan<S>& plan, Mode) {
    detail::check_dim("ExpertChoiceGate::route", "x.cols()", x.cols(), "d_model", d_model());
    const Index T = x.rows(), E = num_experts(), C = capacity(T);
    plan.reset(T, E, E);
    router_.project(x, plan.logits, "ExpertChoiceGate::route");
    kernels::softmax_rows<S>(plan.logits, plan.scores);
    if (C == 0) return;
    column_.resize(T);
    chosen_.resize(static_cast<std::size_t>(C));
    for (Index e = 0; e < E; ++e) {
      column_ = plan.scores.col(e);
      kernels::top_k(column_.data(), T, C, chosen_.data());
      for (const std::int32_t t : chosen_) {
        plan.expert(t, e) = static_cast<std::int32_t>(e);
        plan.weight(t, e) = plan.scores(t, e);
      }
    }
  }

  Router<S>& router() { return router_; }
  const Router<S>& router() const { return router_; }

 private:
  ExpertChoiceGateConfig config_;
  Router<S> router_;
  Vector<S> column_;
  std::vector<std::int32_t> chosen_;
};

}  // namespace moe
