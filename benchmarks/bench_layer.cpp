// bench_layer: one forward pass of the whole layer, SparseMoE<SwiGluExpert<float>, TopKGate<float>>
// (router softmax → top-k → renormalise, as in Mixtral), on the reference shapes of BENCHMARKS.md;
// and one training step's forward + backward of the same layer.
//
// Run:
//   bench_layer --benchmark_filter='small|mixtral-mini' --benchmark_min_time=0.05
//   bench_layer --benchmark_filter='mixtral-8x7b/T:1/'   # builds a 5.6 GB layer first (seconds)
// Read:
//   BM_Layer_Forward/<shape>/T:<num_tokens>/threads:<n>/real_time   (Google Benchmark appends
//   /real_time)  Time: wall-clock ms per forward of x [T, d_model] → y [T, d_model].
//   GFLOPS        routed expert FLOPs per second, counted from the batch's actual assignments:
//                 2·3·d_model·d_ff per computed (token, expert) pair. Router and shared experts
//                 are excluded (deepseek-moe runs its 2 shared experts, but they are not counted).
//   GBps          distinct routed expert weight bytes the batch touches, per second.
//   tokens_per_s  tokens per second.
//   BM_Layer_ForwardBackward/...: forward with a cache + backward (d_x and every gradient); GFLOPS
//   counts 3× the forward's expert FLOPs (BENCHMARKS.md's convention). Not for mixtral-8x7b.
// Decode (T ≤ 16) is memory-bound: compare GBps with the DRAM bandwidth. Prefill (T ≥ 128) is
// compute-bound: compare GFLOPS with the FMA peak. BENCHMARKS.md has both; the machine is noisy, so
// quote ratios from one run, not absolute numbers from different days.
#include "shapes.hpp"

#include <moe/moe.hpp>

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace {

using moe::Index;
using moe::bench::Shape;
using Layer = moe::SparseMoE<moe::SwiGluExpert<float>, moe::TopKGate<float>>;

constexpr Index kDecodeTokens = 16;  // T ≤ this is decode
constexpr int kBatches = 4;          // input batches rotated through, so routing varies per iteration

std::unique_ptr<Layer> make_layer(const Shape& s) {
  moe::TopKGate<float> gate({.d_model = s.d_model,
                             .num_experts = s.num_experts,
                             .top_k = s.top_k,
                             .scoring = moe::Scoring::softmax,
                             .normalize = true,
                             .seed = 1});
  moe::SwiGluExpert<float> experts(
      {.num_experts = s.num_experts, .d_model = s.d_model, .d_ff = s.d_ff, .seed = 2});
  if (s.num_shared == 0) return std::make_unique<Layer>(std::move(gate), std::move(experts));
  moe::SharedExperts<moe::SwiGluExpert<float>> shared(moe::SwiGluExpert<float>(
      {.num_experts = s.num_shared, .d_model = s.d_model, .d_ff = s.shared_d_ff, .seed = 3}));
  return std::make_unique<Layer>(std::move(gate), std::move(experts), std::move(shared));
}

// The layer of shape s, built on first use. Only one layer lives at a time: mixtral-8x7b is 5.6 GB
// and deepseek-moe 2.2 GB. Benchmarks run in registration order, grouped by shape, so each shape
// is built once per run.
// The gradients of the current shape's layer (BM_Layer_ForwardBackward), freed with it.
std::unique_ptr<Layer::Gradients> gradients;

Layer& layer_for(const Shape& s) {
  static std::unique_ptr<Layer> layer;
  static std::string_view built;
  if (!layer || built != s.name) {
    gradients.reset();  // free the previous shape (and its gradients) before allocating the next
    layer.reset();
    const auto start = std::chrono::steady_clock::now();
    layer = make_layer(s);
    built = s.name;
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    std::fprintf(stderr, "bench_layer: built %s (%.2f GB of routed weights) in %.1f s\n",
                 std::string(s.name).c_str(), moe::bench::routed_weight_bytes(s) * 1e-9, took.count());
  }
  return *layer;
}

// kBatches batches x [T, d_model] ~ U(−1, 1), seeded by T: the same inputs in every run.
std::vector<moe::RowMatrix<float>> make_inputs(const Shape& s, Index num_tokens) {
  moe::Generator rng(1000 + static_cast<std::uint64_t>(num_tokens));
  std::vector<moe::RowMatrix<float>> batches(kBatches, moe::RowMatrix<float>(num_tokens, s.d_model));
  for (auto& x : batches)
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(moe::uniform(rng, -1.0, 1.0));
  return batches;
}

std::size_t last_level_cache_bytes() {
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return l3 > 0 ? static_cast<std::size_t>(l3) : std::size_t{256} << 20;
}

// Reads a buffer twice the size of the last-level cache, so that nothing the layer touched before
// is still cached. Real decode reads every other layer of the model between two calls to this one.
void evict_caches() {
  static std::vector<std::uint64_t> buffer(2 * last_level_cache_bytes() / sizeof(std::uint64_t), 1);
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < buffer.size(); i += 64 / sizeof(std::uint64_t)) sum += buffer[i];
  benchmark::DoNotOptimize(sum);
}

void BM_Layer_Forward(benchmark::State& state, const Shape& s, Index num_tokens, int threads) {
  Layer& layer = layer_for(s);
  layer.set_num_threads(threads);
  const auto inputs = make_inputs(s, num_tokens);
  moe::RowMatrix<float> y(num_tokens, s.d_model);
  layer.forward(inputs[0], y);  // sizes the workspace: the timed loop does not allocate

  // Decode must not read weights that the previous iteration left in cache, unless the whole
  // layer fits there anyway. small (50 MB of fp32 experts; BENCHMARKS.md's 25 MB is the bf16 size)
  // fits this machine's 260 MiB L3 and stays resident, as it would in a real model of that size.
  // The other shapes are larger than L3, yet their decode working set need not be: at T = 1 the
  // two experts of mixtral-mini are 88 MB, and even rotating batches cycles through only 352 MB,
  // which an adaptive L3 replacement policy may keep partly resident. So evict, outside the timer.
  // (On this shared VM it made no measurable difference; it makes the result independent of the
  // cache policy. Prefill touches every expert with many tokens each and is compute-bound.)
  const bool evict = num_tokens <= kDecodeTokens &&
                     moe::bench::routed_weight_bytes(s) > static_cast<double>(last_level_cache_bytes());

  Index assignments = 0, experts_touched = 0;
  std::size_t batch = 0;
  for (auto _ : state) {
    if (evict) {
      state.PauseTiming();
      evict_caches();
      state.ResumeTiming();
    }
    layer.forward(inputs[batch], y);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    const moe::RoutingStats& stats = layer.last_stats();
    assignments += stats.assignments;
    experts_touched += s.num_experts - stats.unused_experts;
    batch = (batch + 1) % inputs.size();
  }

  using benchmark::Counter;
  state.counters["GFLOPS"] = Counter(moe::bench::expert_flops(s, assignments) * 1e-9, Counter::kIsRate);
  state.counters["GBps"] = Counter(moe::bench::expert_bytes(s, experts_touched) * 1e-9, Counter::kIsRate);
  state.counters["tokens_per_s"] =
      Counter(static_cast<double>(num_tokens) * static_cast<double>(state.iterations()), Counter::kIsRate);
}

// Gradients shaped like the layer of shape s, kept across the benchmarks of that shape.
Layer::Gradients& gradients_for(const Shape& s, Layer& layer) {
  static std::string_view built;
  if (!gradients || built != s.name) {
    gradients.reset();
    gradients = std::make_unique<Layer::Gradients>(layer.make_gradients());
    built = s.name;
  }
  return *gradients;
}

void BM_Layer_ForwardBackward(benchmark::State& state, const Shape& s, Index num_tokens, int threads) {
  Layer& layer = layer_for(s);
  layer.set_num_threads(threads);
  Layer::Gradients& grads = gradients_for(s, layer);
  const auto inputs = make_inputs(s, num_tokens);
  const moe::RowMatrix<float> d_y = make_inputs(s, num_tokens).back();
  moe::RowMatrix<float> y(num_tokens, s.d_model), d_x(num_tokens, s.d_model);
  Layer::Cache cache;
  layer.forward(inputs[0], y, cache);  // sizes the cache and the layer's buffers
  layer.backward(cache, d_y, d_x, grads);

  Index assignments = 0;
  std::size_t batch = 0;
  for (auto _ : state) {
    layer.forward(inputs[batch], y, cache);
    layer.backward(cache, d_y, d_x, grads);  // gradients accumulate, as over micro-batches
    benchmark::DoNotOptimize(d_x.data());
    benchmark::ClobberMemory();
    assignments += layer.last_stats().assignments;
    batch = (batch + 1) % inputs.size();
  }

  using benchmark::Counter;
  state.counters["GFLOPS"] = Counter(3 * moe::bench::expert_flops(s, assignments) * 1e-9, Counter::kIsRate);
  state.counters["tokens_per_s"] =
      Counter(static_cast<double>(num_tokens) * static_cast<double>(state.iterations()), Counter::kIsRate);
}

void register_benchmarks() {
  for (const Shape& s : moe::bench::kShapes) {
    // mixtral-8x7b is decode only: one real Mixtral layer, prefill would take seconds per token batch.
    const std::vector<Index> token_counts =
        s.name == moe::bench::kMixtral8x7b.name ? std::vector<Index>{1, 16} : std::vector<Index>{1, 16, 128, 1024};
    for (const Index num_tokens : token_counts)
      for (const int threads : {1, 2}) {
        const std::string name = "BM_Layer_Forward/" + std::string(s.name) + "/T:" + std::to_string(num_tokens) +
                                 "/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(name.c_str(), BM_Layer_Forward, s, num_tokens, threads)
            ->UseRealTime()  // the layer's OpenMP threads do not show in the main thread's CPU time
            ->Unit(benchmark::kMillisecond);
      }
    if (s.name == moe::bench::kMixtral8x7b.name) continue;  // decode only, and its gradients need 5.6 GB more
    for (const Index num_tokens : token_counts)
      for (const int threads : {1, 2}) {
        const std::string name = "BM_Layer_ForwardBackward/" + std::string(s.name) + "/T:" +
                                 std::to_string(num_tokens) + "/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(name.c_str(), BM_Layer_ForwardBackward, s, num_tokens, threads)
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
      }
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
