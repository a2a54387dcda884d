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

#include <optional>

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
