// bench_serving: requests per second when threads serve requests against one layer — the layer's
// const forward with a workspace per thread (layer/workspace.hpp) — against what a user had before
// it: the layer's non-const forward shared under a mutex.
//
// Run:
//   bench_serving --benchmark_filter='mixtral-mini' --benchmark_min_time=0.5
// Read:
//   BM_Serve/<shape>/T:<T>/servers:<n>   n threads, each with its own workspace, serve requests
//                 of T tokens (one thread per call: the layer's set_num_threads(1)); an iteration
//                 is kRequests requests per server. requests_per_s and tokens_per_s over all servers.
//   BM_Serve_Locked/<shape>/T:<T>/servers:<n>   the same requests through forward(x, y) under one
//                 mutex: serialised.
//   servers:2 over servers:1 is the scaling (2 on 2 idle cores, less where decode is bound by
//   memory bandwidth); Serve over Serve_Locked at servers:2 what the const forward gains.
#include "layers.hpp"
#include "registration.hpp"
#include "shapes.hpp"

#include <moe/moe.hpp>

#include <benchmark/benchmark.h>

#include <array>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using moe::Index;
using namespace moe::bench;

constexpr int kRequests = 8;
constexpr std::array<Index, 2> kRequestTokens{1, 16};
constexpr std::array<int, 2> kServers{1, 2};

// Runs serve(server, request) for kRequests requests on each of `servers` threads, per iteration.
template <class Serve>
void time_serving(benchmark::State& state, Index num_tokens, int servers, Serve&& serve) {
  for (auto _ : state) {
    std::vector<std::thread> threads;
    for (int server = 0; server < servers; ++server)
      threads.emplace_back([&, server] {
        for (int request = 0; request < kRequests; ++request) serve(server, request);
      });
    for (auto& thread : threads) thread.join();
  }
  const double requests = double(kRequests) * servers * double(state.iterations());
  add_rate(state, "requests_per_s", requests);
  add_rate(state, "tokens_per_s", requests * double(num_tokens));
}

void BM_Serve(benchmark::State& state, const Shape& s, Index num_tokens, int servers, bool locked) {
  Layer& layer = layer_for(s);
  layer.set_num_threads(1);
  const auto inputs = make_inputs(s, num_tokens);
  std::vector<Matrix> outputs(static_cast<std::size_t>(servers), Matrix(num_tokens, s.d_model));
  std::vector<Layer::Workspace> workspaces(static_cast<std::size_t>(servers));
  std::mutex mutex;
  for (int server = 0; server < servers; ++server)  // sizes the buffers
    std::as_const(layer).forward(inputs[0], outputs[std::size_t(server)], workspaces[std::size_t(server)]);
  layer.forward(inputs[0], outputs[0]);
  time_serving(state, num_tokens, servers, [&](int server, int request) {
    const Matrix& x = inputs[std::size_t(request + server) % inputs.size()];
    Matrix& y = outputs[std::size_t(server)];
    if (locked) {
      const std::lock_guard lock(mutex);
      layer.forward(x, y);
    } else {
      std::as_const(layer).forward(x, y, workspaces[std::size_t(server)]);
    }
  });
}

void register_benchmarks() {
  for (const Shape& s : {kSmall, kMixtralMini, kDeepseekMoe})
    for (const Index num_tokens : kRequestTokens)
      for (const bool locked : {false, true})
        for (const int servers : kServers) {
          const std::string name = std::string(locked ? "BM_Serve_Locked/" : "BM_Serve/") + std::string(s.name) +
                                   "/T:" + std::to_string(num_tokens) + "/servers:" + std::to_string(servers);
          add(name, BM_Serve, s, num_tokens, servers, locked);
        }
}

}  // namespace

int main(int argc, char** argv) { return moe::bench::run_benchmarks(argc, argv, register_benchmarks); }
