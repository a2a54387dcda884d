// BiasUpdater: DeepSeek-V3's auxiliary-loss-free load balancing. Not a loss: after each optimizer
// step the user moves the gate's selection bias (TopKGate::selection_bias(), used for choosing
// experts only) against the load of the step:
//
//   b_e += γ · sign(mean_load − load_e),   mean_load = (1/E) · Σ_e load_e,   sign(0) = 0
//
// so an overloaded expert becomes less likely to be chosen and an underloaded one more likely.
// DeepSeek-AI 2024, "DeepSeek-V3 Technical Report", §2.1.2 "Auxiliary-Loss-Free Load Balancing"
// (Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts");
// γ = 1e-3 for the first 14.3T training tokens, then 0.
//
// The loads are the step's tokens per expert, e.g. RoutingStats::tokens_per_expert (a
// std::vector<Index> converts to the span). At perfect balance (every load equal) b is unchanged.
// Example: loads [3, 1, 0, 0] (mean 1) → Δb = [−γ, 0, +γ, +γ].
#pragma once

#include "moe/errors.hpp"
#include "moe/types.hpp"

#include <cmath>
#include <span>

namespace moe {

struct BiasUpdateConfig {
  double rate = 1e-3;  // γ, the bias update speed (DeepSeek-V3's value); finite and > 0
};

class BiasUpdater {
 public:
  // throws: config_error "BiasUpdater: rate = r but must be finite and > 0".
  explicit BiasUpdater(const BiasUpdateConfig& config = {}) : config_(validated(config)) {}

  const BiasUpdateConfig& config() const { return config_; }

  // update(bias, loads)
  //   requires: bias: [E] (the gate's selection bias); loads: [E], the assignments per expert of
  //             the last step.
  //   ensures:  bias[e] += rate · sign(mean(loads) − loads[e])   (updated in place)
  //   throws:   shape_error "BiasUpdater::update: loads.size() = n but bias.size() = E".
  template <class S>
  void update(Vector<S>& bias, std::span<const Index> loads) const {
    detail::check_dim("BiasUpdater::update", "loads.size()", static_cast<Index>(loads.size()), "bias.size()",
                      bias.size());
    if (loads.empty()) return;
    // Compare E·load_e with Σ load in integers: no rounding can turn a tie into a step.
    Index total = 0;
    for (const Index load : loads) total += load;
    const Index E = bias.size();
    for (Index e = 0; e < E; ++e) {
      const Index scaled = E * loads[static_cast<std::size_t>(e)];
      const int sign = (total > scaled) - (total < scaled);
      bias[e] += static_cast<S>(sign * config_.rate);
    }
  }

 private:
  static BiasUpdateConfig validated(const BiasUpdateConfig& c) {
    detail::check_config(std::isfinite(c.rate) && c.rate > 0, "BiasUpdater", "rate = ", c.rate,
                         " but must be finite and > 0");
    return c;
  }

  BiasUpdateConfig config_;
};

// One step with the given rate (default γ = 1e-3): BiasUpdater({.rate = rate}).update(bias, loads).
template <class S>
void update_selection_bias(Vector<S>& bias, std::span<const Index> loads, double rate = 1e-3) {
  BiasUpdater({.rate = rate}).update(bias, loads);
}

}  // namespace moe
