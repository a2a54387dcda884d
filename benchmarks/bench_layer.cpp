// bench_layer: one forward pass of the whole layer, SparseMoE<SwiGluExpert<float>, TopKGate<float>>
// (router softmax → top-k → renormalise, as in Mixtral; layers.hpp), on the reference shapes of
// benchmarks/README.md ("Shapes and conventions"); one training step's forward + backward of the
// same layer; and, in the same run, the baselines that make every figure a ratio: this machine's
// limits (machine.hpp), the naive per-expert loop on the same weights and the dense-GEMM ceiling of
// the same FLOPs. The layer's routing work on its own is bench_routing's.
//
// Run:
//   bench_layer --benchmark_filter='small|mixtral-mini' --benchmark_min_time=0.05
//   bench_layer --benchmark_filter='mixtral-8x7b/T:1/'   # builds a 5.6 GB layer first (seconds)
// Read (Google Benchmark appends /real_time to every name; Time is wall-clock ms):
//   BM_Layer_Forward/<shape>/T:<num_tokens>/threads:<n>   one forward of x [T, d_model] → y [T, d_model],
//                 fp32 expert weights; .../w:bf16 the same layer with bf16 expert weights
//                 (SwiGluExpert<float, Bf16>). The label names the kernels that ran.
//   GFLOPS        routed expert FLOPs per second, counted from the batch's actual assignments:
//                 2·3·d_model·d_ff per computed (token, expert) pair. Router and shared experts
//                 are excluded (deepseek-moe runs its 2 shared experts, but they are not counted).
//   GBps          distinct routed expert weight bytes the batch touches (4 or 2 per weight), per second.
//   tokens_per_s  tokens per second.
//   BM_Layer_ForwardBackward/... (and .../w:bf16: the forward's products on bf16 copies of the fp32
//                 master weights, the backward in fp32): forward with a cache + backward (d_x and every gradient); GFLOPS
//   counts 3× the forward's expert FLOPs (the README's convention). Not for mixtral-8x7b.
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
//   BM_Machine_FmaPeak/threads:<n>, BM_Machine_DramRead/threads:<n>   the compute and DRAM read
//                 limits (machine.hpp; bench_machine runs them alone).
// Decode (T ≤ 16) is memory-bound: compare GBps with the DRAM bandwidth. Prefill (T ≥ 128) is
// compute-bound: compare GFLOPS with the FMA peak. The machine is noisy: quote ratios between
// benchmarks of one run, not absolute numbers from different days.
#include "layers.hpp"
#include "machine.hpp"
#include "registration.hpp"
#include "shapes.hpp"

#include <moe/moe.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using moe::Index;
using namespace moe::bench;

constexpr std::array<Index, 1> kOneToken{1};  // mixtral-8x7b's naive baseline
constexpr std::array<Index, 2> kPrefillTokenCounts{128, 1024};

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

template <class F>
void BM_Layer_ForwardBackward(benchmark::State& state, const Shape& s, Index num_tokens, int threads) {
  using Layer = LayerOf<F>;
  Layer& layer = layer_for<F>(s);
  layer.set_num_threads(threads);
  typename Layer::Gradients& grads = gradients_for<F>(s);
  const auto inputs = make_inputs(s, num_tokens);
  const Matrix d_y = make_inputs(s, num_tokens).back();
  Matrix y(num_tokens, s.d_model), d_x(num_tokens, s.d_model);
  typename Layer::Cache cache;
  layer.forward(inputs[0], y, cache);  // sizes the cache and the layer's buffers
  layer.backward(cache, d_y, d_x, grads);

  using Clock = std::chrono::steady_clock;
  Index assignments = 0;
  std::size_t batch = 0;
  std::chrono::duration<double> inference{}, training_forward{}, backward{};
  for (auto _ : state) {
    state.PauseTiming();
    layer.prepack();  // the training forward dropped the packed copies
    evict_caches();  // which prepack just wrote, partly into the last-level cache
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
  add_rate(state, "GFLOPS", 3 * expert_flops(s, assignments) * 1e-9);
  add_tokens_rate(state, num_tokens);
  state.counters["bwd_per_fwd"] = backward / inference;
  state.counters["train_fwd_per_fwd"] = training_forward / inference;
  state.SetLabel(layer.kernels());
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
  add_rate(state, "GFLOPS", expert_flops(s, rows) * 1e-9 * static_cast<double>(state.iterations()));
  add_tokens_rate(state, num_tokens);
}

void register_benchmarks() {
  // The machine first, while no layer holds memory next to the 1 GiB buffer.
  register_machine_benchmarks(kThreadCounts);

  for (const Shape& s : kShapes) {
    const bool huge = decode_only(s);
    const std::span<const Index> tokens = token_counts(s);
    for (const Index num_tokens : tokens)
      for (const int threads : kThreadCounts) add_layer_forward(s, num_tokens, threads);
    for (const Index num_tokens : tokens)
      for (const int threads : kThreadCounts) add_layer_forward<moe::Bf16>(s, num_tokens, threads);

    // The naive loop takes about a second per mixtral-8x7b decode step at T = 16: T = 1 only.
    for (const Index num_tokens : huge ? std::span<const Index>(kOneToken) : tokens)
      for (const int threads : kThreadCounts)
        add(case_name("BM_Naive_Forward", s, num_tokens, threads), BM_Naive_Forward, s, num_tokens, threads);

    if (!huge)
      for (const Index num_tokens : kPrefillTokenCounts)
        for (const int threads : kThreadCounts)
          add(case_name("BM_DenseGemm", s, num_tokens, threads), BM_DenseGemm, s, num_tokens, threads);

    if (huge) continue;  // decode only, and its gradients need 5.6 GB more
    for (const Index num_tokens : tokens)
      for (const int threads : kThreadCounts)
        add(case_name("BM_Layer_ForwardBackward", s, num_tokens, threads), BM_Layer_ForwardBackward<moe::F32>, s,
            num_tokens, threads);
    for (const Index num_tokens : tokens)
      for (const int threads : kThreadCounts)
        add(case_name("BM_Layer_ForwardBackward", s, num_tokens, threads) + "/w:bf16", BM_Layer_ForwardBackward<moe::Bf16>,
            s, num_tokens, threads);
  }
}

}  // namespace

int main(int argc, char** argv) { return moe::bench::run_benchmarks(argc, argv, register_benchmarks); }
