// 04 — expert parallelism: train one MoE layer whose experts are split over MPI ranks, and check
// at every step that it computes what one process computes on the whole batch.
//
//   mpirun -np 2 moe_04_expert_parallel [--steps N]   (any number of ranks up to the 8 experts)
//   mpirun -np 2 moe_04_expert_parallel --smoke       a few steps (what CI runs)
//
// Every rank holds the router, its share of the experts (moe::mpi::MpiExchange: contiguous ranges)
// and its share of each batch's tokens. Each rank also trains the single-process layer on the
// whole batch, as the reference. At every step: y, d_x and every expert's gradients must be bit
// for bit the reference's, and the auxiliary loss the whole batch's. The router's gradient is a sum
// over tokens that the ranks add up in rank order (moe::mpi::sum_replicated_gradients): the same
// bits on every rank, within float rounding of one process's sum — the example prints that
// difference, then steps both layers with the ranks' sum, so that they stay comparable bit for bit.
#include <moe/moe.hpp>
#include <moe/mpi/exchange.hpp>
#include <moe/mpi/replicated.hpp>

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr moe::Index kDModel = 32, kDff = 64, kExperts = 8, kTokens = 96;
using Experts = moe::SwiGluExpert<float>;
using Gate = moe::TopKGate<float>;
using Balance = moe::LoadBalancingLoss<float>;

// The experts `ids` of `all`, as a bank of their own: a rank's share.
Experts slice(const Experts& all, const std::vector<moe::Index>& ids) {
  moe::ExpertConfig config = all.config();
  config.num_experts = moe::Index(ids.size());
  Experts part(config);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    part.w1()[moe::Index(i)] = all.w1()[ids[i]];
    part.w2()[moe::Index(i)] = all.w2()[ids[i]];
    part.w3()[moe::Index(i)] = all.w3()[ids[i]];
  }
  return part;
}

bool same_bits(const float* a, const float* b, moe::Index n) { return std::memcmp(a, b, sizeof(float) * n) == 0; }

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  int steps = 60;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--smoke") steps = 4;
    if (std::string(argv[i]) == "--steps" && i + 1 < argc) steps = std::max(1, std::atoi(argv[++i]));
  }

  // 1. The same initial layer on every rank (seeded), then each rank's share of its experts.
  const Gate gate({.d_model = kDModel, .num_experts = kExperts, .top_k = 2, .seed = 1});
  const Experts bank({.num_experts = kExperts, .d_model = kDModel, .d_ff = kDff, .seed = 2});
  moe::SparseMoE<Experts, Gate, Balance> whole(gate, bank, Balance());
  const moe::mpi::MpiExchange<float> exchange(MPI_COMM_WORLD, kExperts);
  const std::vector<moe::Index> mine = exchange.experts();
  moe::BasicSparseMoE<moe::mpi::MpiExchange<float>, Experts, Gate, Balance> part(exchange, gate, slice(bank, mine),
                                                                                std::nullopt, Balance());
  whole.set_num_threads(1), part.set_num_threads(1);
  moe::Adam<float> adam({.lr = 3e-3}), my_adam({.lr = 3e-3});
  auto grads = whole.make_gradients();
  auto my_grads = part.make_gradients();
  decltype(whole)::Cache cache;
  decltype(part)::Cache my_cache;
  if (rank == 0)
    std::printf("expert parallelism over %d rank%s: rank 0 runs experts %lld..%lld of %lld\n", ranks,
                ranks > 1 ? "s" : "", (long long)mine.front(), (long long)mine.back(), (long long)kExperts);

  // 2. The task: a random teacher, target = tanh(x · A). Batches from one seed on every rank.
  moe::Generator rng(3);
  moe::RowMatrix<float> teacher(kDModel, kDModel);
  for (moe::Index i = 0; i < teacher.size(); ++i) teacher.data()[i] = float(moe::standard_normal(rng) / std::sqrt(kDModel));
  const moe::Index first = kTokens * rank / ranks, count = kTokens * (rank + 1) / ranks - first;
  moe::RowMatrix<float> x(kTokens, kDModel), y(kTokens, kDModel), d_y(kTokens, kDModel), d_x(kTokens, kDModel);
  moe::RowMatrix<float> my_y(count, kDModel), my_d_x(count, kDModel);

  int failures = 0;
  for (int step = 1; step <= steps; ++step) {
    for (moe::Index i = 0; i < x.size(); ++i) x.data()[i] = float(moe::standard_normal(rng));
    const moe::RowMatrix<float> target = (x * teacher).array().tanh().matrix();

    // 3. The reference on the whole batch, the expert-parallel layer on this rank's share.
    const double aux = whole.forward(x, y, cache), my_aux = part.forward(x.middleRows(first, count), my_y, my_cache);
    d_y = (y - target) * (2.0f / float(y.size()));  // MSE
    const double mse = (y - target).squaredNorm() / double(y.size());
    moe::zero(grads.parameters()), moe::zero(my_grads.parameters());
    whole.backward(cache, d_y, d_x, grads);
    part.backward(my_cache, d_y.middleRows(first, count), my_d_x, my_grads);

    // 4. The checks: bits for y, d_x and every expert's gradients; the loss within rounding.
    bool same = same_bits(my_y.data(), y.row(first).data(), my_y.size()) &&
                same_bits(my_d_x.data(), d_x.row(first).data(), my_d_x.size()) && std::abs(my_aux - aux) <= 1e-12 * aux;
    for (std::size_t i = 0; i < mine.size(); ++i)
      for (const auto& [a, b] : {std::pair{&my_grads.experts.w1(), &grads.experts.w1()},
                                 std::pair{&my_grads.experts.w2(), &grads.experts.w2()},
                                 std::pair{&my_grads.experts.w3(), &grads.experts.w3()}}) {
        const auto& mine_grad = (*a)[moe::Index(i)];
        same = same && same_bits(mine_grad.data(), (*b)[mine[i]].data(), mine_grad.size());
      }
    // 5. The router's gradient: summed over the ranks, against one process's.
    moe::mpi::sum_replicated_gradients(MPI_COMM_WORLD, my_grads);
    auto& router = my_grads.gate.router().weight();
    auto& reference_router = grads.gate.router().weight();
    const double router_error = (router - reference_router).cwiseAbs().maxCoeff() /
                                std::max(1e-30f, reference_router.cwiseAbs().maxCoeff());
    same = same && router_error <= 1e-5;
    reference_router = router;  // both step with the ranks' sum

    adam.step(whole.parameters(), grads.parameters());
    my_adam.step(part.parameters(), my_grads.parameters());
    int all_same = same ? 1 : 0;
    MPI_Allreduce(MPI_IN_PLACE, &all_same, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    failures += all_same ? 0 : 1;
    if (rank == 0 && (step == 1 || step == steps || step % 10 == 0 || !all_same))
      std::printf("step %3d  mse %.4f  aux %.4f  y, d_x, expert gradients %s; router gradient within %.1e of one "
                  "process's\n",
                  step, mse, aux, all_same ? "bit for bit" : "DIFFER", router_error);
  }
  if (rank == 0)
    std::printf(failures == 0 ? "every step matched the single-process layer\n" : "%d steps did not match\n", failures);
  MPI_Finalize();
  return failures == 0 ? 0 : 1;
}
