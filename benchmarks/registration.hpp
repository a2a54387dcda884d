// How every benchmark binary names, registers and counts its cases, and its main(): the same
// labels (BM_<Component>_<Op>/<shape>/T:<num_tokens>/threads:<n>) and counters in every binary.
#pragma once

#include "shapes.hpp"

#include <moe/types.hpp>

#include <benchmark/benchmark.h>

#include <string>
#include <utility>

namespace moe::bench {

// Adds the counter `name` = amount per second of wall-clock time over all iterations.
inline void add_rate(benchmark::State& state, const char* name, double amount) {
  state.counters[name] = benchmark::Counter(amount, benchmark::Counter::kIsRate);
}

inline void add_tokens_rate(benchmark::State& state, Index num_tokens) {
  add_rate(state, "tokens_per_s", static_cast<double>(num_tokens) * static_cast<double>(state.iterations()));
}

inline std::string case_name(const char* benchmark, const Shape& s, Index num_tokens, int threads) {
  return std::string(benchmark) + "/" + std::string(s.name) + "/T:" + std::to_string(num_tokens) +
         "/threads:" + std::to_string(threads);
}

// Every benchmark reports wall-clock time (OpenMP and Eigen threads do not show in the main
// thread's CPU time), in milliseconds unless the caller sets another unit on the result.
template <class... Args>
benchmark::internal::Benchmark* add(const std::string& name, Args&&... args) {
  return benchmark::RegisterBenchmark(name.c_str(), std::forward<Args>(args)...)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

// The main() of a benchmark binary whose cases register_benchmarks() adds.
template <class Register>
int run_benchmarks(int argc, char** argv, Register&& register_benchmarks) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace moe::bench
