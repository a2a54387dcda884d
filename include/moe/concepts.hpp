// The contracts a type must meet to take part in a layer. Library types and user types join
// the same way: satisfy the concept, and SparseMoE accepts the type.
#pragma once

#include "moe/routing.hpp"
#include "moe/parameters.hpp"
#include "moe/types.hpp"

#include <concepts>
#include <cstdint>
#include <span>
#include <string>

namespace moe {

// An Expert type holds the parameters of all `num_experts()` experts of one layer (a bank, so
// that their weights can live in one contiguous block per projection) and runs any one of them
// on a block of rows.
//
// forward(e, x, y, scratch)
//   requires: 0 <= e < num_experts(); x: [n, d_model()] row-major (a row block of the dispatch
//             buffer); y: [n, d_model()] pre-sized; scratch.size() >= scratch_size(n).
//             n may be 1. Calls for different e may run concurrently on different threads
//             (each with its own scratch), so forward must not write to the expert's members.
//   ensures:  y = expert_e(x), row by row (overwritten); row i depends only on x.row(i), and
//             the same block gives the same bits on any thread.
// scratch_size(n)
//   ensures:  the number of scalars forward() needs as working memory for n rows (0 if none).
template <class X>
concept Expert = requires(const X& expert, Index e, Index n,
                          ConstMatrixRef<typename X::Scalar> x, MatrixRef<typename X::Scalar> y,
                          std::span<typename X::Scalar> scratch) {
  typename X::Scalar;
  { expert.num_experts() } -> std::convertible_to<Index>;
  { expert.d_model() } -> std::convertible_to<Index>;
  { expert.scratch_size(n) } -> std::convertible_to<Index>;
  expert.forward(e, x, y, scratch);
};

// An Expert that can be trained: it has a backward pass and lists its parameters.
//
// Working memory: in training, the layer gives each expert block its own scratch for forward()
// and keeps it until backward(), so an expert stores in scratch what its backward needs (the
// hidden activations) and scratch_size(n) counts both.
//
// backward(e, x, saved, d_y, d_x, grads, scratch)
//   requires: forward(e, x, y, saved) ran on this x with these parameters and saved is untouched
//             since; d_y, d_x: [n, d_model()]; scratch.size() >= backward_scratch_size(n).
//   ensures:  d_x = ∂⟨y, d_y⟩/∂x                         (overwritten)
//             grads' tensors of expert e += ∂⟨y, d_y⟩/∂θ_e (accumulated; other experts untouched)
//             Calls for different e may run concurrently (they touch disjoint gradients).
// make_gradients()
//   ensures:  a Gradients object whose collect_parameters() lists the same names and shapes as
//             this expert's, all zero (the library's experts use their own type as Gradients).
// collect_parameters(prefix, list)
//   ensures:  appends (prefix + name, view) for every trainable tensor, in a fixed order.
template <class X>
concept TrainableExpert =
    Expert<X> && requires(X& expert, const X& const_expert, Index e, Index n,
                          ConstMatrixRef<typename X::Scalar> x, ConstMatrixRef<typename X::Scalar> d_y,
                          MatrixRef<typename X::Scalar> d_x, std::span<typename X::Scalar> memory,
                          typename X::Gradients& grads, const std::string& prefix,
                          ParameterList<typename X::Scalar>& list) {
      typename X::Gradients;
      { const_expert.backward_scratch_size(n) } -> std::convertible_to<Index>;
      const_expert.backward(e, x, memory, d_y, d_x, grads, memory);
      { const_expert.make_gradients() } -> std::same_as<typename X::Gradients>;
      expert.collect_parameters(prefix, list);
      grads.collect_parameters(prefix, list);
    };

// A Gate decides, for each token, which experts it goes to and with which weight.
//
// route(x, plan, mode)
//   requires: x: [T, d_model()] row-major, T >= 0.
//   ensures:  plan.reset(T, slots_per_token(), num_experts()) was done and filled:
//             plan.expert(t, j) is an expert id or kEmptySlot, no id twice in a row;
//             plan.weight(t, j) its combine weight; plan.dropped(t, j) = 1 if capacity dropped it;
//             plan.logits and plan.scores hold the router's [T, E] output.
//             In Mode::inference the result depends only on x and the parameters; in
//             Mode::training it may also draw from the gate's own seeded generator.
//   throws:   shape_error if x.cols() != d_model(); std::domain_error naming the token if a
//             router logit is not finite.
template <class G>
concept Gate = requires(G& gate, const G& const_gate, ConstMatrixRef<typename G::Scalar> x,
                        RoutingPlan<typename G::Scalar>& plan, Mode mode) {
  typename G::Scalar;
  { const_gate.d_model() } -> std::convertible_to<Index>;
  { const_gate.num_experts() } -> std::convertible_to<Index>;
  { const_gate.slots_per_token() } -> std::convertible_to<Index>;
  gate.route(x, plan, mode);
};

// A Gate whose inference routing may run on several threads at once: route(x, plan) on a const
// gate gives what route(x, plan, Mode::inference) gives (each thread with a plan of its own).
// The layer's const forward needs it (concurrent inference on one layer).
template <class G>
concept ConcurrentGate = Gate<G> && requires(const G& gate, ConstMatrixRef<typename G::Scalar> x,
                                             RoutingPlan<typename G::Scalar>& plan) { gate.route(x, plan); };

// A Gate that can be trained.
//
// backward(x, plan, grads, d_x, param_grads)
//   requires: plan filled by route(x, plan, mode) on this x with these parameters; grads:
//             ∂L/∂(plan.weight, plan.scores, plan.logits, plan.noise_std), shaped by
//             grads.reset(plan); d_x: [T, d_model()].
//   ensures:  d_x += ∂L/∂x through the router; param_grads += ∂L/∂θ (both accumulated: the
//             layer adds the router's part to the experts'). The gate maps d_scores and d_weight
//             through its own score function. Expert selection (top-k, groups, selection bias,
//             capacity) has no gradient.
template <class G>
concept TrainableGate =
    Gate<G> && requires(G& gate, const G& const_gate, ConstMatrixRef<typename G::Scalar> x,
                        const RoutingPlan<typename G::Scalar>& plan,
                        const RouterGradients<typename G::Scalar>& grads, MatrixRef<typename G::Scalar> d_x,
                        typename G::Gradients& param_grads, const std::string& prefix,
                        ParameterList<typename G::Scalar>& list) {
      typename G::Gradients;
      gate.backward(x, plan, grads, d_x, param_grads);
      { const_gate.make_gradients() } -> std::same_as<typename G::Gradients>;
      gate.collect_parameters(prefix, list);
      param_grads.collect_parameters(prefix, list);
    };

}  // namespace moe

namespace moe {

// An auxiliary loss on the routing (load balancing, router z-loss, ...), with its coefficient.
//
// evaluate(plan, mask, grads)
//   requires: plan filled by a gate's route(); mask: empty (every token counts) or [T] with 1 for
//             a real token and 0 for padding; grads: nullptr, or grads->reset(plan) done.
//   ensures:  returns coefficient · value (0 for T = 0 or an all-padding mask);
//             if grads: grads->d_weight, d_scores, d_logits, d_noise_std += coefficient ·
//             ∂value/∂(plan.weight, plan.scores, plan.logits, plan.noise_std) (accumulated), each
//             with the others held fixed. A loss of the scores writes d_scores: it needs no
//             knowledge of the score function (the gate maps d_scores to its logits).
// evaluate(plan, mask, grads, sums), optional: the same for a batch split over processes (expert
//   parallelism): sums(std::span<double>) replaces its argument by the sum over the processes, the
//   same bits on every one; every process calls it the same number of times with the same sizes.
//   The built-in losses have it; a layer whose experts are split refuses a loss without it.
template <class L>
concept AuxLoss = requires(const L& loss, const RoutingPlan<typename L::Scalar>& plan,
                           std::span<const std::uint8_t> mask, RouterGradients<typename L::Scalar>* grads) {
  typename L::Scalar;
  { loss.evaluate(plan, mask, grads) } -> std::convertible_to<double>;
};

}  // namespace moe
