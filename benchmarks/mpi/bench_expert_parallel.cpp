// bench_expert_parallel: the layer's forward with its experts split over MPI ranks, against the
// same batch on one rank, in one run (mpirun -np 2 bench_expert_parallel).
//
// Run (one thread per rank; the cases run on every rank in lockstep, with fixed iterations):
//   OMP_NUM_THREADS=1 mpirun -np 2 bench_expert_parallel
// Read (rank 0 prints; Google Benchmark appends /manual_time):
//   BM_ExpertParallel_Forward/<shape>/T:<T>/ranks:<n>   the batch of T tokens split over n ranks,
//       each running E/n experts; time = the slowest rank's per iteration. Counters:
//       tokens_per_s; exchange_fraction, the time in the exchange's calls (MPI and the copies
//       around it) over the layer's, on the rank that spends least there — the most loaded one,
//       which hardly waits: the exchange's own cost; wait_fraction, the most any rank spends there
//       beyond that — waiting for a more loaded rank (routing imbalance between the ranks);
//       bytes_per_token (of rows sent to other ranks, both ways); speedup (the ranks:1 case of
//       the same shape and T over this one; ranks:1 runs on rank 0 alone while the others sleep).
#include "../registration.hpp"
#include "../shapes.hpp"

#include <moe/moe.hpp>
#include <moe/mpi/exchange.hpp>

#include <benchmark/benchmark.h>
#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <tuple>
#include <string>
#include <utility>

namespace {

using moe::Index;
using Layer = moe::BasicSparseMoE<moe::mpi::MpiExchange<float>, moe::SwiGluExpert<float>, moe::TopKGate<float>>;

int world_rank() { return moe::mpi::detail::rank_of(MPI_COMM_WORLD); }
int world_size() { return moe::mpi::detail::size_of(MPI_COMM_WORLD); }

std::map<std::pair<std::string, Index>, double>& one_rank_seconds() {
  static std::map<std::pair<std::string, Index>, double> seconds;
  return seconds;
}

// Ranks outside a case's communicator wait for rank 0's word that it is over, asleep.
void wait_for_rank_0() {
  int done = 0;
  MPI_Request request;
  MPI_Irecv(&done, 1, MPI_INT, 0, 7, MPI_COMM_WORLD, &request);
  for (int finished = 0; !finished; usleep(1000)) MPI_Test(&request, &finished, MPI_STATUS_IGNORE);
}

void BM_ExpertParallel_Forward(benchmark::State& state, moe::bench::Shape shape, Index T, int ranks) {
  const bool member = world_rank() < ranks;
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, member ? 0 : MPI_UNDEFINED, world_rank(), &comm);
  if (!member) {
    wait_for_rank_0();
    state.SkipWithError("not in this case's ranks");
    return;
  }
  const moe::mpi::MpiExchange<float> exchange(comm, shape.num_experts);
  const Index count = Index(exchange.experts().size());
  Layer layer(exchange,
              moe::TopKGate<float>({.d_model = shape.d_model, .num_experts = shape.num_experts, .top_k = shape.top_k,
                                    .seed = 1}),
              moe::SwiGluExpert<float>({.num_experts = count, .d_model = shape.d_model, .d_ff = shape.d_ff,
                                        .seed = 2 + std::uint64_t(exchange.rank())}),
              std::nullopt);
  layer.set_num_threads(1);
  layer.prepack();
  const int rank = exchange.rank();
  const Index first = T * rank / ranks, rows = T * (rank + 1) / ranks - first;
  moe::RowMatrix<float> x(rows, shape.d_model);
  moe::Generator rng(3 + std::uint64_t(first));
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = float(moe::uniform(rng, -1.0, 1.0));
  moe::RowMatrix<float> y(rows, shape.d_model);
  layer.forward(x, y);  // warm: buffers and pages
  double layer_seconds = 0, exchange_seconds = 0, wait_seconds = 0, bytes = 0;
  for (auto _ : state) {
    MPI_Barrier(comm);
    layer.exchange().reset_traffic();
    double took = MPI_Wtime();
    layer.forward(x, y);
    took = MPI_Wtime() - took;
    // the slowest rank's time; the exchange's least and most (the most loaded rank waits least)
    double most[2] = {took, layer.exchange().traffic().seconds}, least = most[1];
    MPI_Allreduce(MPI_IN_PLACE, most, 2, MPI_DOUBLE, MPI_MAX, comm);
    MPI_Allreduce(MPI_IN_PLACE, &least, 1, MPI_DOUBLE, MPI_MIN, comm);
    double sent = layer.exchange().traffic().bytes_sent;
    MPI_Allreduce(MPI_IN_PLACE, &sent, 1, MPI_DOUBLE, MPI_SUM, comm);
    state.SetIterationTime(most[0]);
    layer_seconds += most[0], exchange_seconds += least, wait_seconds += most[1] - least, bytes += sent;
  }
  const double iterations = double(state.iterations());
  state.counters["tokens_per_s"] = double(T) * iterations / layer_seconds;
  state.counters["exchange_fraction"] = exchange_seconds / layer_seconds;
  state.counters["wait_fraction"] = wait_seconds / layer_seconds;
  state.counters["bytes_per_token"] = bytes / iterations / double(T);
  auto& baseline = one_rank_seconds()[{std::string(shape.name), T}];
  if (ranks == 1) baseline = layer_seconds / iterations;
  if (ranks > 1 && baseline > 0) state.counters["speedup"] = baseline / (layer_seconds / iterations);
  state.SetLabel(std::to_string(count) + " experts on rank 0");
  MPI_Comm_free(&comm);
  if (rank == 0)
    for (int other = ranks; other < world_size(); ++other) {
      int done = 1;
      MPI_Send(&done, 1, MPI_INT, other, 7, MPI_COMM_WORLD);
    }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  if (world_rank() != 0) std::freopen("/dev/null", "w", stdout);  // rank 0 reports
  const int code = moe::bench::run_benchmarks(argc, argv, [] {
    for (const auto& [shape, T, iterations] : {std::tuple{moe::bench::kSmall, Index(16), 20},
                                               std::tuple{moe::bench::kMixtralMini, Index(128), 20},
                                               std::tuple{moe::bench::kMixtralMini, Index(1024), 5}})
      for (int ranks = 1; ranks <= world_size(); ranks *= 2)
        benchmark::RegisterBenchmark((moe::bench::case_name("BM_ExpertParallel_Forward", shape, T, 1) + "/ranks:" +
                                      std::to_string(ranks))
                                         .c_str(),
                                     BM_ExpertParallel_Forward, shape, T, ranks)
            ->UseManualTime()
            ->Unit(benchmark::kMillisecond)
            ->Iterations(iterations);
  });
  MPI_Finalize();
  return code;
}
