// bench_layer: one forward pass of the whole layer, SparseMoE<SwiGluExpert<float>, TopKGate<float>>
// (router softmax → top-k → renormalise, as in Mixtral), on the reference shapes of BENCHMARKS.md;
// one training step's forward + backward of the same layer; and, in the same run, the baselines
// that make every figure a ratio: this machine's limits, the naive per-expert loop on the same
// weights, the dense-GEMM ceiling of the same FLOPs, and the layer's routing work on its own.
//
// Run:
//   bench_layer --benchmark_filter='small|mixtral-mini' --benchmark_min_time=0.05
//   bench_layer --benchmark_filter='Machine'            # the machine's limits only
//   bench_layer --benchmark_filter='mixtral-8x7b/T:1/'   # builds a 5.6 GB layer first (seconds)
// Read (Google Benchmark appends /real_time to every name; Time is wall-clock ms):
//   BM_Layer_Forward/<shape>/T:<num_tokens>/threads:<n>   one forward of x [T, d_model] → y [T, d_model].
//   GFLOPS        routed expert FLOPs per second, counted from the batch's actual assignments:
//                 2·3·d_model·d_ff per computed (token, expert) pair. Router and shared experts
//                 are excluded (deepseek-moe runs its 2 shared experts, but they are not counted).
//   GBps          distinct routed expert weight bytes the batch touches, per second.
//   tokens_per_s  tokens per second.
//   BM_Layer_ForwardBackward/...: forward with a cache + backward (d_x and every gradient); GFLOPS
//   counts 3× the forward's expert FLOPs (BENCHMARKS.md's convention). Not for mixtral-8x7b.
//   bwd_per_fwd   the backward's time over an inference forward's (prepacked weights, caches
//                 evicted) of the same batch, timed in the same iteration outside the benchmark's
//                 clock: one iteration takes seconds, so comparing with BM_Layer_Forward minutes
//                 apart is mostly noise.
//   train_fwd_per_fwd   the training forward's (the one with a cache) likewise.
//   BM_Naive_Forward/<shape>/T:<num_tokens>/threads:<n>   the baseline that HF transformers'
//                 MixtralSparseMoeBlock runs under PyTorch, written with Eigen on the same layer's
//                 weights: route with the layer's gate, then for each expert gather its tokens'
//                 rows, h = silu(xs·w1ᵀ) ⊙ (xs·w3ᵀ), ys = h·w2ᵀ, y[t] += w·ys[i]; deepseek-moe
//                 adds its shared experts the same way. <n> threads are Eigen's own GEMM threads
//                 (Eigen::setNbThreads), as PyTorch uses its BLAS threads; Eigen's matrix-vector
//                 products are single-threaded, so at T = 1 both thread counts run on one.
//                 Counters and cache eviction as BM_Layer_Forward. Setup checks once per case that
//                 its y equals the layer's to 1e-4 relative, and aborts if not. mixtral-8x7b: T = 1.
//   BM_DenseGemm/<shape>/T:<num_tokens>/threads:<n>   the ceiling for the same FLOPs without
//                 routing: M = T·top_k rows through one expert with w1 and w3 stacked,
//                 [M, d_model]·[d_model, 2·d_ff], then [M, d_ff]·[d_ff, d_model] (Eigen GEMMs on
//                 <n> Eigen threads; no activation). GFLOPS = 2·3·d_model·d_ff·M per pass.
//                 T = 128 and 1024 of small, mixtral-mini and deepseek-moe.
//   BM_Routing/<shape>/T:<num_tokens>/threads:1   everything the layer's forward does besides the
//                 experts: gate route, build_dispatch, gather_rows, combine (here of the gathered
//                 rows themselves), routing statistics and the copy of the plan that last_plan()
//                 keeps. Compare its Time with BM_Layer_Forward's at the same T for its share.
//   BM_Machine_FmaPeak/threads:<n>   fp32 FMAs on 16 independent vector accumulators that never
//                 leave registers, on each of <n> threads: GFLOPS is the compute limit.
//   BM_Machine_DramRead/threads:<n>   a vectorised sum of a 1 GiB buffer split between <n>
//                 threads: GBps is the read bandwidth limit.
// Decode (T ≤ 16) is memory-bound: compare GBps with the DRAM bandwidth. Prefill (T ≥ 128) is
// compute-bound: compare GFLOPS with the FMA peak. The machine is noisy: quote ratios between
// benchmarks of one run, not absolute numbers from different days.
#include "shapes.hpp"

#include <moe/moe.hpp>

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using moe::Index;
using moe::bench::Shape;
using Layer = moe::SparseMoE<moe::SwiGluExpert<float>, moe::TopKGate<float>>;
using Matrix = moe::RowMatrix<float>;

constexpr Index kDecodeTokens = 16;  // T ≤ this is decode
constexpr int kBatches = 4;          // input batches rotated through, so routing varies per iteration

// Benchmark parameters as constant arrays rather than brace-initialised std::vectors: GCC 12.2 with
// -march=native has been seen to miscompile constant vector initialisers of integers.
constexpr std::array<Index, 4> kTokenCounts{1, 16, 128, 1024};
constexpr std::array<Index, 2> kDecodeTokenCounts{1, 16};  // mixtral-8x7b is decode only
constexpr std::array<Index, 1> kOneToken{1};                // mixtral-8x7b's naive baseline
constexpr std::array<Index, 2> kPrefillTokenCounts{128, 1024};
constexpr std::array<Index, 3> kRoutingTokenCounts{16, 128, 1024};
constexpr std::array<int, 2> kThreadCounts{1, 2};

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
    layer->prepack();  // as a model does once after loading: no forward pays for packing
    built = s.name;
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    std::fprintf(stderr, "bench_layer: built %s (%.2f GB of routed weights) in %.1f s\n",
                 std::string(s.name).c_str(), moe::bench::routed_weight_bytes(s) * 1e-9, took.count());
  }
  return *layer;
}

// kBatches batches x [T, d_model] ~ U(−1, 1), seeded by T: the same inputs in every run.
std::vector<Matrix> make_inputs(const Shape& s, Index num_tokens) {
  moe::Generator rng(1000 + static_cast<std::uint64_t>(num_tokens));
  std::vector<Matrix> batches(kBatches, Matrix(num_tokens, s.d_model));
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
  benchmark::DoNotOptimize(std::as_const(sum));  // the const overload: see BM_Machine_FmaPeak
}

// Whether a forward benchmark of shape s on T tokens evicts the caches between iterations.
// Decode must not read weights that the previous iteration left in cache, unless the whole
// layer fits there anyway. small (50 MB of fp32 experts; BENCHMARKS.md's 25 MB is the bf16 size)
// fits this machine's 260 MiB L3 and stays resident, as it would in a real model of that size.
// The other shapes are larger than L3, yet their decode working set need not be: at T = 1 the
// two experts of mixtral-mini are 88 MB, and even rotating batches cycles through only 352 MB,
// which an adaptive L3 replacement policy may keep partly resident. So evict, outside the timer.
// (On this shared VM it made no measurable difference; it makes the result independent of the
// cache policy. Prefill touches every expert with many tokens each and is compute-bound.)
bool evicts_caches(const Shape& s, Index num_tokens) {
  return num_tokens <= kDecodeTokens &&
         moe::bench::routed_weight_bytes(s) > static_cast<double>(last_level_cache_bytes());
}

// Adds the counter `name` = amount per second of wall-clock time over all iterations.
void add_rate(benchmark::State& state, const char* name, double amount) {
  state.counters[name] = benchmark::Counter(amount, benchmark::Counter::kIsRate);
}

void add_tokens_rate(benchmark::State& state, Index num_tokens) {
  add_rate(state, "tokens_per_s", static_cast<double>(num_tokens) * static_cast<double>(state.iterations()));
}

// What one forward computed, for the counters.
struct ForwardWork {
  Index assignments = 0;      // computed (token, routed expert) pairs
  Index experts_touched = 0;  // distinct routed experts with at least one token
};

// The timed loop of the forward benchmarks: forward(x, y) → ForwardWork over the rotating input
// batches, with the cache eviction rule of evicts_caches(), then the counters GFLOPS, GBps and
// tokens_per_s of BM_Layer_Forward.
template <class Forward>
void time_forward(benchmark::State& state, const Shape& s, const std::vector<Matrix>& inputs, Matrix& y,
                  Forward&& forward) {
  const Index num_tokens = y.rows();
  const bool evict = evicts_caches(s, num_tokens);
  Index assignments = 0, experts_touched = 0;
  std::size_t batch = 0;
  for (auto _ : state) {
    if (evict) {
      state.PauseTiming();
      evict_caches();
      state.ResumeTiming();
    }
    const ForwardWork work = forward(inputs[batch], y);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    assignments += work.assignments;
    experts_touched += work.experts_touched;
    batch = (batch + 1) % inputs.size();
  }
  add_rate(state, "GFLOPS", moe::bench::expert_flops(s, assignments) * 1e-9);
  add_rate(state, "GBps", moe::bench::expert_bytes(s, experts_touched) * 1e-9);
  add_tokens_rate(state, num_tokens);
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

void BM_Layer_Forward(benchmark::State& state, const Shape& s, Index num_tokens, int threads) {
  Layer& layer = layer_for(s);
  layer.set_num_threads(threads);
  const auto inputs = make_inputs(s, num_tokens);
  Matrix y(num_tokens, s.d_model);
  layer.forward(inputs[0], y);  // sizes the workspace: the timed loop does not allocate

  time_forward(state, s, inputs, y, [&](const Matrix& x, Matrix& out) {
    layer.forward(x, out);
    const moe::RoutingStats& stats = layer.last_stats();
    return ForwardWork{stats.assignments, s.num_experts - stats.unused_experts};
  });
}

// The naive baseline: the per-expert loop with index gathering of HF transformers'
// MixtralSparseMoeBlock.forward (and DeepSeek-MoE's, plus its shared experts), in plain Eigen on
// the weights of `layer`. Buffers are sized once for T tokens (PyTorch's caching allocator does
// the same), so the loop measures the arithmetic, not malloc.
class NaiveMoE {
 public:
  NaiveMoE(Layer& layer, Index num_tokens) : layer_(layer) {
    Index d_ff = layer.experts().d_ff();
    if (const auto* shared = layer.shared()) {
      if (shared->gated()) {
        std::fprintf(stderr, "bench_layer: the naive baseline does not implement gated shared experts\n");
        std::abort();
      }
      d_ff = std::max(d_ff, shared->experts().d_ff());
    }
    token_.resize(static_cast<std::size_t>(num_tokens));
    weight_.resize(static_cast<std::size_t>(num_tokens));
    xs_.resize(num_tokens * layer.d_model());
    h1_.resize(num_tokens * d_ff);
    h3_.resize(num_tokens * d_ff);
    ys_.resize(num_tokens * layer.d_model());
  }

  ForwardWork forward(const Matrix& x, Matrix& y) {
    const Index T = x.rows(), d = x.cols(), k = layer_.gate().slots_per_token();
    layer_.gate().route(x, plan_, moe::Mode::inference);
    const auto& experts = std::as_const(layer_).experts();  // const: mutable access drops packed weights
    ForwardWork work;
    y.setZero();
    for (Index e = 0; e < experts.num_experts(); ++e) {
      // top_x, idx = torch.where(expert_mask[e])
      Index n = 0;
      for (Index t = 0; t < T; ++t)
        for (Index j = 0; j < k; ++j)
          if (plan_.active(t, j) && plan_.expert(t, j) == e) {
            token_[n] = t;
            weight_[n] = plan_.weight(t, j);
            ++n;
          }
      if (n == 0) continue;
      work.assignments += n;
      ++work.experts_touched;
      // current_state = hidden_states[top_x]
      Eigen::Map<Matrix> xs(xs_.data(), n, d), ys(ys_.data(), n, d);
      for (Index i = 0; i < n; ++i) xs.row(i) = x.row(token_[i]);
      swiglu(xs, experts.w1()[e], experts.w3()[e], experts.w2()[e], ys);
      // final_hidden_states.index_add_(0, top_x, current_hidden_states * routing_weights[top_x, idx])
      for (Index i = 0; i < n; ++i) y.row(token_[i]) += weight_[i] * ys.row(i);
    }
    if (const auto* shared = std::as_const(layer_).shared()) {  // DeepSeek-MoE: y += shared_experts(identity)
      const auto& bank = shared->experts();
      Eigen::Map<Matrix> ys(ys_.data(), T, d);
      for (Index e = 0; e < bank.num_experts(); ++e) {
        swiglu(x, bank.w1()[e], bank.w3()[e], bank.w2()[e], ys);
        y += ys;
      }
    }
    return work;
  }

 private:
  // out = (silu(xs·w1ᵀ) ⊙ xs·w3ᵀ)·w2ᵀ, the SwiGLU expert as torch writes it:
  // w2(act_fn(w1(x)) * w3(x)) with silu(a) = a / (1 + e^−a).
  template <class Rows, class W1, class W3, class W2>
  void swiglu(const Rows& xs, const W1& w1, const W3& w3, const W2& w2, Eigen::Map<Matrix>& out) {
    const Index n = xs.rows(), f = w1.rows();
    Eigen::Map<Matrix> h1(h1_.data(), n, f), h3(h3_.data(), n, f);
    h1.noalias() = xs * w1.transpose();
    h3.noalias() = xs * w3.transpose();
    h1.array() = h1.array() / (1.0f + (-h1.array()).exp()) * h3.array();
    out.noalias() = h1 * w2.transpose();
  }

  Layer& layer_;
  moe::RoutingPlan<float> plan_;
  std::vector<Index> token_;
  std::vector<float> weight_;
  Eigen::VectorXf xs_, h1_, h3_, ys_;  // storage of the [n, ·] work matrices
};

// Aborts unless the naive baseline's y equals the layer's on every input batch to 1e-4 relative
// (max |Δ| / max |y|), so the baseline cannot get faster by computing something else. Once per
// (shape, T, threads): Google Benchmark calls a benchmark's function several times.
void check_naive(const Shape& s, Index num_tokens, int threads, Layer& layer, NaiveMoE& naive,
                 const std::vector<Matrix>& inputs) {
  static std::set<std::tuple<std::string_view, Index, int>> checked;
  if (!checked.insert({s.name, num_tokens, threads}).second) return;
  std::vector<Matrix> expected(inputs.size(), Matrix(num_tokens, s.d_model));
  layer.set_num_threads(threads);
  for (std::size_t b = 0; b < inputs.size(); ++b) layer.forward(inputs[b], expected[b]);  // outside EigenThreads
  const EigenThreads eigen_threads(threads);
  Matrix y(num_tokens, s.d_model);
  for (std::size_t b = 0; b < inputs.size(); ++b) {
    naive.forward(inputs[b], y);
    const double scale = expected[b].cwiseAbs().maxCoeff();
    const double error = (y - expected[b]).cwiseAbs().maxCoeff() / (scale > 0 ? scale : 1.0);
    if (!(error <= 1e-4)) {  // NaN fails too
      std::fprintf(stderr, "bench_layer: the naive baseline's y differs from the layer's on %s/T:%ld/threads:%d, "
                   "batch %zu: max |Δ| / max |y| = %.3g > 1e-4\n", std::string(s.name).c_str(),
                   static_cast<long>(num_tokens), threads, b, error);
      std::abort();
    }
  }
}

void BM_Naive_Forward(benchmark::State& state, const Shape& s, Index num_tokens, int threads) {
  Layer& layer = layer_for(s);
  const auto inputs = make_inputs(s, num_tokens);
  NaiveMoE naive(layer, num_tokens);
  check_naive(s, num_tokens, threads, layer, naive, inputs);
  Matrix y(num_tokens, s.d_model);
  const EigenThreads eigen_threads(threads);
  naive.forward(inputs[0], y);  // sizes the routing plan
  time_forward(state, s, inputs, y, [&](const Matrix& x, Matrix& out) { return naive.forward(x, out); });
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
  const Matrix d_y = make_inputs(s, num_tokens).back();
  Matrix y(num_tokens, s.d_model), d_x(num_tokens, s.d_model);
  Layer::Cache cache;
  layer.forward(inputs[0], y, cache);  // sizes the cache and the layer's buffers
  layer.backward(cache, d_y, d_x, grads);

  using Clock = std::chrono::steady_clock;
  Index assignments = 0;
  std::size_t batch = 0;
  std::chrono::duration<double> inference{}, training_forward{}, backward{};
  for (auto _ : state) {
    state.PauseTiming();
    layer.prepack();  // the training forward dropped the packed copies
    evict_caches();   // which prepack just wrote, partly into the last-level cache
    const auto t0 = Clock::now();
    layer.forward(inputs[batch], y);
    inference += Clock::now() - t0;
    state.ResumeTiming();
    const auto t1 = Clock::now();
    layer.forward(inputs[batch], y, cache);
    const auto t2 = Clock::now();
    layer.backward(cache, d_y, d_x, grads);  // gradients accumulate, as over micro-batches
    benchmark::DoNotOptimize(d_x.data());
    benchmark::ClobberMemory();
    training_forward += t2 - t1;
    backward += Clock::now() - t2;
    assignments += layer.last_stats().assignments;
    batch = (batch + 1) % inputs.size();
  }
  add_rate(state, "GFLOPS", 3 * moe::bench::expert_flops(s, assignments) * 1e-9);
  add_tokens_rate(state, num_tokens);
  state.counters["bwd_per_fwd"] = backward / inference;
  state.counters["train_fwd_per_fwd"] = training_forward / inference;
}

// The dense-GEMM ceiling: the routed FLOPs of T tokens as two plain GEMMs through one expert whose
// w1 and w3 are stacked into one contiguous [2·d_ff, d_model] matrix, stored as the layer stores
// its weights (row-major, used transposed). No routing, no gather, no activation.
void BM_DenseGemm(benchmark::State& state, const Shape& s, Index num_tokens, int threads) {
  const Index rows = num_tokens * s.top_k, d = s.d_model, f = s.d_ff;
  const Matrix w13 = Matrix::Random(2 * f, d) * (1.0f / std::sqrt(static_cast<float>(d)));
  const Matrix w2 = Matrix::Random(d, f) * (1.0f / std::sqrt(static_cast<float>(f)));
  const Matrix x = Matrix::Random(rows, d);
  Matrix h(rows, 2 * f), y(rows, d);
  const EigenThreads eigen_threads(threads);
  for (auto _ : state) {
    h.noalias() = x * w13.transpose();
    y.noalias() = h.leftCols(f) * w2.transpose();
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  add_rate(state, "GFLOPS",
           moe::bench::expert_flops(s, rows) * 1e-9 * static_cast<double>(state.iterations()));
  add_tokens_rate(state, num_tokens);
}

// Everything SparseMoE::forward does besides running the experts, with the same kernels: route,
// dispatch, gather, combine (of the gathered rows, standing in for the experts' outputs), routing
// statistics and the plan copy behind last_plan(). One thread, as the layer runs these.
void BM_Routing(benchmark::State& state, const Shape& s, Index num_tokens) {
  Layer& layer = layer_for(s);
  const auto inputs = make_inputs(s, num_tokens);
  moe::RoutingPlan<float> plan, kept;
  moe::DispatchPlan dispatch;
  moe::RoutingStats stats;
  Matrix gathered(num_tokens * s.top_k, s.d_model), y(num_tokens, s.d_model);
  const EigenThreads eigen_threads(1);  // the router's GEMM, single-threaded as inside the layer
  std::size_t batch = 0;
  for (auto _ : state) {
    const Matrix& x = inputs[batch];
    layer.gate().route(x, plan, moe::Mode::inference);
    moe::kernels::build_dispatch(plan, dispatch);
    const Index rows = dispatch.num_rows();
    moe::kernels::gather_rows<float>(x, dispatch.token, gathered.topRows(rows));
    moe::kernels::combine<float>(plan.weight, dispatch, gathered.topRows(rows), y);
    kept = plan;
    moe::compute_routing_stats(plan, dispatch, stats);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(&stats);
    benchmark::DoNotOptimize(&kept);
    benchmark::ClobberMemory();
    batch = (batch + 1) % inputs.size();
  }
  add_tokens_rate(state, num_tokens);
}

// Calls body(thread) on each of `threads` threads at once and waits for all of them.
template <class Body>
void on_threads(int threads, Body&& body) {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  body(omp_get_thread_num());
#else
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back([&body, i] { body(i); });
  body(0);
  for (auto& thread : pool) thread.join();
#endif
}

using Packet = Eigen::internal::packet_traits<float>::type;
constexpr int kPacketFloats = Eigen::internal::packet_traits<float>::size;
constexpr int kFmaAccumulators = 16;  // independent chains: ≥ FMA latency × FMA ports (4 × 2)
constexpr long kFmaSteps = 1L << 18;  // per thread and iteration: 16 · kFmaSteps FMAs of one packet

// kFmaSteps rounds of acc[i] = acc[i]·a + b on every accumulator; returns the lanes' sum so the
// work is observable. With a slightly below 1 the values stay near b / (1 − a): no overflow and
// no denormals. a and b come from opaque memory, so nothing can be folded at compile time.
float fma_chains(float a, float b) {
  const Packet pa = Eigen::internal::pset1<Packet>(a), pb = Eigen::internal::pset1<Packet>(b);
  Packet acc[kFmaAccumulators];
  for (int i = 0; i < kFmaAccumulators; ++i) acc[i] = Eigen::internal::pset1<Packet>(static_cast<float>(i));
  for (long step = 0; step < kFmaSteps; ++step)
    for (int i = 0; i < kFmaAccumulators; ++i) acc[i] = Eigen::internal::pmadd(acc[i], pa, pb);
  Packet sum = acc[0];
  for (int i = 1; i < kFmaAccumulators; ++i) sum = Eigen::internal::padd(sum, acc[i]);
  return Eigen::internal::predux(sum);
}

void BM_Machine_FmaPeak(benchmark::State& state, int threads) {
  // Read through volatile: GCC 12 drops the initialising store of a float passed to
  // benchmark::DoNotOptimize(T&) (its "+m,r" constraint), which left `a` as stack garbage.
  static volatile float opaque_a = 0.999999f, opaque_b = 1e-6f;
  const float a = opaque_a, b = opaque_b;
  std::vector<float> results(static_cast<std::size_t>(threads));
  for (auto _ : state) {
    on_threads(threads, [&](int thread) { results[static_cast<std::size_t>(thread)] = fma_chains(a, b); });
    benchmark::DoNotOptimize(results.data());
    benchmark::ClobberMemory();
  }
  const double flops_per_pass = 2.0 * kPacketFloats * kFmaAccumulators * static_cast<double>(kFmaSteps) * threads;
  add_rate(state, "GFLOPS", flops_per_pass * 1e-9 * static_cast<double>(state.iterations()));
  state.SetLabel(std::to_string(kPacketFloats) + " floats/packet, " + std::to_string(kFmaAccumulators) +
                 " accumulators");
}

// Σ p[0, n), eight packet accumulators deep so the adds keep up with the loads.
float sum_floats(const float* p, std::size_t n) {
  constexpr std::size_t kLanes = kPacketFloats, kChains = 8;
  Packet acc[kChains];
  for (auto& a : acc) a = Eigen::internal::pset1<Packet>(0.0f);
  std::size_t i = 0;
  for (; i + kChains * kLanes <= n; i += kChains * kLanes)
    for (std::size_t c = 0; c < kChains; ++c)
      acc[c] = Eigen::internal::padd(acc[c], Eigen::internal::ploadu<Packet>(p + i + c * kLanes));
  for (std::size_t c = 1; c < kChains; ++c) acc[0] = Eigen::internal::padd(acc[0], acc[c]);
  float sum = Eigen::internal::predux(acc[0]);
  for (; i < n; ++i) sum += p[i];
  return sum;
}

void BM_Machine_DramRead(benchmark::State& state, int threads) {
  constexpr std::size_t kBytes = std::size_t{1} << 30, kFloats = kBytes / sizeof(float);
  const std::unique_ptr<float, decltype(&std::free)> buffer(static_cast<float*>(std::aligned_alloc(64, kBytes)),
                                                            &std::free);
  if (!buffer) {
    state.SkipWithError("cannot allocate 1 GiB");
    return;
  }
  const auto part = [&](int thread) {
    const std::size_t begin = kFloats * static_cast<std::size_t>(thread) / static_cast<std::size_t>(threads);
    const std::size_t end = kFloats * static_cast<std::size_t>(thread + 1) / static_cast<std::size_t>(threads);
    return std::span<float>(buffer.get() + begin, end - begin);
  };
  // Written by the thread that will read it (first touch), with ones: untouched pages would all
  // map the one zero page and read from cache.
  on_threads(threads, [&](int thread) { std::ranges::fill(part(thread), 1.0f); });
  std::vector<float> sums(static_cast<std::size_t>(threads));
  for (auto _ : state) {
    on_threads(threads, [&](int thread) {
      const std::span<float> mine = part(thread);
      sums[static_cast<std::size_t>(thread)] = sum_floats(mine.data(), mine.size());
    });
    benchmark::DoNotOptimize(sums.data());
    benchmark::ClobberMemory();
  }
  for (int thread = 0; thread < threads; ++thread)  // ones: each part sums to its length (exactly, here)
    if (std::abs(sums[static_cast<std::size_t>(thread)] - static_cast<float>(part(thread).size())) >
        1e-3f * static_cast<float>(part(thread).size())) {
      state.SkipWithError("the buffer's sum is wrong");
      return;
    }
  add_rate(state, "GBps", static_cast<double>(kBytes) * 1e-9 * static_cast<double>(state.iterations()));
}

std::string case_name(const char* benchmark, const Shape& s, Index num_tokens, int threads) {
  return std::string(benchmark) + "/" + std::string(s.name) + "/T:" + std::to_string(num_tokens) +
         "/threads:" + std::to_string(threads);
}

// Every benchmark reports wall-clock time: OpenMP and Eigen threads do not show in the main
// thread's CPU time.
template <class... Args>
void add(const std::string& name, Args&&... args) {
  benchmark::RegisterBenchmark(name.c_str(), std::forward<Args>(args)...)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

void register_benchmarks() {
  // The machine first, while no layer holds memory next to the 1 GiB buffer.
  for (const int threads : kThreadCounts)
    add("BM_Machine_FmaPeak/threads:" + std::to_string(threads), BM_Machine_FmaPeak, threads);
  for (const int threads : kThreadCounts)
    add("BM_Machine_DramRead/threads:" + std::to_string(threads), BM_Machine_DramRead, threads);

  for (const Shape& s : moe::bench::kShapes) {
    // mixtral-8x7b is decode only: one real Mixtral layer, prefill would take seconds per token batch.
    const bool huge = s.name == moe::bench::kMixtral8x7b.name;
    const std::span<const Index> token_counts = huge ? std::span<const Index>(kDecodeTokenCounts)
                                                     : std::span<const Index>(kTokenCounts);
    for (const Index num_tokens : token_counts)
      for (const int threads : kThreadCounts)
        add(case_name("BM_Layer_Forward", s, num_tokens, threads), BM_Layer_Forward, s, num_tokens, threads);

    // The naive loop takes about a second per mixtral-8x7b decode step at T = 16: T = 1 only.
    for (const Index num_tokens : huge ? std::span<const Index>(kOneToken) : token_counts)
      for (const int threads : kThreadCounts)
        add(case_name("BM_Naive_Forward", s, num_tokens, threads), BM_Naive_Forward, s, num_tokens, threads);

    if (!huge)
      for (const Index num_tokens : kPrefillTokenCounts)
        for (const int threads : kThreadCounts)
          add(case_name("BM_DenseGemm", s, num_tokens, threads), BM_DenseGemm, s, num_tokens, threads);

    for (const Index num_tokens : kRoutingTokenCounts)
      if (std::ranges::find(token_counts, num_tokens) != token_counts.end())
        add(case_name("BM_Routing", s, num_tokens, 1), BM_Routing, s, num_tokens);

    if (huge) continue;  // decode only, and its gradients need 5.6 GB more
    for (const Index num_tokens : token_counts)
      for (const int threads : kThreadCounts)
        add(case_name("BM_Layer_ForwardBackward", s, num_tokens, threads), BM_Layer_ForwardBackward, s,
            num_tokens, threads);
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
