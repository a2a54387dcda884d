// The contracts a type must meet to take part in a layer. Library types and user types join
// the same way: satisfy the concept, and SparseMoE accepts the type.
#pragma once

#include "moe/routing.hpp"
#include "moe/types.hpp"

#include <concepts>
#include <span>

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

}  // namespace moe
