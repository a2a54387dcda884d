// bench_routing: everything the layer's forward does besides running the experts, on the reference
// shapes of benchmarks/README.md ("Shapes and conventions"), and in the same run the layer's whole
// forward at the same T (layers.hpp), which that work is read against as a share.
//
// Run:
//   bench_routing --benchmark_filter='small|mixtral-mini' --benchmark_min_time=0.05
// Read (Google Benchmark appends /real_time to every name; Time is wall-clock ms):
//   BM_Routing/<shape>/T:<num_tokens>/threads:1   gate route, build_dispatch, gather_rows, combine
//                 (here of the gathered rows themselves), routing statistics and the copy of the
//                 plan that last_plan() keeps, with the layer's kernels on one thread, as the layer
//                 runs them. T = 16, 128 and 1024 (mixtral-8x7b: 16).
//   BM_Layer_Forward/<shape>/T:<num_tokens>/threads:1   the layer's forward, as in bench_layer.
//   tokens_per_s  tokens per second.
// The routing share is BM_Routing's Time over BM_Layer_Forward's at the same shape and T; each
// routing case runs right after its forward, so that both meet the same moment of the machine.
#include "layers.hpp"
#include "registration.hpp"
#include "shapes.hpp"

#include <moe/moe.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <span>

namespace {

using moe::Index;
using namespace moe::bench;

constexpr std::array<Index, 3> kRoutingTokenCounts{16, 128, 1024};

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
    moe::compute_routing_stats(plan, stats);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(&stats);
    benchmark::DoNotOptimize(&kept);
    benchmark::ClobberMemory();
    batch = (batch + 1) % inputs.size();
  }
  add_tokens_rate(state, num_tokens);
}

void register_benchmarks() {
  for (const Shape& s : kShapes) {
    const std::span<const Index> tokens = token_counts(s);
    for (const Index num_tokens : kRoutingTokenCounts) {
      if (std::ranges::find(tokens, num_tokens) == tokens.end()) continue;
      add_layer_forward(s, num_tokens, 1);
      add(case_name("BM_Routing", s, num_tokens, 1), BM_Routing, s, num_tokens);
    }
  }
}

}  // namespace

int main(int argc, char** argv) { return moe::bench::run_benchmarks(argc, argv, register_benchmarks); }
