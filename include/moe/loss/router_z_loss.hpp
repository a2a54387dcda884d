// RouterZLoss: the ST-MoE router z-loss, which keeps router logits small for numerical stability.
//
//   L = (1/T) · Σ_t (log Σ_e exp z[t, e])²          z = plan.logits
//   ∂L/∂z[t, e] = 2 · lse_t · softmax(z[t])_e / T
//
// Zoph et al. 2022, "ST-MoE: Designing Stable and Transferable Sparse Expert Models", eq. 5, with
// c_z = 1e-3. It acts on the logits whatever the score function (softmax or sigmoid). Padding tokens (mask 0) are left out of the sum and of T.
//
// Not a balance loss: its value depends on the logits' scale, not on the routing. At z = 0 (the
// uniform router) every lse is ln E and L = (ln E)²; L is 0 only where every lse is 0.
#pragma once

#include "moe/loss/detail/aux_loss.hpp"
#include "moe/gating/scoring.hpp"
#include "moe/routing.hpp"

#include <cmath>
#include <cstdint>
#include <span>

namespace moe {

struct RouterZLossConfig {
  double coefficient = 1e-3;  // c_z, ST-MoE's value
};

template <class S>
class RouterZLoss {
 public:
  using Scalar = S;

  // throws: config_error "RouterZLoss: coefficient = c but must be finite and > 0".
  explicit RouterZLoss(const RouterZLossConfig& config = {}) : config_(validated(config)) {}

  const RouterZLossConfig& config() const { return config_; }

  // See the AuxLoss concept.
  //   requires: mask empty or [T].
  //   ensures:  returns coefficient · L (0 for T = 0 or no real token);
  //             if grads: grads->d_logits += coefficient · ∂L/∂plan.logits (accumulated);
  //             d_weight and d_noise_std are untouched.
  //   throws:   shape_error if mask.size() is neither 0 nor T or grads has the wrong shape.
  // Over a batch split between processes (`sums`), T and the sum are the whole batch's.
  template <class Sums = detail::LocalSums>
  double evaluate(const RoutingPlan<S>& plan, std::span<const std::uint8_t> mask, RouterGradients<S>* grads,
                  const Sums& sums = {}) const {
    constexpr const char* who = "RouterZLoss::evaluate";
    const Index T = plan.num_tokens(), E = plan.num_experts;
    detail::check_plan(who, plan);
    const Index counted = detail::global_count(sums, detail::counted_tokens(who, mask, T));
    if (grads) detail::check_gradients(who, plan, *grads, false);
    if (counted == 0 || E == 0) return 0.0;

    const double scale = config_.coefficient / static_cast<double>(counted);
    double sum = 0;
    for (Index t = 0; t < T; ++t) {
      if (!detail::token_counts(mask, t)) continue;
      const auto z = plan.logits.row(t).template cast<double>();
      const double lse = scoring::log_sum_exp(z);
      sum += lse * lse;
      if (grads)
        for (Index e = 0; e < E; ++e)
          grads->d_logits(t, e) += static_cast<S>(scale * 2.0 * lse * std::exp(z[e] - lse));
    }
    sums(std::span<double>(&sum, 1));
    return scale * sum;
  }

 private:
  static RouterZLossConfig validated(const RouterZLossConfig& c) {
    detail::check_coefficient("RouterZLoss", "coefficient", c.coefficient);
    return c;
  }

  RouterZLossConfig config_;
};

}  // namespace moe
