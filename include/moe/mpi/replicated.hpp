// The parameters every rank holds (the router, the shared experts) get gradients from each rank's
// own tokens; before an optimizer step they are summed over the ranks — in rank order, so every
// rank steps its copy with the same bits and the copies stay equal. The sum differs from one
// process's sum over the whole batch in the last bits (the tokens' terms are grouped by rank):
// within a few float roundings, tested in tests/mpi. The experts' gradients are each rank's own,
// so a norm over all gradients (for clipping) needs every rank's: global_grad_norm, clip_grad_norm.
#pragma once

#include "moe/mpi/communicator.hpp"
#include "moe/parameters.hpp"

#include <mpi.h>

#include <cmath>
#include <string_view>
#include <type_traits>

namespace moe::mpi {

// grads: a layer's Gradients (layer.make_gradients()); its "gate." and "shared_experts." tensors
// become their sums over comm's ranks. A collective.
template <class Gradients>
void sum_replicated_gradients(MPI_Comm comm, Gradients& grads) {
  for (const auto& tensor : grads.parameters()) {
    const std::string_view name = tensor.name;
    if (name.starts_with("gate.") || name.starts_with("shared_experts."))
      detail::sum_in_rank_order(comm, tensor.data, tensor.size());
  }
}

// √(Σ of every gradient²) of a layer split over comm's ranks, after sum_replicated_gradients: the
// replicated tensors counted once, every rank's experts added in rank order — one process's
// global_norm of the whole batch's gradients, within rounding, and the same bits on every rank.
template <class Gradients>
double global_grad_norm(MPI_Comm comm, Gradients& grads) {
  double sums[2] = {0, 0};  // replicated, this rank's experts
  for (const auto& tensor : grads.parameters()) {
    const std::string_view name = tensor.name;
    double& sum = name.starts_with("gate.") || name.starts_with("shared_experts.") ? sums[0] : sums[1];
    for (const auto v : tensor.values()) sum += double(v) * double(v);
  }
  detail::sum_in_rank_order(comm, &sums[1], 1);
  return std::sqrt(sums[0] + sums[1]);
}

// clip_grad_norm (parameters.hpp) over the ranks, after sum_replicated_gradients: every rank scales
// by the same factor, from global_grad_norm. Returns the norm before clipping. A collective.
template <class Gradients>
double clip_grad_norm(MPI_Comm comm, Gradients& grads, double max_norm) {
  moe::detail::check_config(max_norm > 0, "mpi::clip_grad_norm", "max_norm = ", max_norm, " but must be > 0");
  const double norm = global_grad_norm(comm, grads);
  if (norm > max_norm)
    for (const auto& tensor : grads.parameters()) {
      using S = std::remove_cvref_t<decltype(*tensor.data)>;
      tensor.matrix() *= S(max_norm / (norm + 1e-6));
    }
  return norm;
}

}  // namespace moe::mpi
