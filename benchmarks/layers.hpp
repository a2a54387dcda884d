// The layer that bench_layer and bench_routing time, SparseMoE<SwiGluExpert<float, F>,
// TopKGate<float>> (router softmax → top-k → renormalise, as in Mixtral) with expert weights in
// format F (F32 or Bf16) on a reference shape, built once per shape; its inputs; and
// BM_Layer_Forward, which both binaries read their other figures against.
#pragma once

#include "machine.hpp"
#include "registration.hpp"
#include "shapes.hpp"

#include <moe/moe.hpp>

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace moe::bench {

template <class F>
using LayerOf = SparseMoE<SwiGluExpert<float, F>, TopKGate<float>>;
using Layer = LayerOf<F32>;
using Matrix = RowMatrix<float>;

// Bytes of one stored weight in format F: what a decode step reads per weight.
template <class F>
inline constexpr double kWeightBytes = sizeof(typename F::Weight);

inline constexpr int kBatches = 4;  // input batches rotated through, so routing varies per iteration

template <class F = F32>
std::unique_ptr<LayerOf<F>> make_layer(const Shape& s) {
  TopKGate<float> gate({.d_model = s.d_model,
                        .num_experts = s.num_experts,
                        .top_k = s.top_k,
                        .scoring = Scoring::softmax,
                        .normalize = true,
                        .seed = 1});
  using X = SwiGluExpert<float, F>;
  X experts({.num_experts = s.num_experts, .d_model = s.d_model, .d_ff = s.d_ff, .seed = 2});
  if (s.num_shared == 0) return std::make_unique<LayerOf<F>>(std::move(gate), std::move(experts));
  SharedExperts<X> shared(X({.num_experts = s.num_shared, .d_model = s.d_model, .d_ff = s.shared_d_ff, .seed = 3}));
  return std::make_unique<LayerOf<F>>(std::move(gate), std::move(experts), std::move(shared));
}

// The layer of one shape and format, and its gradients once a benchmark asks for them. Only one
// lives at a time: mixtral-8x7b is 5.6 GB and deepseek-moe 2.2 GB. Benchmarks run in registration
// order, grouped by shape and format, so each is built once per run.
template <class F>
struct BuiltLayer {
  std::string_view shape;
  std::unique_ptr<LayerOf<F>> layer;
  std::unique_ptr<typename LayerOf<F>::Gradients> gradients;
};

template <class F>
BuiltLayer<F>& built_layer() {
  static BuiltLayer<F> built;
  return built;
}

template <class F = F32>
LayerOf<F>& layer_for(const Shape& s) {
  BuiltLayer<F>& built = built_layer<F>();
  if (!built.layer || built.shape != s.name) {
    built_layer<F32>() = {};  // free the previous layer (and its gradients) before allocating the next
    built_layer<Bf16>() = {};
    const auto start = std::chrono::steady_clock::now();
    built.layer = make_layer<F>(s);
    built.layer->prepack();  // as a model does once after loading: no forward pays for packing
    built.shape = s.name;
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    std::fprintf(stderr, "built the %s layer (%.2f GB of routed %s weights) in %.1f s\n", std::string(s.name).c_str(),
                 routed_weight_bytes(s, kWeightBytes<F>) * 1e-9, F::name, took.count());
  }
  return *built.layer;
}

// Gradients shaped like the layer of shape s, kept across the benchmarks of that shape.
template <class F = F32>
typename LayerOf<F>::Gradients& gradients_for(const Shape& s) {
  LayerOf<F>& layer = layer_for<F>(s);
  BuiltLayer<F>& built = built_layer<F>();
  if (!built.gradients) built.gradients = std::make_unique<typename LayerOf<F>::Gradients>(layer.make_gradients());
  return *built.gradients;
}

// kBatches batches x [T, d_model] ~ U(−1, 1), seeded by T: the same inputs in every run.
inline std::vector<Matrix> make_inputs(const Shape& s, Index num_tokens) {
  Generator rng(1000 + static_cast<std::uint64_t>(num_tokens));
  std::vector<Matrix> batches(kBatches, Matrix(num_tokens, s.d_model));
  for (auto& x : batches)
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(uniform(rng, -1.0, 1.0));
  return batches;
}

// While alive, Eigen's GEMMs use `threads` threads of their own (the way PyTorch runs its BLAS);
// afterwards Eigen is back to its default, OpenMP's thread count, which the layer lowers to one
// around its own products. The layer must not run inside this scope: it relies on that default.
class EigenThreads {
 public:
  explicit EigenThreads(int threads) { Eigen::setNbThreads(threads); }
  ~EigenThreads() { Eigen::setNbThreads(0); }
  EigenThreads(const EigenThreads&) = delete;
  EigenThreads& operator=(const EigenThreads&) = delete;
};

// What one forward computed, for the counters.
struct ForwardWork {
  Index assignments = 0;      // computed (token, routed expert) pairs
  Index experts_touched = 0;  // distinct routed experts with at least one token
};

// The timed loop of the forward benchmarks: forward(x, y) → ForwardWork over the rotating input
// batches, with the cache eviction rule of evicts_caches(), then the counters GFLOPS, GBps (of
// weights stored in weight_bytes each) and tokens_per_s of BM_Layer_Forward.
template <class Forward>
void time_forward(benchmark::State& state, const Shape& s, const std::vector<Matrix>& inputs, Matrix& y,
                  Forward&& forward, double weight_bytes = 4.0) {
  const Index num_tokens = y.rows();
  Index assignments = 0, experts_touched = 0;
  std::size_t batch = 0;
  time_iterations(state, evicts_caches(s, num_tokens), [&] {
    const ForwardWork work = forward(inputs[batch], y);
    benchmark::DoNotOptimize(y.data());
    assignments += work.assignments;
    experts_touched += work.experts_touched;
    batch = (batch + 1) % inputs.size();
  });
  add_rate(state, "GFLOPS", expert_flops(s, assignments) * 1e-9);
  add_rate(state, "GBps", expert_bytes(s, experts_touched, weight_bytes) * 1e-9);
  add_tokens_rate(state, num_tokens);
}

template <class F = F32>
void BM_Layer_Forward(benchmark::State& state, const Shape& s, Index num_tokens, int threads) {
  LayerOf<F>& layer = layer_for<F>(s);
  layer.set_num_threads(threads);
  const auto inputs = make_inputs(s, num_tokens);
  Matrix y(num_tokens, s.d_model);
  layer.forward(inputs[0], y);  // sizes the workspace: the timed loop does not allocate

  time_forward(state, s, inputs, y, [&](const Matrix& x, Matrix& out) {
    layer.forward(x, out);
    const RoutingStats& stats = layer.last_stats();
    return ForwardWork{stats.assignments, s.num_experts - stats.unused_experts};
  }, kWeightBytes<F>);
  state.SetLabel(layer.kernels());
}

// BM_Layer_Forward/<shape>/T:<T>/threads:<n> for fp32 weights (the name it always had), with
// /w:<format> after it for another format.
template <class F = F32>
void add_layer_forward(const Shape& s, Index num_tokens, int threads) {
  const std::string suffix = std::is_same_v<F, F32> ? "" : std::string("/w:") + F::name;
  add(case_name("BM_Layer_Forward", s, num_tokens, threads) + suffix, BM_Layer_Forward<F>, s, num_tokens, threads);
}

}  // namespace moe::bench
