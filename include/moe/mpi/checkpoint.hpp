// Loading a checkpoint layer over the ranks of an MpiExchange: every rank reads the router and the
// shared experts, and of the routed experts only its own (exchange.experts()) — the others' shapes
// are checked, their bytes never read — so a rank's memory is its share of the experts plus the
// replicated parts.
//
//   const auto files = moe::io::CheckpointFiles::open("model.safetensors.index.json");
//   moe::mpi::MpiExchange<float> exchange(MPI_COMM_WORLD,
//       moe::io::checkpoint_num_experts(files, format, prefix));
//   auto layer = moe::mpi::load_checkpoint_layer<float, moe::Bf16>(files, format, exchange, prefix);
#pragma once

#include "moe/io/checkpoint.hpp"
#include "moe/mpi/exchange.hpp"

#include <optional>
#include <string>

namespace moe::mpi {

template <class S, class F = kernels::NativeFormat<S>>
using CheckpointLayer = BasicSparseMoE<MpiExchange<S>, SwiGluExpert<S, F>, TopKGate<S>>;

// Collective. io::load_checkpoint_layer's layer with this rank's experts; a file that fails on one
// rank (missing, corrupt, another shape) is an exception on every rank (see
// MpiExchange::collective), as is an exchange made for another number of experts.
template <class S, class F = kernels::NativeFormat<S>>
CheckpointLayer<S, F> load_checkpoint_layer(const io::CheckpointFiles& file, io::CheckpointFormat format,
                                            const MpiExchange<S>& exchange, const std::string& prefix = "",
                                            const io::CheckpointOptions& options = {}) {
  std::optional<moe::detail::CheckpointParts<S, F>> parts;
  exchange.collective(
      [&] {
        const Index E = io::checkpoint_num_experts(file, format, prefix);
        moe::detail::check_config(E == exchange.num_experts(), "mpi::load_checkpoint_layer", "the file has ", E,
                                  " experts but the exchange was made for ", exchange.num_experts());
        parts.emplace(moe::detail::read_checkpoint_parts<S, F>(file, format, prefix, options, exchange.experts()));
      },
      [] {});
  return CheckpointLayer<S, F>(exchange, std::move(parts->gate), std::move(parts->experts), std::move(parts->shared));
}

}  // namespace moe::mpi
