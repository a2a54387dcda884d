// TopKGate: router → scores → (selection bias, groups) → top-k → weights → capacity.
// One configurable gate covers the routers of the literature:
//   Mixtral        {.scoring = softmax, .normalize = true}          (= softmax over the selected logits)
//   Qwen2-MoE      {.scoring = softmax, .normalize = norm_topk_prob}
//   Switch top-1   {.top_k = 1, .normalize = false, .capacity = {.factor = 1.25}}  (see switch_gate())
//   Shazeer 2017   {.scoring = softmax_selected, .noisy = true}      noisy top-k gating
//   DeepSeek-V3    {.scoring = sigmoid, .selection_bias = true, .n_group = 8, .topk_group = 4,
//                   .normalize = true, .scale = 2.5}
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
#include <limits>
#include <vector>

namespace moe {

// How a group of experts is ranked in group-limited routing.
enum class GroupScore {
  top2_sum,  // sum of the group's two best selection scores (DeepSeek-V3)
  max,       // the group's best selection score (DeepSeek-V2 "group_limited_greedy")
};

struct TopKGateConfig {
  Index d_model = 0;
  Index num_experts = 0;
  Index top_k = 2;
  Scoring scoring = Scoring::softmax;
  bool normalize = true;        // renormalise the k selected weights to sum 1 (before `scale`)
  double scale = 1.0;           // multiplies the weights (DeepSeek's routed_scaling_factor)
  bool router_bias = false;     // a learned bias on the router logits
  bool selection_bias = false;  // DeepSeek-V3 e_score_correction_bias: added for choosing only
  Index n_group = 1;            // expert groups; tokens choose topk_group groups first
  Index topk_group = 1;
  GroupScore group_score = GroupScore::top2_sum;
  bool noisy = false;           // Shazeer 2017: logits += N(0,1)·softplus(x·W_noiseᵀ), training only
  double jitter = 0.0;          // Switch: router input x ⊙ U(1−ε, 1+ε), training only
  Capacity capacity{};          // dropless unless capacity.factor is set
  std::uint64_t seed = 0;       // initialisation, and the noise generator
};

template <class S>
class TopKGate {
 public:
  using Scalar = S;

  explicit TopKGate(const TopKGateConfig& config) : config_(validated(config)), noise_rng_(noise_seed(config.seed)) {
    Generator rng(config.seed);
    router_ = Router<S>(config.d_model, config.num_experts, config.router_bias, rng);
    selection_bias_.setZero(config.selection_bias ? config.num_experts : 0);
    if (config.noisy) noise_weight_.setZero(config.num_experts, config.d_model);  // Shazeer: zero init
  }

  Index d_model() const { return config_.d_model; }
  Index num_experts() const { return config_.num_experts; }
  Index slots_per_token() const { return config_.top_k; }
  const TopKGateConfig& config() const { return config_; }

  // See the Gate concept. Noise and jitter are drawn only in Mode::training.
  void route(ConstMatrixRef<S> x, RoutingPlan<S>& plan, Mode mode) {
    const bool jitter = mode == Mode::training && config_.jitter > 0, noisy = mode == Mode::training && config_.noisy;
    if (!jitter && !noisy) return route(x, plan);
    detail::check_dim("TopKGate::route", "x.cols()", x.cols(), "d_model", d_model());
    plan.reset(x.rows(), config_.top_k, num_experts());
    if (jitter) {
      plan.jittered = true;
      plan.jitter.resize(x.rows(), d_model());
      for (Index i = 0; i < plan.jitter.size(); ++i)
        plan.jitter.data()[i] = S(uniform(noise_rng_, 1.0 - config_.jitter, 1.0 + config_.jitter));
      jittered_ = x.cwiseProduct(plan.jitter);
      router_.project(jittered_, plan.logits, "TopKGate::route", plan.work.product);
    } else {
      router_.project(x, plan.logits, "TopKGate::route", plan.work.product);
    }
    if (noisy) add_noise(x, plan);
    select_all(plan);
  }
  // Inference routing (the ConcurrentGate concept): route(x, plan, Mode::inference), const.
  void route(ConstMatrixRef<S> x, RoutingPlan<S>& plan) const {
    detail::check_dim("TopKGate::route", "x.cols()", x.cols(), "d_model", d_model());
    plan.reset(x.rows(), config_.top_k, num_experts());
    router_.project(x, plan.logits, "TopKGate::route", plan.work.product);
    select_all(plan);
  }

  using Gradients = TopKGate;  // gradients have the parameters' names and shapes
  Gradients make_gradients() const {
    TopKGate zeros = *this;
    zeros.router_ = router_.zeros_like();
    zeros.noise_weight_.setZero();
    zeros.selection_bias_.setZero();
    return zeros;
  }
  // The selection bias is a buffer, not a parameter: it has its own update rule (loss/bias_update.hpp).
  void collect_parameters(const std::string& prefix, ParameterList<S>& out) {
    router_.collect_parameters(prefix, out);
    add_parameter(out, prefix, "noise_weight", noise_weight_);
  }

  // See the TrainableGate concept. Through the scores (grads.d_scores) and the combine weights
  // (scale, normalisation, softmax or sigmoid; only the selected experts), plus grads.d_logits;
  // noisy gating adds the path through softplus(x·W_noiseᵀ) (softplus' = 1 − e^{−softplus});
  // jitter scales the router's d_x.
  void backward(ConstMatrixRef<S> x, const RoutingPlan<S>& plan, const RouterGradients<S>& grads, MatrixRef<S> d_x,
                Gradients& param_grads) {
    detail::check_dim("TopKGate::backward", "d_x.rows()", d_x.rows(), "x.rows()", x.rows());
    d_logits_ = grads.d_logits;
    for (Index t = 0; t < x.rows(); ++t) {
      scoring::add_scores_backward(config_.scoring, plan.scores.row(t).data(), grads.d_scores.row(t).data(),
                                   num_experts(), d_logits_.row(t).data());
      weight_backward(plan, grads, t);
    }
    if (!plan.jittered && !plan.noisy)
      return router_.backward(x, d_logits_, d_x, param_grads.router_, product_);
    // d_x += (router part ⊙ jitter + noise part), summed here first.
    d_x_.setZero(x.rows(), x.cols());
    if (plan.jittered) {
      jittered_ = x.cwiseProduct(plan.jitter);
      router_.backward(jittered_, d_logits_, d_x_, param_grads.router_, product_);
      d_x_.array() *= plan.jitter.array();
    } else {
      router_.backward(x, d_logits_, d_x_, param_grads.router_, product_);
    }
    if (plan.noisy) {
      d_noise_ = d_logits_.cwiseProduct(plan.noise);
      if (grads.d_noise_std.size() > 0) d_noise_ += grads.d_noise_std;
      d_noise_.array() *= S(1) - (-plan.noise_std.array()).exp();
      param_grads.noise_weight_.noalias() += d_noise_.transpose() * x;
      d_x_.noalias() += d_noise_ * noise_weight_;
    }
    d_x += d_x_;
  }

  Router<S>& router() { return router_; }
  const Router<S>& router() const { return router_; }
  Vector<S>& selection_bias() { return selection_bias_; }  // [E], empty unless selection_bias
  const Vector<S>& selection_bias() const { return selection_bias_; }
  RowMatrix<S>& noise_weight() { return noise_weight_; }   // [E, d_model], empty unless noisy
  const RowMatrix<S>& noise_weight() const { return noise_weight_; }
  // Restarts the noise generator where a gate constructed with `seed` starts it.
  void reseed(std::uint64_t seed) { noise_rng_.seed(noise_seed(seed)); }

 private:
  // The noise stream is salted so that it is not the stream that initialised the router.
  static constexpr std::uint64_t noise_seed(std::uint64_t seed) { return seed ^ 0x9e3779b97f4a7c15ULL; }

  static TopKGateConfig validated(const TopKGateConfig& c) {
    constexpr const char* who = "TopKGate";
    detail::check_config(c.d_model >= 1, who, "d_model = ", c.d_model, " but must be >= 1");
    detail::check_config(c.num_experts >= 1, who, "num_experts = ", c.num_experts, " but must be >= 1");
    detail::check_config(c.top_k >= 1 && c.top_k <= c.num_experts, who, "top_k = ", c.top_k,
                         " but must be in [1, num_experts = ", c.num_experts, "]");
    detail::check_config(std::isfinite(c.scale) && c.scale > 0, who, "scale = ", c.scale,
                         " but must be finite and > 0");
    detail::check_config(c.n_group >= 1 && c.num_experts % c.n_group == 0, who, "n_group = ", c.n_group,
                         " but must be >= 1 and divide num_experts = ", c.num_experts);
    detail::check_config(c.topk_group >= 1 && c.topk_group <= c.n_group, who, "topk_group = ",
                         c.topk_group, " but must be in [1, n_group = ", c.n_group, "]");
    const Index reachable = c.topk_group * (c.num_experts / c.n_group);
    detail::check_config(reachable >= c.top_k, who, "top_k = ", c.top_k, " but topk_group = ",
                         c.topk_group, " groups hold only ", reachable, " experts");
    detail::check_config(c.jitter >= 0 && c.jitter < 1, who, "jitter = ", c.jitter, " but must be in [0, 1)");
    detail::check_capacity(c.capacity, who);
    return c;
  }

  // logits += N(0,1) · softplus(x·W_noiseᵀ), drawn token by token in order (Shazeer et al. 2017,
  // eq. 4); the draws and the standard deviations stay in the plan for backward and the load loss.
  void add_noise(ConstMatrixRef<S> x, RoutingPlan<S>& plan) {
    plan.noisy = true;
    plan.noise.resize(x.rows(), num_experts());
    plan.noise_std.noalias() = x * noise_weight_.transpose();
    for (Index t = 0; t < x.rows(); ++t)
      for (Index e = 0; e < num_experts(); ++e) {
        const S v = plan.noise_std(t, e);
        plan.noise_std(t, e) = v > S(20) ? v : std::log1p(std::exp(v));
        plan.noise(t, e) = S(standard_normal(noise_rng_));
        plan.logits(t, e) += plan.noise(t, e) * plan.noise_std(t, e);
      }
    Router<S>::check_finite(plan.logits, "TopKGate::route");
  }

  // Adds ∂L/∂logits of token t that flows through its k combine weights into d_logits_.
  //   weights w = scale · normalise(p), p = the selected scores (or softmax of the selected
  //   logits for Scoring::softmax_selected); selection itself has no gradient.
  void weight_backward(const RoutingPlan<S>& plan, const RouterGradients<S>& grads, Index t) {
    const Index k = config_.top_k;
    const std::int32_t* ids = plan.expert.row(t).data();
    const S scale = S(config_.scale);
    S* const d_z = d_logits_.row(t).data();
    if (config_.scoring == Scoring::softmax_selected)
      return scoring::add_softmax_selected_backward(plan.weight.row(t).data(), grads.d_weight.row(t).data(), ids, k,
                                                    scale, d_z);
    // d_p_j for the selected scores p_j; normalised: w̃_j = p_j / D, d_p_j = (d_w̃_j − ⟨d_w̃, w̃⟩) / D.
    d_selected_.resize(k);
    if (config_.normalize) {
      S sum = 0, dot = 0;
      for (Index j = 0; j < k; ++j) sum += plan.scores(t, ids[j]);
      const S denominator = config_.scoring == Scoring::sigmoid ? sum + S(1e-20) : sum;
      for (Index j = 0; j < k; ++j) dot += grads.d_weight(t, j) * plan.weight(t, j);  // = scale² ⟨d_w̃, w̃⟩ / scale
      for (Index j = 0; j < k; ++j) d_selected_[j] = (scale * grads.d_weight(t, j) - dot) / denominator;
    } else {
      for (Index j = 0; j < k; ++j) d_selected_[j] = scale * grads.d_weight(t, j);
    }
    scoring::add_selected_scores_backward(config_.scoring, plan.scores.row(t).data(), ids, d_selected_.data(), k,
                                          num_experts(), d_z);
  }

  // From plan.logits: the scores, every token's slots, then the capacity's drops.
  void select_all(RoutingPlan<S>& plan) const {
    scoring::score_rows<S>(config_.scoring, plan.logits, plan.scores);
    plan.work.values.resize(num_experts());
    for (Index t = 0; t < plan.num_tokens(); ++t) select(plan, t);
    if (config_.capacity.factor) {
      const Index capacity = expert_capacity(config_.capacity, plan.num_tokens(), config_.top_k, num_experts());
      apply_capacity(plan, capacity, config_.capacity.policy, plan.work.order, plan.work.load);
    }
  }

  // Fills the k slots of token t from plan.logits/plan.scores.
  void select(RoutingPlan<S>& plan, Index t) const {
    const Index E = num_experts(), k = config_.top_k;
    const bool by_logits = config_.scoring == Scoring::softmax_selected;
    Vector<S>& choice = plan.work.values;
    for (Index e = 0; e < E; ++e)
      choice[e] = (by_logits ? plan.logits(t, e) : plan.scores(t, e)) +
                   (config_.selection_bias ? selection_bias_[e] : S(0));
    if (config_.n_group > 1) mask_groups(plan.work);

    std::int32_t* ids = plan.expert.row(t).data();
    kernels::top_k(choice.data(), E, k, ids);
    S* w = plan.weight.row(t).data();
    if (by_logits) {
      for (Index j = 0; j < k; ++j) w[j] = plan.logits(t, ids[j]);
      scoring::softmax_inplace(w, k);
    } else {
      S sum = 0;
      for (Index j = 0; j < k; ++j) sum += (w[j] = plan.scores(t, ids[j]));
      // DeepSeek-V3 adds 1e-20 so that sigmoid scores that all underflow do not divide by zero.
      if (config_.normalize)
        for (Index j = 0; j < k; ++j) w[j] /= config_.scoring == Scoring::sigmoid ? sum + S(1e-20) : sum;
    }
    for (Index j = 0; j < k; ++j) w[j] *= S(config_.scale);
  }

  // Keeps the experts of the topk_group best groups in work.values and sets the others to −inf.
  void mask_groups(typename RoutingPlan<S>::Work& work) const {
    const Index G = config_.n_group, size = num_experts() / G;
    work.group_values.resize(G);
    for (Index g = 0; g < G; ++g) {
      const auto group = work.values.segment(g * size, size);
      if (config_.group_score == GroupScore::max || size == 1) {
        work.group_values[g] = group.maxCoeff();
      } else {
        std::int32_t best[2];
        kernels::top_k(group.data(), size, 2, best);
        work.group_values[g] = group[best[0]] + group[best[1]];
      }
    }
    work.ids.resize(static_cast<std::size_t>(config_.topk_group));
    kernels::top_k(work.group_values.data(), G, config_.topk_group, work.ids.data());
    for (Index g = 0; g < G; ++g)
      if (std::find(work.ids.begin(), work.ids.end(), g) == work.ids.end())
        work.values.segment(g * size, size).setConstant(-std::numeric_limits<S>::infinity());
  }

  TopKGateConfig config_;
  Router<S> router_;
  Vector<S> selection_bias_;
  RowMatrix<S> noise_weight_;
  Generator noise_rng_;
  // Scratch reused across calls so that the steady state does not allocate.
  // scratch of the training route and backward
  detail::Scratch<RowMatrix<S>> jittered_, d_logits_, d_noise_, d_x_;
  detail::Scratch<Vector<S>> d_selected_;
  detail::Scratch<detail::AlignedVector<S>> product_;
};

// Switch Transformer routing (Fedus et al. 2021): top-1, the chosen expert's softmax probability as
// weight (no renormalisation), capacity factor 1.25 with token-order drops.
template <class S>
TopKGate<S> switch_gate(Index d_model, Index num_experts, double capacity_factor = 1.25,
                        std::uint64_t seed = 0) {
  return TopKGate<S>({.d_model = d_model,
                      .num_experts = num_experts,
                      .top_k = 1,
                      .normalize = false,
                      .capacity = {.factor = capacity_factor},
                      .seed = seed});
}

}  // namespace moe
