// What a layer knows of its parts (gate, experts, optional shared experts): that they fit
// together (and the caller's arrays fit them), their parameters as (name, view) lists, and
// LayerGradients, the gradients of every parameter of a layer with the same names and shapes
// (SparseMoE::Gradients).
#pragma once

#include "moe/concepts.hpp"
#include "moe/dispatch/local_exchange.hpp"
#include "moe/errors.hpp"
#include "moe/layer/shared_experts.hpp"
#include "moe/parameters.hpp"

#include <cstdint>
#include <optional>
#include <span>
#include <tuple>

namespace moe {

namespace detail {

// config_error unless the parts agree on d_model and the experts are those the exchange says this
// process runs (`owned`, of the gate's).
template <class G, class X, class Shared>
void check_layer_parts(const G& gate, const X& experts, const std::optional<Shared>& shared, ExpertRange owned) {
  constexpr const char* who = "SparseMoE";
  check_config(gate.d_model() == experts.d_model(), who, "gate.d_model() = ", gate.d_model(),
               " but experts.d_model() = ", experts.d_model());
  check_config(owned.count == experts.num_experts(), who, "gate.num_experts() = ", gate.num_experts(),
               owned.count == gate.num_experts() ? "" : concat(" (", owned.count, " in this process)"),
               " but experts.num_experts() = ", experts.num_experts());
  if (shared)
    check_config(shared->d_model() == experts.d_model(), who, "shared.d_model() = ", shared->d_model(),
                 " but experts.d_model() = ", experts.d_model());
}

// shape_error unless d_y, d_x: [T, d_model].
template <class S>
void check_backward_io(const char* who, Index d_model, Index T, ConstMatrixRef<S> d_y, MatrixRef<S> d_x) {
  check_dim(who, "d_y.rows()", d_y.rows(), "x.rows()", T);
  check_dim(who, "d_y.cols()", d_y.cols(), "d_model", d_model);
  check_dim(who, "d_x.rows()", d_x.rows(), "x.rows()", T);
  check_dim(who, "d_x.cols()", d_x.cols(), "d_model", d_model);
}

// shape_error unless backward_experts' arguments fit the training forward's plan and batch rows.
template <class S>
void check_backward_experts_io(Index d_model, const RoutingPlan<S>& plan, Index rows, ConstMatrixRef<S> d_expert_out,
                               ConstMatrixRef<S> d_weight, MatrixRef<S> d_x) {
  constexpr const char* who = "SparseMoE::backward";
  const Index T = plan.num_tokens();
  check_dim(who, "d_x.rows()", d_x.rows(), "x.rows()", T);
  check_dim(who, "d_x.cols()", d_x.cols(), "d_model", d_model);
  check_dim(who, "d_expert_out.rows()", d_expert_out.rows(), "dispatch rows", rows);
  check_dim(who, "d_weight.rows()", d_weight.rows(), "x.rows()", T);
  check_dim(who, "d_weight.cols()", d_weight.cols(), "slots", plan.slots_per_token());
}

// A loss's sums over the tokens, completed over the exchange's processes (loss/detail/aux_loss.hpp).
template <class Exchange>
struct ExchangeSums {
  const Exchange& exchange;
  void operator()(std::span<double> values) const { exchange.sum(values); }
};

template <class L, class Exchange>
concept SumsOverProcesses =
    requires(const L& loss, const RoutingPlan<typename L::Scalar>& plan, std::span<const std::uint8_t> mask,
             RouterGradients<typename L::Scalar>* grads, const ExchangeSums<Exchange>& sums) {
      loss.evaluate(plan, mask, grads, sums);
    };

// The loss of the whole batch: over every process's tokens where the loss takes `sums`, else over
// this process's (check_losses refuses such a loss when the experts are split over processes).
template <class L, class Exchange>
double evaluate_loss(const L& loss, const RoutingPlan<typename L::Scalar>& plan, std::span<const std::uint8_t> mask,
                     RouterGradients<typename L::Scalar>* grads, const ExchangeSums<Exchange>& sums) {
  if constexpr (SumsOverProcesses<L, Exchange>)
    return loss.evaluate(plan, mask, grads, sums);
  else
    return loss.evaluate(plan, mask, grads);
}

// Σ of the losses over the whole batch (each already times its coefficient); grads accumulate theirs.
template <class Exchange, class... Losses, class S>
double evaluate_losses(const std::tuple<Losses...>& losses, const RoutingPlan<S>& plan,
                       std::span<const std::uint8_t> mask, RouterGradients<S>& grads, const Exchange& exchange) {
  const ExchangeSums<Exchange> sums{exchange};
  return std::apply([&](const auto&... loss) { return (0.0 + ... + evaluate_loss(loss, plan, mask, &grads, sums)); },
                    losses);
}

// config_error if the experts are split over processes (this one owns fewer than all) and a loss
// could only see this process's tokens.
template <class Exchange, class... Losses>
void check_losses(ExpertRange owned, Index num_experts) {
  check_config(owned.count == num_experts || (SumsOverProcesses<Losses, Exchange> && ...), "SparseMoE",
               "an auxiliary loss without evaluate(plan, mask, grads, sums) would see only this process's tokens"
               " of a batch whose experts are split over processes");
}

// config_error on every process of the exchange unless all have layers of one shape (a process
// alone: nothing to check).
template <class Exchange, class G, class X, class Shared>
void check_same_shape(const Exchange& exchange, const G& gate, const X& experts, const std::optional<Shared>& shared) {
  constexpr const char* who = "SparseMoE";
  exchange.check_same(who, "d_model", gate.d_model());
  exchange.check_same(who, "the number of experts", gate.num_experts());
  exchange.check_same(who, "the slots per token", gate.slots_per_token());
  if constexpr (requires { experts.d_ff(); }) exchange.check_same(who, "d_ff", experts.d_ff());
  exchange.check_same(who, "the number of shared experts", shared ? shared->num_experts() : 0);
}

// shape_error unless x: [T, d_model] and y: [T, d_model].
template <class S>
void check_forward_io(Index d_model, ConstMatrixRef<S> x, MatrixRef<S> y) {
  constexpr const char* who = "SparseMoE::forward";
  check_dim(who, "x.cols()", x.cols(), "d_model", d_model);
  check_dim(who, "y.rows()", y.rows(), "x.rows()", x.rows());
  check_dim(who, "y.cols()", y.cols(), "d_model", d_model);
}

// state_error unless a training forward filled the cache.
inline void check_trained(bool training, const char* who) {
  if (!training) MOE_THROW(state_error(concat(who, ": the cache was not filled by a training forward")));
}

// check_layer_parts on every process (agreed on: the exchange's collective), then that all
// processes have layers of one shape.
template <class... Losses, class Exchange, class G, class X, class Shared>
void check_layer(const Exchange& exchange, const G& gate, const X& experts, const std::optional<Shared>& shared) {
  const ExpertRange owned = exchange.owned(gate.num_experts());
  exchange.collective(
      [&] {
        check_layer_parts(gate, experts, shared, owned);
        check_losses<Exchange, Losses...>(owned, gate.num_experts());
      },
      [] {});
  check_same_shape(exchange, gate, experts, shared);  // throws on every process alike
}

}  // namespace detail

// "gate.…", "experts.…", then "shared_experts.…" (shared: an optional of shared experts or of
// their gradients).
template <class S, class G, class X, class Shared>
ParameterList<S> layer_parameters(G& gate, X& experts, std::optional<Shared>& shared) {
  ParameterList<S> out;
  gate.collect_parameters("gate.", out);
  experts.collect_parameters("experts.", out);
  if (shared) shared->collect_parameters("shared_experts.", out);
  return out;
}

template <class S, class G, class X>
struct LayerGradients {
  typename G::Gradients gate;
  typename X::Gradients experts;
  std::optional<typename SharedExperts<X>::Gradients> shared;

  ParameterList<S> parameters() { return layer_parameters<S>(gate, experts, shared); }
};

}  // namespace moe
