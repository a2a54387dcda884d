// bench_machine: this machine's limits alone (machine.hpp), on 1 and 2 threads; bench_layer and
// bench_kernels measure them again in their own runs, next to what is read against them.
//
// Run:
//   bench_machine --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// Read (Google Benchmark appends /real_time to every name):
//   BM_Machine_FmaPeak/threads:<n>    GFLOPS: fp32 FMAs on 16 vector accumulators in registers,
//                                     on each of <n> threads: the compute limit.
//   BM_Machine_DramRead/threads:<n>   GBps: a vectorised sum of 1 GiB split between <n> threads:
//                                     the read bandwidth limit (one stream per thread).
//   BM_Machine_Bf16DotPeak/threads:<n>  GFLOPS of bf16 dot products (vdpbf16ps) likewise, where the
//                                     CPU has them.
#include "machine.hpp"
#include "registration.hpp"
#include "shapes.hpp"

int main(int argc, char** argv) {
  return moe::bench::run_benchmarks(argc, argv,
                                    [] { moe::bench::register_machine_benchmarks(moe::bench::kThreadCounts); });
}
