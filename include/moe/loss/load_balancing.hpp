// LoadBalancingLoss: the Switch Transformer / GShard auxiliary loss.
//
//   L = E · Σ_e f_e · P_e
//   f_e = (1 / (T·k)) · Σ_t Σ_j 1[expert(t, j) = e]     fraction of the T·k slots routed to e
//   P_e = (1 / T) · Σ_t scores[t, e]                    mean router probability of e
//
// Fedus, Zoph, Shazeer 2021, "Switch Transformers", eq. 4-6 (α = 1e-2), and Lepikhin et al. 2020,
// "GShard" (ℓ_aux with the mean gate m_e and the first-choice fraction c_e / S).
//
// Which slots count in f: every selected slot (expert(t, j) != kEmptySlot), dropped by capacity
// or not — as Switch, whose expert mask is taken before the capacity cut, and HF, which has no
// capacity at all. f is a count: no gradient flows through it (the Switch convention). The
// gradient flows through P to the scores (grads->d_scores; the gate maps it to its logits).
// Padding tokens (mask 0) are left out of T, f and P. Over a batch split between processes
// (`sums`), T, the counts and the score sums are the whole batch's: f exactly, P up to rounding.
//
// Form::hf is HF transformers' load_balancing_loss_func (Mixtral, Qwen2-MoE, ...; also flaxformer):
//   L = E · Σ_j Σ_e f_{j,e} · P_e,   f_{j,e} = (1/T) · Σ_t 1[expert(t, j) = e]   (one f per slot rank j)
// Since Σ_j f_{j,e} = k · f_e, the hf form is exactly k times the switch form.
//
// Value at perfect balance (every expert gets T·k/E slots and every softmax score is 1/E):
//   Form::switch_gshard: 1        Form::hf: k
// With sigmoid scores P is not a distribution: the balanced value is then Σ_e P_e (E/2 at logits 0).
#pragma once

#include "moe/loss/detail/aux_loss.hpp"
#include "moe/routing.hpp"

#include <cmath>
#include <cstdint>
#include <span>

namespace moe {

struct LoadBalancingConfig {
  enum class Form {
    switch_gshard,  // f over all T·k slots: balanced value 1
    hf,             // f per slot rank, summed over ranks (HF load_balancing_loss_func): balanced value k
  };
  // α. Switch Transformers use 1e-2 (their §2.2); HF Mixtral's router_aux_loss_coef is 1e-3.
  double coefficient = 1e-2;
  Form form = Form::switch_gshard;
};

template <class S>
class LoadBalancingLoss {
 public:
  using Scalar = S;
  using Form = LoadBalancingConfig::Form;

  // throws: config_error "LoadBalancingLoss: coefficient = c but must be finite and > 0".
  explicit LoadBalancingLoss(const LoadBalancingConfig& config = {}) : config_(validated(config)) {}

  const LoadBalancingConfig& config() const { return config_; }

  // See the AuxLoss concept.
  //   requires: plan from a gate; mask empty or [T].
  //   ensures:  returns coefficient · L (0 for T = 0 or no real token);
  //             if grads: grads->d_scores += coefficient · ∂L/∂plan.scores (accumulated);
  //             d_weight, d_logits and d_noise_std are untouched (L does not depend on them).
  //   throws:   shape_error if mask.size() is neither 0 nor T or grads has the wrong shape.
  template <class Sums = detail::LocalSums>
  double evaluate(const RoutingPlan<S>& plan, std::span<const std::uint8_t> mask, RouterGradients<S>* grads,
                  const Sums& sums = {}) const {
    constexpr const char* who = "LoadBalancingLoss::evaluate";
    const Index T = plan.num_tokens(), k = plan.slots_per_token(), E = plan.num_experts;
    detail::check_plan(who, plan);
    const Index counted = detail::counted_tokens(who, mask, T);
    if (grads) detail::check_gradients(who, plan, *grads, false);

    // Σ_e f_e P_e with f_e = count_e / (T·k), P_e = Σ_t s / T: [count | score sums | T].
    Eigen::VectorXd totals = Eigen::VectorXd::Zero(2 * E + 1);
    auto count = totals.head(E), score_sum = totals.segment(E, E);
    for (Index t = 0; t < T; ++t) {
      if (!detail::token_counts(mask, t)) continue;
      for (Index j = 0; j < k; ++j)
        if (plan.expert(t, j) != kEmptySlot) count[plan.expert(t, j)] += 1;
      score_sum += plan.scores.row(t).transpose().template cast<double>();
    }
    totals[2 * E] = static_cast<double>(counted);
    sums(std::span<double>(totals.data(), static_cast<std::size_t>(totals.size())));
    const double n = totals[2 * E];
    if (n == 0 || k == 0) return 0.0;
    // hf: Σ_j f_{j,e} = count_e / T, i.e. the switch form's f times k.
    const Eigen::VectorXd f = count / (config_.form == Form::hf ? n : n * static_cast<double>(k));
    const double scale = config_.coefficient * static_cast<double>(E);
    const double value = f.dot(score_sum / n);

    if (grads) {
      // ∂L/∂scores[t, e] = E · f_e / T for every real token t.
      const Eigen::RowVectorXd d_scores = scale * (f / n).transpose();
      for (Index t = 0; t < T; ++t)
        if (detail::token_counts(mask, t)) grads->d_scores.row(t) += d_scores;
    }
    return scale * value;
  }

 private:
  static LoadBalancingConfig validated(const LoadBalancingConfig& c) {
    detail::check_coefficient("LoadBalancingLoss", "coefficient", c.coefficient);
    return c;
  }

  LoadBalancingConfig config_;
};

}  // namespace moe
