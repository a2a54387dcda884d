// Sgd: stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay,
// with the semantics of torch.optim.SGD (dampening 0, maximize false):
//
//   g   = grad + weight_decay · θ
//   buf = g                          on the first step
//   buf = momentum · buf + g         on later steps          (only when momentum > 0)
//   θ  -= lr · (nesterov ? g + momentum · buf : buf)         (θ -= lr · g when momentum = 0)
//
//   moe::Sgd<float> sgd({.lr = 0.1, .momentum = 0.9});
//   sgd.step(layer.parameters(), grads);  moe::zero(grads);
#pragma once

#include "moe/train/detail/optimizer_state.hpp"
#include "moe/errors.hpp"
#include "moe/parameters.hpp"

#include <cstddef>

namespace moe {

struct SgdConfig {
  double lr = 0;             // learning rate, > 0 (torch has no default either)
  double momentum = 0;       // >= 0; 0 keeps no buffer
  double weight_decay = 0;   // >= 0; L2: added to the gradient as weight_decay · θ
  bool nesterov = false;     // needs momentum > 0
};

template <class S>
class Sgd {
 public:
  using Scalar = S;
  using Config = SgdConfig;

  // throws: config_error naming Sgd and the value if lr <= 0, momentum < 0, weight_decay < 0
  //         (or any of them not finite), or nesterov with momentum = 0.
  explicit Sgd(const SgdConfig& config) : config_(config) {
    detail::check_positive(config.lr, "Sgd", "lr");
    detail::check_non_negative(config.momentum, "Sgd", "momentum");
    detail::check_non_negative(config.weight_decay, "Sgd", "weight_decay");
    detail::check_config(!config.nesterov || config.momentum > 0, "Sgd",
                         "nesterov = true needs momentum > 0 but momentum = ", config.momentum);
  }

  const SgdConfig& config() const { return config_; }
  Index steps() const { return steps_; }  // completed steps

  // For a learning-rate schedule: the momentum buffers are kept.
  void set_lr(double lr) {
    detail::check_positive(lr, "Sgd::set_lr", "lr");
    config_.lr = lr;
  }

  // step(params, grads)
  //   requires: grads lists the same names and shapes as params, in order (check_matching), and
  //             the same as on this optimizer's earlier steps.
  //   ensures:  params updated as above (overwritten in place); grads unchanged; momentum
  //             buffers made on the first step and updated; steps() += 1.
  //   throws:   shape_error on mismatched lists or shapes other than the first step's;
  //             std::domain_error naming the tensor if a gradient is not finite. On a throw no
  //             parameter and no buffer has changed.
  void step(const ParameterList<S>& params, const ParameterList<S>& grads) {
    check_matching(params, grads, "Sgd::step");
    state_.check(params, "Sgd::step");
    detail::check_finite_gradients(grads, "Sgd::step");
    const bool use_momentum = config_.momentum > 0;
    state_.bind(params, use_momentum ? 1 : 0);

    const S lr = S(config_.lr), momentum = S(config_.momentum), weight_decay = S(config_.weight_decay);
    for (std::size_t t = 0; t < params.size(); ++t) {
      S* theta = params[t].data;
      const S* grad = grads[t].data;
      S* buf = use_momentum ? state_.buffer(t, 0).data() : nullptr;
      for (Index i = 0; i < params[t].size(); ++i) {
        S g = grad[i];
        if (config_.weight_decay != 0) g += weight_decay * theta[i];
        S direction = g;
        if (use_momentum) {
          // The buffer starts at zero, so the first step gives buf = 0 · momentum + g = g exactly.
          buf[i] = momentum * buf[i] + g;
          direction = config_.nesterov ? g + momentum * buf[i] : buf[i];
        }
        theta[i] -= lr * direction;
      }
    }
    ++steps_;
  }

 private:
  SgdConfig config_;
  detail::OptimizerState<S> state_;
  Index steps_ = 0;
};

}  // namespace moe
