// Adam and AdamW with the semantics of torch.optim.Adam / torch.optim.AdamW (amsgrad off):
//
//   t  += 1
//   g   = grad + weight_decay · θ                (Adam: L2 decay through the gradient)
//   θ  *= 1 − lr · weight_decay                  (AdamW, decoupled = true, instead of the line above)
//   m   = β1 · m + (1 − β1) · g
//   v   = β2 · v + (1 − β2) · g²
//   θ  -= lr / (1 − β1^t) · m / (√v / √(1 − β2^t) + eps)
//
// m and v start at zero and are kept in S; the bias corrections are computed in double, as torch
// computes them in Python floats.
//
//   moe::Adam<float> adam({.lr = 3e-4});
//   auto adamw = moe::adamw<float>({.lr = 3e-4, .weight_decay = 0.01});
#pragma once

#include "moe/train/detail/optimizer_state.hpp"
#include "moe/errors.hpp"
#include "moe/parameters.hpp"

#include <cmath>
#include <cstddef>
#include <string>

namespace moe {

struct AdamConfig {
  double lr = 1e-3;          // > 0
  double beta1 = 0.9;        // in [0, 1)
  double beta2 = 0.999;      // in [0, 1)
  double eps = 1e-8;         // > 0, added to the bias-corrected √v
  double weight_decay = 0;   // >= 0 (torch.optim.AdamW's default is 0.01: pass it explicitly)
  bool decoupled = false;    // false: Adam (L2 through the gradient); true: AdamW
};

template <class S>
class Adam {
 public:
  using Scalar = S;
  using Config = AdamConfig;

  // throws: config_error naming the optimizer (Adam or AdamW) and the value if lr <= 0,
  //         a beta outside [0, 1), eps <= 0 or weight_decay < 0 (or any of them not finite).
  explicit Adam(const AdamConfig& config) : config_(config) {
    const char* who = config.decoupled ? "AdamW" : "Adam";
    detail::check_positive(config.lr, who, "lr");
    detail::check_config(config.beta1 >= 0 && config.beta1 < 1, who, "beta1 = ", config.beta1,
                         " but must be in [0, 1)");
    detail::check_config(config.beta2 >= 0 && config.beta2 < 1, who, "beta2 = ", config.beta2,
                         " but must be in [0, 1)");
    detail::check_positive(config.eps, who, "eps");
    detail::check_non_negative(config.weight_decay, who, "weight_decay");
  }

  const AdamConfig& config() const { return config_; }
  Index steps() const { return steps_; }  // t: completed steps

  // For a learning-rate schedule: the moments and the step count are kept.
  void set_lr(double lr) {
    detail::check_positive(lr, config_.decoupled ? "AdamW::set_lr" : "Adam::set_lr", "lr");
    config_.lr = lr;
  }

  // The moments of tensor i, once a step has run: [rows, cols] of params[i].
  const RowMatrix<S>& first_moment(std::size_t i) const { return state_.buffer(i, 0); }
  const RowMatrix<S>& second_moment(std::size_t i) const { return state_.buffer(i, 1); }

  // step(params, grads)
  //   requires: grads lists the same names and shapes as params, in order (check_matching), and
  //             the same as on this optimizer's earlier steps.
  //   ensures:  params updated as above (overwritten in place); grads unchanged; m and v made on
  //             the first step and updated; steps() += 1.
  //   throws:   shape_error on mismatched lists or shapes other than the first step's;
  //             std::domain_error naming the tensor if a gradient is not finite. On a throw no
  //             parameter, moment or step count has changed.
  void step(const ParameterList<S>& params, const ParameterList<S>& grads) {
    const std::string who = config_.decoupled ? "AdamW::step" : "Adam::step";
    check_matching(params, grads, who);
    state_.check(params, who);
    detail::check_finite_gradients(grads, who);
    state_.bind(params, 2);

    const Index t = steps_ + 1;
    const double bias_correction1 = 1 - std::pow(config_.beta1, static_cast<double>(t));
    const double bias_correction2 = 1 - std::pow(config_.beta2, static_cast<double>(t));
    const S step_size = S(config_.lr / bias_correction1);
    const S bias_correction2_sqrt = S(std::sqrt(bias_correction2));
    const S beta1 = S(config_.beta1), beta2 = S(config_.beta2), eps = S(config_.eps);
    const S one_minus_beta1 = S(1 - config_.beta1), one_minus_beta2 = S(1 - config_.beta2);
    const S weight_decay = S(config_.weight_decay);
    const S decay_factor = S(1 - config_.lr * config_.weight_decay);
    const bool l2 = !config_.decoupled && config_.weight_decay != 0;
    const bool decoupled = config_.decoupled && config_.weight_decay != 0;

    for (std::size_t i = 0; i < params.size(); ++i) {
      S* theta = params[i].data;
      const S* grad = grads[i].data;
      S* m = state_.buffer(i, 0).data();
      S* v = state_.buffer(i, 1).data();
      for (Index j = 0; j < params[i].size(); ++j) {
        S g = grad[j];
        if (l2) g += weight_decay * theta[j];
        if (decoupled) theta[j] *= decay_factor;
        m[j] = beta1 * m[j] + one_minus_beta1 * g;
        v[j] = beta2 * v[j] + one_minus_beta2 * g * g;
        const S denom = std::sqrt(v[j]) / bias_correction2_sqrt + eps;
        theta[j] -= step_size * m[j] / denom;
      }
    }
    steps_ = t;
  }

 private:
  AdamConfig config_;
  detail::OptimizerState<S> state_;
  Index steps_ = 0;
};

// AdamW: Adam with decoupled weight decay (torch.optim.AdamW); the same type as Adam.
template <class S>
Adam<S> adamw(AdamConfig config) {
  config.decoupled = true;
  return Adam<S>(config);
}

}  // namespace moe
