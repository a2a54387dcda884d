// This machine's limits, which every binary that is read against them measures in its own run (they
// vary between machines, and by the minute on a shared one), and its caches:
//   BM_Machine_FmaPeak/threads:<n>   fp32 FMAs on 16 independent vector accumulators that never
//                 leave registers, on each of <n> threads: GFLOPS is the compute limit.
//   BM_Machine_DramRead/threads:<n>   a vectorised sum of a 1 GiB buffer split between <n>
//                 threads: GBps is the read bandwidth limit.
//   BM_Machine_Bf16DotPeak/threads:<n>   the FMA peak's loop with bf16 dot products (vdpbf16ps),
//                 on CPUs that have them: the bf16 kernels' compute limit.
// fma_peak_gflops() times the first's loop again, next to a benchmark that reports a peak_fraction;
// evict_caches() and evicts_caches() keep decode's weights coming from DRAM.
#pragma once

#include "registration.hpp"
#include "shapes.hpp"

#include <moe/isa.hpp>
#include <moe/types.hpp>

#include <Eigen/Core>
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if MOE_X86_KERNELS
#include <immintrin.h>
#endif

namespace moe::bench {

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

using FloatPacket = Eigen::internal::packet_traits<float>::type;
inline constexpr int kPacketFloats = Eigen::internal::packet_traits<float>::size;
inline constexpr int kFmaAccumulators = 16;  // independent chains: ≥ FMA latency × FMA ports (4 × 2)
inline constexpr long kFmaSteps = 1L << 18;  // per thread and pass: 16 · kFmaSteps FMAs of one packet
inline constexpr double kFmaFlopsPerPass = 2.0 * kPacketFloats * kFmaAccumulators * static_cast<double>(kFmaSteps);

// kFmaSteps rounds of acc[i] = acc[i]·a + b on every accumulator; returns the lanes' sum so the
// work is observable. With a slightly below 1 the values stay near b / (1 − a): no overflow and
// no denormals. a and b come from opaque memory (fma_operands), so nothing can be folded at
// compile time.
inline float fma_chains(float a, float b) {
  const FloatPacket pa = Eigen::internal::pset1<FloatPacket>(a), pb = Eigen::internal::pset1<FloatPacket>(b);
  FloatPacket acc[kFmaAccumulators];
  for (int i = 0; i < kFmaAccumulators; ++i) acc[i] = Eigen::internal::pset1<FloatPacket>(static_cast<float>(i));
  for (long step = 0; step < kFmaSteps; ++step)
    for (int i = 0; i < kFmaAccumulators; ++i) acc[i] = Eigen::internal::pmadd(acc[i], pa, pb);
  FloatPacket sum = acc[0];
  for (int i = 1; i < kFmaAccumulators; ++i) sum = Eigen::internal::padd(sum, acc[i]);
  return Eigen::internal::predux(sum);
}

// fma_chains' a and b, read through volatile: GCC 12 drops the initialising store of a float
// passed to benchmark::DoNotOptimize(T&) (its "+m,r" constraint), which left `a` as stack garbage.
inline std::pair<float, float> fma_operands() {
  static volatile float opaque_a = 0.999999f, opaque_b = 1e-6f;
  return {opaque_a, opaque_b};
}

inline void BM_Machine_FmaPeak(benchmark::State& state, int threads) {
  const auto [a, b] = fma_operands();
  std::vector<float> results(static_cast<std::size_t>(threads));
  for (auto _ : state) {
    on_threads(threads, [&](int thread) { results[static_cast<std::size_t>(thread)] = fma_chains(a, b); });
    benchmark::DoNotOptimize(results.data());
    benchmark::ClobberMemory();
  }
  add_rate(state, "GFLOPS", kFmaFlopsPerPass * threads * 1e-9 * static_cast<double>(state.iterations()));
  state.SetLabel(std::to_string(kPacketFloats) + " floats/packet, " + std::to_string(kFmaAccumulators) +
                 " accumulators");
}

// GFLOP/s of BM_Machine_FmaPeak's loop on the calling thread, timed now: the fastest of `windows`
// single passes (a pass is under a millisecond). What a peak_fraction divides by, measured right
// after the benchmark's own loop: a core slowed for the minute (a busy sibling hyperthread, a lower
// clock) slows every pass as it slows the benchmark, while a pass in which the thread lost the core
// to another process does not count, so the fraction does not exceed 1 by the peak's bad luck.
inline double fma_peak_gflops(int windows = 16) {
  using Clock = std::chrono::steady_clock;
  double best = 0.0;
  for (int window = 0; window < windows; ++window) {
    const auto [a, b] = fma_operands();  // read for every pass, or the passes fold into one
    const auto start = Clock::now();
    const float sum = fma_chains(a, b);
    benchmark::DoNotOptimize(sum);  // the sum is ready before the clock is read again
    const std::chrono::duration<double> took = Clock::now() - start;
    best = std::max(best, kFmaFlopsPerPass * 1e-9 / took.count());
  }
  return best;
}

#if MOE_X86_KERNELS
// BM_Machine_FmaPeak's loop with the bf16 dot product instead (vdpbf16ps: 16 lanes × a pair of
// products × multiply and add = 64 FLOPs an instruction), for the CPUs that have it: the compute
// limit of the avx512bf16 kernels. a and b as in fma_chains, rounded to bf16 pairs.
inline constexpr double kDotFlopsPerPass = 64.0 * kFmaAccumulators * static_cast<double>(kFmaSteps);

__attribute__((target("avx512f,avx512bf16"))) inline float dot_chains(float a, float b) {
  const __m512bh pa = _mm512_cvtne2ps_pbh(_mm512_set1_ps(a), _mm512_set1_ps(a));
  const __m512bh pb = _mm512_cvtne2ps_pbh(_mm512_set1_ps(b), _mm512_set1_ps(b));
  __m512 acc[kFmaAccumulators];
  for (int i = 0; i < kFmaAccumulators; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  for (long step = 0; step < kFmaSteps; ++step)
    for (int i = 0; i < kFmaAccumulators; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], pa, pb);
  for (int i = 1; i < kFmaAccumulators; ++i) acc[0] = _mm512_add_ps(acc[0], acc[i]);
  return _mm512_reduce_add_ps(acc[0]);
}

inline void BM_Machine_Bf16DotPeak(benchmark::State& state, int threads) {
  const float a = fma_operands().second;  // 1e-6: the sums stay small and normal
  std::vector<float> results(static_cast<std::size_t>(threads));
  for (auto _ : state) {
    on_threads(threads, [&](int thread) { results[static_cast<std::size_t>(thread)] = dot_chains(a, a); });
    benchmark::DoNotOptimize(results.data());
    benchmark::ClobberMemory();
  }
  add_rate(state, "GFLOPS", kDotFlopsPerPass * threads * 1e-9 * static_cast<double>(state.iterations()));
  state.SetLabel("vdpbf16ps, " + std::to_string(kFmaAccumulators) + " accumulators");
}
#endif

// Σ p[0, n), eight packet accumulators deep so the adds keep up with the loads.
inline float sum_floats(const float* p, std::size_t n) {
  constexpr std::size_t kLanes = kPacketFloats, kChains = 8;
  FloatPacket acc[kChains];
  for (auto& a : acc) a = Eigen::internal::pset1<FloatPacket>(0.0f);
  std::size_t i = 0;
  for (; i + kChains * kLanes <= n; i += kChains * kLanes)
    for (std::size_t c = 0; c < kChains; ++c)
      acc[c] = Eigen::internal::padd(acc[c], Eigen::internal::ploadu<FloatPacket>(p + i + c * kLanes));
  for (std::size_t c = 1; c < kChains; ++c) acc[0] = Eigen::internal::padd(acc[0], acc[c]);
  float sum = Eigen::internal::predux(acc[0]);
  for (; i < n; ++i) sum += p[i];
  return sum;
}

inline void BM_Machine_DramRead(benchmark::State& state, int threads) {
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

// Registers the FMA peak, then the DRAM read, on each of the thread counts. Call it before anything
// that allocates much: the read's 1 GiB buffer is allocated and freed by its benchmark.
inline void register_machine_benchmarks(std::span<const int> thread_counts) {
  for (const int threads : thread_counts)
    add("BM_Machine_FmaPeak/threads:" + std::to_string(threads), BM_Machine_FmaPeak, threads);
#if MOE_X86_KERNELS
  if (detected_isa() >= Isa::avx512bf16)
    for (const int threads : thread_counts)
      add("BM_Machine_Bf16DotPeak/threads:" + std::to_string(threads), BM_Machine_Bf16DotPeak, threads);
#endif
  for (const int threads : thread_counts)
    add("BM_Machine_DramRead/threads:" + std::to_string(threads), BM_Machine_DramRead, threads);
}

inline std::size_t last_level_cache_bytes() {
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return l3 > 0 ? static_cast<std::size_t>(l3) : std::size_t{256} << 20;
}

// Reads a buffer twice the size of the last-level cache, so that nothing touched before is still
// cached. Real decode reads every other layer of the model between two calls to this one.
inline void evict_caches() {
  static std::vector<std::uint64_t> buffer(2 * last_level_cache_bytes() / sizeof(std::uint64_t), 1);
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < buffer.size(); i += 64 / sizeof(std::uint64_t)) sum += buffer[i];
  benchmark::DoNotOptimize(std::as_const(sum));  // the const overload: see fma_operands
}

// Whether a routed expert weight bank of shape s is larger than the last-level cache: then no
// expert's weights are still cached when a real model comes back to them.
inline bool weights_exceed_cache(const Shape& s) {
  return routed_weight_bytes(s) > static_cast<double>(last_level_cache_bytes());
}

// Whether a benchmark of shape s on T tokens that reads expert weights evicts the caches between
// iterations. Decode must not read weights that the previous iteration left in cache, unless the
// whole layer fits there anyway. small (50 MB of fp32 experts) fits this machine's 260 MiB L3 and
// stays resident, as it would in a real model of that size. The other shapes are larger than L3,
// yet their decode working set need not be: at T = 1 the two experts of mixtral-mini are 88 MB,
// and even rotating batches cycles through only 352 MB, which an adaptive L3 replacement policy may
// keep partly resident. So evict, outside the timer. (On this shared VM it made no measurable
// difference; it makes the result independent of the cache policy. Prefill touches every expert
// with many tokens each and is compute-bound.)
inline bool evicts_caches(const Shape& s, Index num_tokens) {
  return num_tokens <= kDecodeTokens && weights_exceed_cache(s);
}

// The timed loop of a benchmark: body() once per iteration, the caches evicted before each
// (outside the clock) when `evict`. Returns the seconds the benchmark's clock counted, as far as
// the steady clock around the loop tells (for counters that are ratios of rates, not rates).
template <class Body>
double time_iterations(benchmark::State& state, bool evict, Body&& body) {
  using Clock = std::chrono::steady_clock;
  std::chrono::duration<double> paused{};
  const auto start = Clock::now();
  for (auto _ : state) {
    if (evict) {
      const auto pause = Clock::now();
      state.PauseTiming();
      evict_caches();
      state.ResumeTiming();
      paused += Clock::now() - pause;
    }
    body();
    benchmark::ClobberMemory();
  }
  return std::chrono::duration<double>(Clock::now() - start - paused).count();
}

}  // namespace moe::bench
