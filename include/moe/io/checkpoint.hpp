// Loading one MoE layer of a Hugging Face checkpoint (safetensors) into a ready SparseMoE.
//
//   auto file = moe::io::SafetensorsFile::open("model-00002-of-00019.safetensors");
//   auto layer = moe::io::load_checkpoint_layer<float>(file, moe::io::CheckpointFormat::mixtral,
//                                                      "model.layers.3.block_sparse_moe.");
//
// Names under the prefix, and the semantics each format gets (as the HF modules compute them):
//   mixtral      gate.weight [E, d]; experts.{i}.w1|w3.weight [f, d], experts.{i}.w2.weight [d, f]
//                softmax → top-k → renormalise (MixtralSparseMoeBlock)
//   qwen2-moe    gate.weight; experts.{i}.gate_proj|up_proj|down_proj.weight (= w1, w3, w2);
//                shared_expert.{gate,up,down}_proj.weight; shared_expert_gate.weight [1, d]
//                softmax → top-k (→ renormalise if norm_topk_prob) + σ(x·w_sg)·shared_expert(x)
//   deepseek-v2  gate.weight; experts.{i}.*_proj.weight; shared_experts.*_proj.weight [n_shared·f, d]
//                softmax → (group-limited: group score = max) top-k → renormalise if
//                norm_topk_prob, else × routed_scaling_factor; + shared experts
//   deepseek-v3  as v2, plus gate.e_score_correction_bias [E] (the selection bias): sigmoid scores,
//                bias for choosing only, group score = sum of the top 2, weights from the unbiased
//                scores, renormalised, × routed_scaling_factor; + shared experts
// DeepSeek's n shared experts are one FFN of width n·f: they load as a bank of one expert.
// Shapes come from the file (E counts experts.{i}); what a file cannot tell comes from
// CheckpointOptions, defaulting to the HF configs' defaults of the format.
//
// Known deviation: DeepSeek masks the experts of unselected groups with 0, this library with −inf;
// the two differ only when a biased score of a selected group is negative.
//
// Every failure is a moe::io_error naming the file, the tensor and what was expected: a missing
// tensor, a wrong shape, experts numbered with a gap, a tensor under the prefix that the format
// does not use (a file of another format). The layer is built only once everything has been read.
#pragma once

#include "moe/detail/parallel.hpp"
#include "moe/errors.hpp"
#include "moe/experts/gated.hpp"
#include "moe/gating/top_k_gate.hpp"
#include "moe/io/checkpoint_files.hpp"
#include "moe/io/checkpoint_format.hpp"
#include "moe/io/layer_tensors.hpp"
#include "moe/io/safetensors.hpp"
#include "moe/layer/shared_experts.hpp"
#include "moe/layer/sparse_moe.hpp"

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace moe::io {

// F: the experts' weight format (fp32 by default; Bf16 rounds the file's values to bfloat16, which
// keeps a BF16 checkpoint's values exactly).
template <class S, class F = kernels::NativeFormat<S>>
using CheckpointLayer = SparseMoE<SwiGluExpert<S, F>, TopKGate<S>>;

}  // namespace moe::io

namespace moe::detail {

// The first expert's first projection under a layer's prefix: the tensor that names the format.
inline std::string first_expert_tensor(io::CheckpointFormat format) {
  return format == io::CheckpointFormat::mixtral ? "experts.0.w1.weight" : "experts.0.gate_proj.weight";
}

// A bank of the SwiGLU experts `ids` (ascending) of the tensors "<head><i>.<w1|w3|w2>.weight" (HF
// names: gate_proj, up_proj, down_proj) for i < num_experts, the others' shapes checked but not
// read; or with `single` one expert from "<head><w1|w3|w2>.weight". Each tensor's pages go back to
// the system once read. inference_only: a bank without master weights, each expert read into
// buffers of one expert and packed (GatedExpert::without_masters).
template <class S, class F>
SwiGluExpert<S, F> read_swiglu_bank(LayerTensors& in, const std::string& head, const std::vector<Index>& ids,
                                    Index num_experts, Index d_model, bool hf_names, bool single,
                                    bool inference_only) {
  const std::string w1 = hf_names ? "gate_proj" : "w1", w3 = hf_names ? "up_proj" : "w3",
                    w2 = hf_names ? "down_proj" : "w2";
  auto name = [&](Index e, const std::string& w) {
    return single ? head + w + ".weight" : concat(head, e, ".", w, ".weight");
  };
  // d_model comes from the router (gate.weight), d_ff from the first expert's down projection.
  const auto& down = in.shape(name(0, w2), 2);
  if (down[0] != d_model)
    in.fail(name(0, w2), "shape ", io::shape_text(down), " but expected [", d_model,
            ", d_ff] ([d_model, d_ff], d_model from gate.weight)");
  const Index d_ff = down[1];
  const std::string from = concat("d_ff from ", name(0, w2), ", d_model from gate.weight");
  const ExpertConfig config{.num_experts = Index(ids.size()), .d_model = d_model, .d_ff = d_ff, .init = Init::zeros};
  auto bank = inference_only ? SwiGluExpert<S, F>::without_masters(config) : SwiGluExpert<S, F>(config);
  // inference_only: one expert's w1 and w3 (then w2, in w1's place), packed and dropped in turn
  // (bf16 experts from BF16 tensors: packed from the file's bytes).
  RowMatrix<S> one_w1, one_w3;
  const int threads = resolve_threads(0);
  const auto read = [&](Index e, const std::string& w, const std::vector<Index>& shape, MatrixRef<S> out,
                        std::string_view why) {
    in.read(name(e, w), shape, out, why);
    in.release(name(e, w));
  };
  // Each expert's tensors are asked of the file one expert ahead, so reading overlaps converting.
  const auto prefetch = [&](Index e) {
    for (const auto& w : {w1, w3, w2}) in.prefetch(name(e, w));
  };
  const std::string up = concat("[d_ff, d_model], ", from), down_why = concat("[d_model, d_ff], ", from);
  for (Index e = 0; e < num_experts; ++e)
    if (!std::binary_search(ids.begin(), ids.end(), e)) {
      in.skip(name(e, w1), {d_ff, d_model}, up);
      in.skip(name(e, w3), {d_ff, d_model}, up);
      in.skip(name(e, w2), {d_model, d_ff}, down_why);
    }
  if (!ids.empty()) prefetch(ids[0]);
  for (Index i = 0; i < Index(ids.size()); ++i) {
    const Index e = ids[static_cast<std::size_t>(i)];
    if (i + 1 < Index(ids.size())) prefetch(ids[static_cast<std::size_t>(i) + 1]);
    if (!inference_only) {
      read(e, w1, {d_ff, d_model}, bank.w1()[i], up);
      read(e, w3, {d_ff, d_model}, bank.w3()[i], up);
      read(e, w2, {d_model, d_ff}, bank.w2()[i], down_why);
      continue;
    }
    if constexpr (std::same_as<F, kernels::Bf16Format>) {
      if (in.is_bf16(name(e, w1)) && in.is_bf16(name(e, w3)) && in.is_bf16(name(e, w2))) {
        bank.pack_expert_up(i, in.bf16_rows(name(e, w1), {d_ff, d_model}, up),
                            in.bf16_rows(name(e, w3), {d_ff, d_model}, up), threads);
        bank.pack_expert_down(i, in.bf16_rows(name(e, w2), {d_model, d_ff}, down_why), threads);
        for (const auto& w : {w1, w3, w2}) in.release(name(e, w));
        continue;
      }
    }
    one_w1.resize(d_ff, d_model), one_w3.resize(d_ff, d_model);
    read(e, w1, {d_ff, d_model}, one_w1, up);
    read(e, w3, {d_ff, d_model}, one_w3, up);
    bank.pack_expert_up(i, one_w1, one_w3, threads);
    Eigen::Map<RowMatrix<S>> one_w2(one_w1.data(), d_model, d_ff);
    read(e, w2, {d_model, d_ff}, one_w2, down_why);
    bank.pack_expert_down(i, one_w2, threads);
  }
  return bank;
}

// The parts of a checkpoint layer: the router, the experts `ids` (all when nullopt), the shared
// experts; load_checkpoint_layer's reading, for any exchange.
template <class S, class F>
struct CheckpointParts {
  TopKGate<S> gate;
  SwiGluExpert<S, F> experts;
  std::optional<SharedExperts<SwiGluExpert<S, F>>> shared;
};

template <class S, class F>
CheckpointParts<S, F> read_checkpoint_parts(const io::CheckpointFiles& file, io::CheckpointFormat format,
                                            const std::string& prefix, const io::CheckpointOptions& options,
                                            std::optional<std::vector<Index>> ids) {
  using io::CheckpointFormat;
  LayerTensors in(file, prefix, format);
  const bool hf_names = format != CheckpointFormat::mixtral;
  const Index E = in.count_experts();
  // Fail on the format's first expert tensor before anything else: that names a wrong format.
  in.shape(first_expert_tensor(format), 2);
  const std::string experts_found = concat(E, " experts found under the prefix");
  if (!ids) {
    ids.emplace(static_cast<std::size_t>(E));
    for (Index e = 0; e < E; ++e) (*ids)[static_cast<std::size_t>(e)] = e;
  }
  for (const Index e : *ids)
    check_config(e >= 0 && e < E, "load_checkpoint_layer", "expert ", e, " asked for but ", experts_found);
  const auto& gate_shape = in.shape("gate.weight", 2);
  if (gate_shape[0] != E)
    in.fail("gate.weight", "shape ", io::shape_text(gate_shape), " but expected [", E,
            ", d_model] ([num_experts, d_model], ", experts_found, ")");
  const Index d = gate_shape[1];
  RowMatrix<S> gate_weight(E, d);
  in.read("gate.weight", {E, d}, gate_weight, concat("[num_experts, d_model], ", experts_found));
  Vector<S> selection_bias;
  if (format == CheckpointFormat::deepseek_v3) {
    selection_bias.resize(E);
    in.read("gate.e_score_correction_bias", {E}, Eigen::Map<RowMatrix<S>>(selection_bias.data(), 1, E),
            "[num_experts]");
  }
  auto experts = read_swiglu_bank<S, F>(in, "experts.", *ids, E, d, hf_names, false, options.inference_only);
  std::optional<SharedExperts<SwiGluExpert<S, F>>> shared;
  if (format == CheckpointFormat::qwen2_moe) {
    shared.emplace(read_swiglu_bank<S, F>(in, "shared_expert.", {0}, 1, d, true, true, options.inference_only),
                   /*gated=*/true);
    in.read("shared_expert_gate.weight", {1, d}, shared->gate_weight(), "[1, d_model]");
  } else if (format != CheckpointFormat::mixtral) {
    shared.emplace(read_swiglu_bank<S, F>(in, "shared_experts.", {0}, 1, d, true, true, options.inference_only),
                   /*gated=*/false);
  }
  in.check_all_used();

  TopKGate<S> gate(io::checkpoint_gate_config(format, d, E, options));
  gate.router().weight() = std::move(gate_weight);
  if (selection_bias.size() > 0) gate.selection_bias() = std::move(selection_bias);
  return {std::move(gate), std::move(experts), std::move(shared)};
}

}  // namespace moe::detail

namespace moe::io {

// One MoE layer of `format` under `prefix` (e.g. "model.layers.3.block_sparse_moe."), in S, its
// experts' weights in format F, from one safetensors file or a sharded checkpoint.
//   ensures: a layer in inference mode; shared() is set for qwen2-moe and deepseek-*, null for mixtral;
//            with options.inference_only, its experts hold only their packed weights.
//   throws:  io_error (file, tensor, expectation) for anything the file lacks or holds wrongly;
//            config_error when the options do not fit the file (e.g. top_k > num_experts).
template <class S, class F = kernels::NativeFormat<S>>
CheckpointLayer<S, F> load_checkpoint_layer(const CheckpointFiles& file, CheckpointFormat format,
                                            const std::string& prefix = "", const CheckpointOptions& options = {}) {
  auto parts = moe::detail::read_checkpoint_parts<S, F>(file, format, prefix, options, std::nullopt);
  return CheckpointLayer<S, F>(LocalExchange{}, std::move(parts.gate), std::move(parts.experts),
                               std::move(parts.shared));
}

// The number of experts of the layer under `prefix` (what an exchange over processes is made with
// before each process loads its own: mpi/checkpoint.hpp).
//   throws: io_error, as load_checkpoint_layer, when the experts are missing or numbered with a gap.
inline Index checkpoint_num_experts(const CheckpointFiles& file, CheckpointFormat format,
                                    const std::string& prefix = "") {
  return moe::detail::LayerTensors(file, prefix, format).count_experts();
}

// The dtype in which the file stores the layer's expert weights (its first expert's first
// projection): what to choose the experts' format by, e.g. Bf16 for a BF16 file.
//   throws: io_error, as load_checkpoint_layer, when the layer has no such tensor.
inline Dtype expert_dtype(const CheckpointFiles& file, CheckpointFormat format, const std::string& prefix = "") {
  const moe::detail::LayerTensors in(file, prefix, format);
  const std::string first = moe::detail::first_expert_tensor(format);
  in.shape(first, 2);
  return file.info(prefix + first).dtype;
}

}  // namespace moe::io
