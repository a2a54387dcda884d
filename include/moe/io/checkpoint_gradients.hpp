// The gradients of a checkpoint layer (load_checkpoint_layer's) under the checkpoint's own tensor
// names, to compare with PyTorch autograd's .grad of the Hugging Face module's parameters:
//
//   auto grads = layer.make_gradients();
//   layer.forward(x, y, cache);  layer.backward(cache, d_y, d_x, grads);
//   moe::io::checkpoint_gradients(grads, moe::io::CheckpointFormat::mixtral, prefix).write("grads.safetensors");
//
// Every tensor the loader read that has a gradient, float32: gate.weight, each expert's projections
// (w1/w3/w2 or gate_proj/up_proj/down_proj), the shared experts' and Qwen2-MoE's shared_expert_gate.
// DeepSeek-V3's e_score_correction_bias has none (it is updated by its own rule) and is left out.
#pragma once

#include "moe/io/checkpoint.hpp"
#include "moe/io/safetensors_writer.hpp"

#include <array>
#include <span>
#include <string>

namespace moe::io {

// expert_ids: the checkpoint's id of each expert of the bank (a process's experts under expert
// parallelism: MpiExchange::experts()); empty: 0, 1, ...
template <class S, class F>
SafetensorsWriter checkpoint_gradients(const LayerGradients<S, TopKGate<S>, SwiGluExpert<S, F>>& grads,
                                       CheckpointFormat format, const std::string& prefix = "",
                                       std::span<const Index> expert_ids = {}) {
  const bool mixtral = format == CheckpointFormat::mixtral, qwen2 = format == CheckpointFormat::qwen2_moe;
  const std::array<std::string, 3> projection =
      mixtral ? std::array<std::string, 3>{"w1", "w3", "w2"} : std::array<std::string, 3>{"gate_proj", "up_proj", "down_proj"};
  SafetensorsWriter out;
  out.add(prefix + "gate.weight", grads.gate.router().weight());
  // head + "<e>." + projection (a bank), or head + projection (one expert: `single`).
  const auto add_bank = [&](const std::string& head, const SwiGluExpert<S, F>& bank, bool single) {
    for (Index e = 0; e < bank.num_experts(); ++e) {
      const Index id = single || expert_ids.empty() ? e : expert_ids[static_cast<std::size_t>(e)];
      const std::string at = head + (single ? "" : moe::detail::concat(id, "."));
      out.add(at + projection[0] + ".weight", bank.w1()[e]);
      out.add(at + projection[1] + ".weight", bank.w3()[e]);
      out.add(at + projection[2] + ".weight", bank.w2()[e]);
    }
  };
  add_bank(prefix + "experts.", grads.experts, false);
  if (grads.shared) {
    add_bank(prefix + (qwen2 ? "shared_expert." : "shared_experts."), grads.shared->experts, true);
    if (qwen2) out.add(prefix + "shared_expert_gate.weight", grads.shared->gate_weight);
  }
  return out;
}

}  // namespace moe::io
