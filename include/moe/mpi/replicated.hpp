// The parameters every rank holds (the router, the shared experts) get gradients from each rank's
// own tokens; before an optimizer step they are summed over the ranks — in rank order, so every
// rank steps its copy with the same bits and the copies stay equal. The sum differs from one
// process's sum over the whole batch in the last bits (the tokens' terms are grouped by rank):
// within a few float roundings, tested in tests/mpi. The experts' gradients are each rank's own.
#pragma once

#include "moe/mpi/communicator.hpp"
#include "moe/parameters.hpp"

#include <mpi.h>

#include <string_view>

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

}  // namespace moe::mpi
