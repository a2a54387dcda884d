// An exception on one rank in the middle of a step (here: rank 1's exchange fails as it starts to
// send rows) while the other ranks wait in the step's collectives: the job must end with the
// message (MPI_Abort), not hang. ctest (ExpertParallel.an_exception_mid_step_ends_the_job) runs it on
// two ranks and looks for the message.
#include <moe/moe.hpp>
#include <moe/mpi/exchange.hpp>

#include <mpi.h>

#include <stdexcept>

namespace {

struct FailingExchange : moe::mpi::MpiExchange<float> {
  using MpiExchange::MpiExchange;
  void dispatch(const moe::RoutingPlan<float>& plan, moe::ConstMatrixRef<float> x, moe::ExpertRange owned,
                bool with_scales, Record& record, moe::ExpertBatch<float>& batch) const {
    if (rank() == 1) throw std::runtime_error("injected failure");
    MpiExchange::dispatch(plan, x, owned, with_scales, record, batch);
  }
};

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  constexpr moe::Index kD = 16, kE = 4;
  FailingExchange exchange(MPI_COMM_WORLD, kE);
  const moe::ExpertRange mine = exchange.owned(kE);
  moe::BasicSparseMoE<FailingExchange, moe::SwiGluExpert<float>, moe::TopKGate<float>> layer(
      exchange, moe::TopKGate<float>({.d_model = kD, .num_experts = kE, .top_k = 2}),
      moe::SwiGluExpert<float>({.num_experts = mine.count, .d_model = kD, .d_ff = 8}), std::nullopt);
  const moe::RowMatrix<float> x = moe::RowMatrix<float>::Ones(5, kD);
  moe::RowMatrix<float> y(5, kD);
  layer.forward(x, y);
  MPI_Finalize();
  return 0;  // not reached on two ranks
}
