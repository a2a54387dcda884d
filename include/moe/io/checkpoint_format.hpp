// The Hugging Face MoE layer formats moe::io reads (io/checkpoint.hpp describes each), the routing
// values a checkpoint does not hold, and the gate configuration each format implies.
#pragma once

#include "moe/gating/top_k_gate.hpp"
#include "moe/types.hpp"

#include <optional>
#include <string_view>

namespace moe::io {

enum class CheckpointFormat { mixtral, qwen2_moe, deepseek_v2, deepseek_v3 };

// "mixtral", "qwen2-moe", "deepseek-v2", "deepseek-v3"
inline std::string_view format_name(CheckpointFormat f) {
  switch (f) {
    case CheckpointFormat::mixtral: return "mixtral";
    case CheckpointFormat::qwen2_moe: return "qwen2-moe";
    case CheckpointFormat::deepseek_v2: return "deepseek-v2";
    case CheckpointFormat::deepseek_v3: return "deepseek-v3";
  }
  return "?";
}

inline std::optional<CheckpointFormat> parse_format(std::string_view name) {
  for (const auto f : {CheckpointFormat::mixtral, CheckpointFormat::qwen2_moe, CheckpointFormat::deepseek_v2,
                       CheckpointFormat::deepseek_v3})
    if (format_name(f) == name) return f;
  return std::nullopt;
}

// The routing values a checkpoint does not hold (HF config.json names; unset = the format's
// default), and what the layer is loaded for.
struct CheckpointOptions {
  std::optional<Index> top_k{};                    // num_experts_per_tok
  std::optional<bool> norm_topk_prob{};
  std::optional<Index> n_group{}, topk_group{};
  std::optional<double> routed_scaling_factor{};
  // Inference only: the experts hold just their packed weights (as after release_master_weights()),
  // read and packed one expert at a time, so that loading peaks near the packed layer's size.
  bool inference_only = false;
};

// HF defaults: Mixtral k = 2, always renormalised; Qwen2-MoE k = 4, norm_topk_prob = false;
// DeepSeek-V2(-Lite) k = 6, greedy, no renormalisation, scale 1; DeepSeek-V3 k = 8, n_group = 8,
// topk_group = 4, renormalised, scale 2.5.
inline TopKGateConfig checkpoint_gate_config(CheckpointFormat f, Index d_model, Index num_experts,
                                             const CheckpointOptions& o) {
  TopKGateConfig c{.d_model = d_model, .num_experts = num_experts};
  const bool v3 = f == CheckpointFormat::deepseek_v3, v2 = f == CheckpointFormat::deepseek_v2;
  c.top_k = o.top_k.value_or(f == CheckpointFormat::mixtral ? 2 : f == CheckpointFormat::qwen2_moe ? 4 : v2 ? 6 : 8);
  c.normalize = o.norm_topk_prob.value_or(f == CheckpointFormat::mixtral || v3);
  c.n_group = o.n_group.value_or(v3 ? 8 : 1);
  c.topk_group = o.topk_group.value_or(v3 ? 4 : 1);
  const double scale = o.routed_scaling_factor.value_or(v3 ? 2.5 : 1.0);
  if (v3) {
    c.scoring = Scoring::sigmoid;
    c.selection_bias = true;
    c.scale = scale;
  } else if (v2) {
    c.group_score = GroupScore::max;
    c.scale = c.normalize ? 1.0 : scale;  // DeepSeek-V2 scales only the unnormalised weights
  } else {
    c.scale = scale;
  }
  return c;
}

}  // namespace moe::io
