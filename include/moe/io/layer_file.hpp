// Saving and loading a whole CheckpointLayer<S> (SparseMoE of SwiGLU experts, a TopKGate and
// optional shared experts) in moe's own safetensors layout:
//
//   moe::io::save_layer(layer, "layer.safetensors");
//   auto copy = moe::io::load_layer<float>(moe::io::SafetensorsFile::open("layer.safetensors"));
//
// Tensors keep the names of parameters(): gate.weight [E, d], gate.bias [E], gate.noise_weight
// [E, d], gate.selection_bias [E], experts.w1|w3 [E, f, d], experts.w2 [E, d, f],
// shared_experts.w1|w3|w2 and shared_experts.gate_weight [1, d] (the optional ones only when
// present), in S's own dtype (F32 or F64), so a round trip gives the same bits. A layer with bf16
// experts (CheckpointLayer<float, Bf16>) saves its fp32 master weights; load_layer<float, Bf16>
// gives it back with the same bits, and its packed bf16 weights with them. The configuration
// is in "__metadata__" ("moe.layer", "gate.top_k", ...; doubles written shortest-round-trip).
// Not saved: the noise generator's position (a loaded gate restarts it from its seed), the mode
// and the thread count.
#pragma once

#include "moe/io/checkpoint.hpp"
#include "moe/io/safetensors.hpp"
#include "moe/io/safetensors_writer.hpp"

#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <type_traits>

namespace moe::io {

inline constexpr std::string_view kLayerFileTag = "SparseMoE<SwiGluExpert, TopKGate> v1";

}  // namespace moe::io

namespace moe::detail {

inline std::string number_text(double v) {
  char buffer[64];
  const auto [end, error] = std::to_chars(buffer, buffer + sizeof buffer, v);
  return std::string(buffer, error == std::errc() ? end : buffer);
}

// Reads typed values out of a file's metadata; a missing or malformed entry is an io_error.
class MetadataReader {
 public:
  explicit MetadataReader(const io::SafetensorsFile& file) : file_(file) {}

  const std::string& text(const std::string& key) const {
    const auto it = file_.metadata().find(key);
    if (it == file_.metadata().end()) fail(key, "missing (a layer saved by moe::io::save_layer has it)");
    return it->second;
  }
  template <class T>
  T number(const std::string& key) const {
    const std::string& s = text(key);
    T v{};
    const auto [end, error] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (error != std::errc() || end != s.data() + s.size()) fail(key, "\"", s, "\" is not a number");
    return v;
  }
  bool flag(const std::string& key) const {
    const std::string& s = text(key);
    if (s != "0" && s != "1") fail(key, "\"", s, "\" but expected \"0\" or \"1\"");
    return s == "1";
  }
  template <class... Parts>
  [[noreturn]] void fail(const std::string& key, const Parts&... what) const {
    moe::detail::raise(io_error(concat(file_.origin(), ": __metadata__ \"", key, "\": ", what...)));
  }

 private:
  const io::SafetensorsFile& file_;
};

template <class S, class Dst>
void read_exact(const io::SafetensorsFile& file, const std::string& name, const std::vector<Index>& shape, Dst&& out) {
  file.expect_shape(name, shape);
  file.read_into(name, out);
}

}  // namespace moe::detail

namespace moe::io {

// The bytes of save_layer's file.
template <class S, class F>
SafetensorsWriter layer_writer(const CheckpointLayer<S, F>& layer) {
  constexpr Dtype dtype = std::is_same_v<S, float> ? Dtype::F32 : Dtype::F64;
  const TopKGateConfig& g = layer.gate().config();
  const ExpertConfig& x = layer.experts().config();
  SafetensorsWriter w;
  auto n = [](auto v) { return moe::detail::number_text(static_cast<double>(v)); };
  auto i = [](auto v) { return std::to_string(static_cast<long long>(v)); };
  w.metadata("moe.layer", std::string(kLayerFileTag));
  w.metadata("gate.d_model", i(g.d_model)).metadata("gate.num_experts", i(g.num_experts));
  w.metadata("gate.top_k", i(g.top_k)).metadata("gate.scoring", i(g.scoring));
  w.metadata("gate.normalize", i(g.normalize)).metadata("gate.scale", n(g.scale));
  w.metadata("gate.router_bias", i(g.router_bias)).metadata("gate.selection_bias", i(g.selection_bias));
  w.metadata("gate.n_group", i(g.n_group)).metadata("gate.topk_group", i(g.topk_group));
  w.metadata("gate.group_score", i(g.group_score)).metadata("gate.noisy", i(g.noisy));
  w.metadata("gate.jitter", n(g.jitter)).metadata("gate.seed", std::to_string(g.seed));
  w.metadata("gate.capacity.factor", g.capacity.factor ? n(*g.capacity.factor) : "none");
  w.metadata("gate.capacity.min_capacity", i(g.capacity.min_capacity));
  w.metadata("gate.capacity.policy", i(g.capacity.policy));
  w.metadata("experts.num_experts", i(x.num_experts)).metadata("experts.d_model", i(x.d_model));
  w.metadata("experts.d_ff", i(x.d_ff)).metadata("experts.seed", std::to_string(x.seed));
  const auto* shared = layer.shared();
  w.metadata("shared", i(shared != nullptr));
  const auto& router = layer.gate().router();
  w.add("gate.weight", router.weight(), dtype);
  if (router.has_bias()) w.add("gate.bias", router.bias().transpose(), {g.num_experts}, dtype);
  if (g.noisy) w.add("gate.noise_weight", layer.gate().noise_weight(), dtype);
  if (g.selection_bias) w.add("gate.selection_bias", layer.gate().selection_bias().transpose(), {g.num_experts}, dtype);
  auto add_bank = [&](const std::string& prefix, const SwiGluExpert<S, F>& bank) {
    const Index E = bank.num_experts(), d = bank.d_model(), f = bank.d_ff();
    w.add(prefix + "w1", bank.w1().all(), {E, f, d}, dtype);
    w.add(prefix + "w2", bank.w2().all(), {E, d, f}, dtype);
    w.add(prefix + "w3", bank.w3().all(), {E, f, d}, dtype);
  };
  add_bank("experts.", layer.experts());
  if (shared) {
    const ExpertConfig& s = shared->experts().config();
    w.metadata("shared.gated", i(shared->gated())).metadata("shared.num_experts", i(s.num_experts));
    w.metadata("shared.d_ff", i(s.d_ff)).metadata("shared.seed", std::to_string(s.seed));
    add_bank("shared_experts.", shared->experts());
    if (shared->gated()) w.add("shared_experts.gate_weight", shared->gate_weight(), dtype);
  }
  return w;
}

// Writes the layer (config and every tensor) to path; atomic (see SafetensorsWriter::write).
template <class S, class F>
void save_layer(const CheckpointLayer<S, F>& layer, const std::filesystem::path& path, WriteOptions options = {}) {
  layer_writer(layer).write(path, options);
}

// The layer that save_layer wrote, bit for bit (in inference mode, noise restarted from its seed).
//   throws: io_error naming the file and the metadata key or tensor that is missing or wrong;
//           config_error if the saved configuration is invalid.
template <class S, class F = kernels::NativeFormat<S>>
CheckpointLayer<S, F> load_layer(const SafetensorsFile& file) {
  const moe::detail::MetadataReader meta(file);
  if (meta.text("moe.layer") != kLayerFileTag)
    meta.fail("moe.layer", "\"", meta.text("moe.layer"), "\" but expected \"", kLayerFileTag, "\"");
  TopKGateConfig g;
  g.d_model = meta.number<Index>("gate.d_model");
  g.num_experts = meta.number<Index>("gate.num_experts");
  g.top_k = meta.number<Index>("gate.top_k");
  const int scoring = meta.number<int>("gate.scoring"), group_score = meta.number<int>("gate.group_score"),
            policy = meta.number<int>("gate.capacity.policy");
  if (scoring < 0 || scoring > 2) meta.fail("gate.scoring", scoring, " but expected 0, 1 or 2");
  if (group_score < 0 || group_score > 1) meta.fail("gate.group_score", group_score, " but expected 0 or 1");
  if (policy < 0 || policy > 1) meta.fail("gate.capacity.policy", policy, " but expected 0 or 1");
  g.scoring = static_cast<Scoring>(scoring);
  g.group_score = static_cast<GroupScore>(group_score);
  g.capacity.policy = static_cast<DropPolicy>(policy);
  g.normalize = meta.flag("gate.normalize");
  g.scale = meta.number<double>("gate.scale");
  g.router_bias = meta.flag("gate.router_bias");
  g.selection_bias = meta.flag("gate.selection_bias");
  g.n_group = meta.number<Index>("gate.n_group");
  g.topk_group = meta.number<Index>("gate.topk_group");
  g.noisy = meta.flag("gate.noisy");
  g.jitter = meta.number<double>("gate.jitter");
  g.seed = meta.number<std::uint64_t>("gate.seed");
  if (meta.text("gate.capacity.factor") != "none") g.capacity.factor = meta.number<double>("gate.capacity.factor");
  g.capacity.min_capacity = meta.number<Index>("gate.capacity.min_capacity");
  const ExpertConfig x{.num_experts = meta.number<Index>("experts.num_experts"),
                       .d_model = meta.number<Index>("experts.d_model"),
                       .d_ff = meta.number<Index>("experts.d_ff"),
                       .seed = meta.number<std::uint64_t>("experts.seed"),
                       .init = Init::zeros};  // read below

  TopKGate<S> gate(g);
  const Index E = g.num_experts, d = g.d_model;
  moe::detail::read_exact<S>(file, "gate.weight", {E, d}, gate.router().weight());
  if (g.router_bias)
    moe::detail::read_exact<S>(file, "gate.bias", {E}, Eigen::Map<RowMatrix<S>>(gate.router().bias().data(), 1, E));
  if (g.noisy) moe::detail::read_exact<S>(file, "gate.noise_weight", {E, d}, gate.noise_weight());
  if (g.selection_bias)
    moe::detail::read_exact<S>(file, "gate.selection_bias", {E},
                          Eigen::Map<RowMatrix<S>>(gate.selection_bias().data(), 1, E));
  auto read_bank = [&](const std::string& prefix, const ExpertConfig& c) {
    SwiGluExpert<S, F> bank(c);
    const Index n = c.num_experts, f = c.d_ff;
    moe::detail::read_exact<S>(file, prefix + "w1", {n, f, c.d_model}, bank.w1().all());
    moe::detail::read_exact<S>(file, prefix + "w2", {n, c.d_model, f}, bank.w2().all());
    moe::detail::read_exact<S>(file, prefix + "w3", {n, f, c.d_model}, bank.w3().all());
    return bank;
  };
  SwiGluExpert<S, F> experts = read_bank("experts.", x);
  if (!meta.flag("shared")) return CheckpointLayer<S, F>(std::move(gate), std::move(experts));
  const bool gated = meta.flag("shared.gated");
  const ExpertConfig sx{.num_experts = meta.number<Index>("shared.num_experts"), .d_model = x.d_model,
                        .d_ff = meta.number<Index>("shared.d_ff"), .seed = meta.number<std::uint64_t>("shared.seed"),
                        .init = Init::zeros};
  SharedExperts<SwiGluExpert<S, F>> shared(read_bank("shared_experts.", sx), gated);
  if (gated) moe::detail::read_exact<S>(file, "shared_experts.gate_weight", {1, x.d_model}, shared.gate_weight());
  return CheckpointLayer<S, F>(std::move(gate), std::move(experts), std::move(shared));
}

}  // namespace moe::io
