// SequenceBalanceLoss: DeepSeek-V3's complementary sequence-wise balance loss.
//
// Tokens are grouped into sequences of `sequence_length` consecutive rows of the plan (T must be a
// multiple of it). For each sequence of T_s real tokens:
//   s'[t, i] = s[t, i] / Σ_j s[t, j]                         scores normalised per token
//   f_i      = E / (k · T_s) · Σ_t 1[i ∈ topk(t)]            (no gradient)
//   P_i      = (1 / T_s) · Σ_t s'[t, i]
//   L_seq    = Σ_i f_i · P_i
// and L = mean of L_seq over the sequences that hold at least one real token.
//
// DeepSeek-AI 2024, "DeepSeek-V3 Technical Report", §2.1.2 eq. 17-20, with α = 1e-4 ("an extremely
// small value"). V3 scores are sigmoid; with softmax scores s' = s.
// topk(t) = the experts in the plan's slots of token t (every non-empty slot, dropped or not).
// Padding tokens (mask 0) are left out of T_s, f and P. The gradient flows through s' to the
// scores (grads->d_scores; the gate maps it to its logits).
//
// Value at perfect balance (each sequence sends T_s·k/E slots to every expert and every token's
// normalised scores are 1/E): f_i = 1, P_i = 1/E, L = 1 (for softmax and sigmoid alike).
#pragma once

#include "moe/loss/detail/aux_loss.hpp"
#include "moe/routing.hpp"

#include <cmath>
#include <cstdint>
#include <span>

namespace moe {

struct SequenceBalanceConfig {
  double coefficient = 1e-4;           // α, DeepSeek-V3's value
  Index sequence_length = 0;           // T_s of an unpadded sequence: required, >= 1
};

template <class S>
class SequenceBalanceLoss {
 public:
  using Scalar = S;

  // throws: config_error "SequenceBalanceLoss: coefficient = c but must be finite and > 0" and
  //         "SequenceBalanceLoss: sequence_length = n but must be >= 1".
  explicit SequenceBalanceLoss(const SequenceBalanceConfig& config) : config_(validated(config)) {}

  const SequenceBalanceConfig& config() const { return config_; }

  // See the AuxLoss concept.
  //   requires: plan from a gate; T a multiple of sequence_length; mask empty or [T].
  //   ensures:  returns coefficient · L (0 for T = 0 or no real token);
  //             if grads: grads->d_scores += coefficient · ∂L/∂plan.scores (accumulated);
  //             d_weight, d_logits and d_noise_std are untouched.
  //   throws:   shape_error if T is not a multiple of sequence_length, if mask.size() is neither
  //             0 nor T, or grads has the wrong shape.
  // Over a batch split between processes (`sums`; each holding whole sequences), the mean runs
  // over the whole batch's sequences.
  template <class Sums = detail::LocalSums>
  double evaluate(const RoutingPlan<S>& plan, std::span<const std::uint8_t> mask, RouterGradients<S>* grads,
                  const Sums& sums = {}) const {
    constexpr const char* who = "SequenceBalanceLoss::evaluate";
    const Index T = plan.num_tokens(), k = plan.slots_per_token(), E = plan.num_experts;
    const Index L = config_.sequence_length;
    detail::check_plan(who, plan);
    if (T % L != 0)
      MOE_THROW(shape_error(detail::concat(who, ": num_tokens = ", T,
                                           " but must be a multiple of sequence_length = ", L)));
    detail::counted_tokens(who, mask, T);
    if (grads) detail::check_gradients(who, plan, *grads, false);

    // The mean runs over the sequences that hold a real token: count them first, so that the
    // gradient of each sequence can be added with its final scale as soon as f is known.
    Index sequences = 0;
    for (Index begin = 0; begin < T; begin += L) {
      Index t = begin;
      while (t < begin + L && !detail::token_counts(mask, t)) ++t;
      sequences += t < begin + L;
    }
    sequences = detail::global_count(sums, sequences);
    if (sequences == 0 || k == 0 || E == 0) return 0.0;
    const double scale = config_.coefficient / static_cast<double>(sequences);

    Eigen::VectorXd count(E), p_sum(E), d_scores(E);
    double total = 0;
    for (Index begin = 0; begin < T; begin += L) {
      count.setZero();
      p_sum.setZero();
      Index n = 0;
      for (Index t = begin; t < begin + L; ++t) {
        if (!detail::token_counts(mask, t)) continue;
        ++n;
        for (Index j = 0; j < k; ++j)
          if (plan.expert(t, j) != kEmptySlot) count[plan.expert(t, j)] += 1;
        p_sum += plan.scores.row(t).transpose().template cast<double>() / row_sum(plan, t);
      }
      if (n == 0) continue;
      const double ts = static_cast<double>(n);
      const Eigen::VectorXd g = count * (static_cast<double>(E) / (static_cast<double>(k) * ts * ts));
      total += g.dot(p_sum);  // Σ_i f_i P_i = Σ_i (f_i / T_s) · Σ_t s'[t, i]
      if (!grads) continue;
      // ∂L_seq/∂s'[t, i] = g_i = f_i / T_s, and ∂s'_i/∂s_j = (δ_ij − s'_i) / Σs, so
      // ∂L_seq/∂s[t, j] = (g_j − Σ_i g_i s'[t, i]) / Σs.
      for (Index t = begin; t < begin + L; ++t) {
        if (!detail::token_counts(mask, t)) continue;
        const double sum = row_sum(plan, t);
        const double dot = g.dot(plan.scores.row(t).transpose().template cast<double>()) / sum;
        d_scores = (g.array() - dot) / sum;
        grads->d_scores.row(t) += scale * d_scores.transpose();
      }
    }
    sums(std::span<double>(&total, 1));
    return scale * total;
  }

 private:
  static double row_sum(const RoutingPlan<S>& plan, Index t) {
    return plan.scores.row(t).template cast<double>().sum();
  }

  static SequenceBalanceConfig validated(const SequenceBalanceConfig& c) {
    constexpr const char* who = "SequenceBalanceLoss";
    detail::check_coefficient(who, "coefficient", c.coefficient);
    detail::check_config(c.sequence_length >= 1, who, "sequence_length = ", c.sequence_length,
                         " but must be >= 1");
    return c;
  }

  SequenceBalanceConfig config_;
};

}  // namespace moe
