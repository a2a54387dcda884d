// The parameters of a layer's parts as (name, view) lists, and LayerGradients, the gradients of
// every parameter of a layer with the same names and shapes (SparseMoE::Gradients).
#pragma once

#include "moe/concepts.hpp"
#include "moe/layer/shared_experts.hpp"
#include "moe/parameters.hpp"

#include <optional>

namespace moe {

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
