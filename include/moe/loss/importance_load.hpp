// ImportanceLoadLoss: the importance and load losses of noisy top-k gating.
//
//   L = w_importance · CV²(Importance) + w_load · CV²(Load)
//   Importance_e = Σ_t Σ_j weight(t, j) · 1[expert(t, j) = e]         (gate values; every non-empty slot)
//   Load_e       = Σ_t P(t, e),   P(t, e) = Φ((clean[t, e] − threshold[t, e]) / noise_std[t, e])
//   clean        = plan.logits − plan.noise ⊙ plan.noise_std             (the logits before noise)
//   threshold[t, e] = kth_excluding(plan.logits[t], k, e): the k-th largest noisy logit of token t
//                  other than e's — the (k+1)-th largest overall if e is among the k largest, else
//                  the k-th largest. P(t, e) is the probability that e stays in the top k when only
//                  e's noise is drawn again.
//   CV²(x)       = var(x) / (mean(x)² + 1e-10), var the POPULATION variance (divide by E), as
//                  tensor2tensor's cv_squared (its other epsilon, on the count E, is left out).
//
// Shazeer et al. 2017, "Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts
// Layer", eq. 6-7 (importance) and Appendix A eq. 8-11 (load); w_importance = w_load = 0.1, one
// of the settings of their Appendix A, Table 6. (Many PyTorch ports divide by E − 1 instead.)
//
// Gradients: importance → grads->d_weight (the weights' own dependence on the logits is the gate's
// backward); load → grads->d_logits through clean and through the threshold (itself the noisy logit
// of another expert), and → grads->d_noise_std with plan.logits held fixed, where
// ∂clean/∂noise_std = −noise:  ∂z/∂noise_std = −(z + noise) / noise_std for z the Φ argument.
// "In the top k" is decided from plan.logits (the noisy logits), ties to the lower index, as the
// gate does; a gate with a selection bias or expert groups is not Shazeer's and may differ.
// With k = E every expert is always selected: the load is balanced and its term is 0.
// Padding tokens (mask 0) are left out of both sums. Over a batch split between processes
// (`sums`), Importance and Load are the whole batch's (up to rounding: the gradients too).
//
// The load term needs a noisy plan (plan.noisy: TopKGateConfig::noisy in Mode::training). Given a
// plan without noise, evaluate throws config_error rather than drop the term silently; set
// load_coefficient = 0 to use the importance loss alone.
//
// Value at perfect balance (equal importance and equal load for every expert): 0.
#pragma once

#include "moe/loss/detail/aux_loss.hpp"
#include "moe/kernels/top_k.hpp"
#include "moe/routing.hpp"

#include <cmath>
#include <cstdint>
#include <numbers>
#include <span>
#include <vector>

namespace moe {

struct ImportanceLoadConfig {
  // Each >= 0 and at least one > 0; a 0 turns its term off, explicitly.
  double importance_coefficient = 0.1;  // w_importance
  double load_coefficient = 0.1;        // w_load
};

template <class S>
class ImportanceLoadLoss {
 public:
  using Scalar = S;

  // throws: config_error "ImportanceLoadLoss: importance_coefficient = c but must be finite and
  //         >= 0" (same for load_coefficient), or when both are 0.
  explicit ImportanceLoadLoss(const ImportanceLoadConfig& config = {}) : config_(validated(config)) {}

  const ImportanceLoadConfig& config() const { return config_; }

  // See the AuxLoss concept.
  //   requires: plan from a gate; if load_coefficient > 0, plan.noisy with noise and noise_std
  //             [T, E] and noise_std > 0; mask empty or [T].
  //   ensures:  returns w_importance · CV²(Importance) + w_load · CV²(Load) (0 for T = 0 or no
  //             real token); if grads (accumulated):
  //               grads->d_weight    += w_importance · ∂CV²(Importance)/∂plan.weight
  //               grads->d_logits    += w_load · ∂CV²(Load)/∂plan.logits
  //               grads->d_noise_std += w_load · ∂CV²(Load)/∂plan.noise_std
  //   throws:   shape_error for a mask of the wrong size, noise arrays or grads of the wrong
  //             shape; config_error if the load term is on and the plan is not noisy.
  template <class Sums = detail::LocalSums>
  double evaluate(const RoutingPlan<S>& plan, std::span<const std::uint8_t> mask, RouterGradients<S>* grads,
                  const Sums& sums = {}) const {
    constexpr const char* who = "ImportanceLoadLoss::evaluate";
    const Index T = plan.num_tokens(), k = plan.slots_per_token(), E = plan.num_experts;
    const bool load = config_.load_coefficient > 0;
    detail::check_plan(who, plan);
    const Index counted = detail::counted_tokens(who, mask, T);
    if (load) {
      detail::check_config(plan.noisy, who, "load_coefficient = ", config_.load_coefficient,
                           " but the plan is not noisy (the load loss needs TopKGateConfig::noisy"
                           " and Mode::training); set load_coefficient = 0 for the importance loss alone");
      detail::check_dim(who, "plan.noise.rows()", plan.noise.rows(), "num_tokens", T);
      detail::check_dim(who, "plan.noise.cols()", plan.noise.cols(), "num_experts", E);
      detail::check_dim(who, "plan.noise_std.rows()", plan.noise_std.rows(), "num_tokens", T);
      detail::check_dim(who, "plan.noise_std.cols()", plan.noise_std.cols(), "num_experts", E);
    }
    if (grads) detail::check_gradients(who, plan, *grads, load);
    if (detail::global_count(sums, counted) == 0 || E == 0) return 0.0;

    double value = 0;
    if (config_.importance_coefficient > 0) value += importance(plan, mask, grads, sums);
    if (load && k < E) value += load_term(plan, mask, grads, sums);
    return value;
  }

 private:
  // CV²(x) = var / (mean² + ε); d_x = ∂CV²/∂x.
  static double cv_squared(const Eigen::VectorXd& x, Eigen::VectorXd& d_x) {
    constexpr double eps = 1e-10;
    const double n = static_cast<double>(x.size());
    const double mean = x.mean();
    const double var = (x.array() - mean).square().sum() / n;
    const double denom = mean * mean + eps;
    d_x = ((x.array() - mean) * (2.0 / (n * denom)) - 2.0 * mean * var / (n * denom * denom)).matrix();
    return var / denom;
  }

  template <class Sums>
  double importance(const RoutingPlan<S>& plan, std::span<const std::uint8_t> mask, RouterGradients<S>* grads,
                    const Sums& sums) const {
    const Index T = plan.num_tokens(), k = plan.slots_per_token();
    Eigen::VectorXd imp = Eigen::VectorXd::Zero(plan.num_experts), d_imp;
    for (Index t = 0; t < T; ++t)
      if (detail::token_counts(mask, t))
        for (Index j = 0; j < k; ++j)
          if (plan.expert(t, j) != kEmptySlot) imp[plan.expert(t, j)] += static_cast<double>(plan.weight(t, j));
    sums(std::span<double>(imp.data(), static_cast<std::size_t>(imp.size())));
    const double w = config_.importance_coefficient;
    const double value = cv_squared(imp, d_imp);
    if (grads)
      for (Index t = 0; t < T; ++t)
        if (detail::token_counts(mask, t))
          for (Index j = 0; j < k; ++j)
            if (plan.expert(t, j) != kEmptySlot) grads->d_weight(t, j) += static_cast<S>(w * d_imp[plan.expert(t, j)]);
    return w * value;
  }

  // For token t: the k+1 largest noisy logits (ids best first), then for each e the argument z of
  // Φ and the expert whose noisy logit is e's threshold.
  struct TokenThresholds {
    std::vector<std::int32_t> ids;
    void find(const RoutingPlan<S>& plan, Index t) {
      ids.resize(static_cast<std::size_t>(plan.slots_per_token() + 1));
      kernels::top_k(plan.logits.row(t).data(), plan.num_experts, plan.slots_per_token() + 1, ids.data());
    }
    // The expert whose noisy logit is kth_excluding(logits[t], k, e).
    Index threshold_expert(Index e, Index k) const {
      for (Index j = 0; j < k; ++j)
        if (ids[static_cast<std::size_t>(j)] == e) return ids[static_cast<std::size_t>(k)];
      return ids[static_cast<std::size_t>(k - 1)];
    }
  };

  static double z_of(const RoutingPlan<S>& plan, Index t, Index e, Index thr) {
    const double std_te = static_cast<double>(plan.noise_std(t, e));
    const double clean = static_cast<double>(plan.logits(t, e)) - static_cast<double>(plan.noise(t, e)) * std_te;
    return (clean - static_cast<double>(plan.logits(t, thr))) / std_te;
  }

  static double normal_cdf(double z) { return 0.5 * std::erfc(-z / std::numbers::sqrt2); }
  static double normal_pdf(double z) { return std::exp(-0.5 * z * z) / std::sqrt(2.0 * std::numbers::pi); }

  template <class Sums>
  double load_term(const RoutingPlan<S>& plan, std::span<const std::uint8_t> mask, RouterGradients<S>* grads,
                   const Sums& sums) const {
    const Index T = plan.num_tokens(), k = plan.slots_per_token(), E = plan.num_experts;
    TokenThresholds top;
    Eigen::VectorXd load = Eigen::VectorXd::Zero(E), d_load;
    for (Index t = 0; t < T; ++t) {
      if (!detail::token_counts(mask, t)) continue;
      top.find(plan, t);
      for (Index e = 0; e < E; ++e) load[e] += normal_cdf(z_of(plan, t, e, top.threshold_expert(e, k)));
    }
    sums(std::span<double>(load.data(), static_cast<std::size_t>(load.size())));
    const double w = config_.load_coefficient;
    const double value = cv_squared(load, d_load);
    if (grads)
      for (Index t = 0; t < T; ++t) {
        if (!detail::token_counts(mask, t)) continue;
        top.find(plan, t);
        for (Index e = 0; e < E; ++e) {
          const Index thr = top.threshold_expert(e, k);
          const double z = z_of(plan, t, e, thr);
          const double std_te = static_cast<double>(plan.noise_std(t, e));
          const double d_z = w * d_load[e] * normal_pdf(z);  // ∂(w·CV²)/∂z
          grads->d_logits(t, e) += static_cast<S>(d_z / std_te);
          grads->d_logits(t, thr) -= static_cast<S>(d_z / std_te);
          grads->d_noise_std(t, e) +=
              static_cast<S>(-d_z * (z + static_cast<double>(plan.noise(t, e))) / std_te);
        }
      }
    return w * value;
  }

  static ImportanceLoadConfig validated(const ImportanceLoadConfig& c) {
    constexpr const char* who = "ImportanceLoadLoss";
    detail::check_config(std::isfinite(c.importance_coefficient) && c.importance_coefficient >= 0, who,
                         "importance_coefficient = ", c.importance_coefficient, " but must be finite and >= 0");
    detail::check_config(std::isfinite(c.load_coefficient) && c.load_coefficient >= 0, who,
                         "load_coefficient = ", c.load_coefficient, " but must be finite and >= 0");
    detail::check_config(c.importance_coefficient > 0 || c.load_coefficient > 0, who,
                         "importance_coefficient = 0 and load_coefficient = 0: the loss would be off");
    return c;
  }

  ImportanceLoadConfig config_;
};

}  // namespace moe
