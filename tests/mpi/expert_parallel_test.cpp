// Expert parallelism (moe/mpi/exchange.hpp) against one process: every rank builds the
// single-process layer on the whole batch and the expert-parallel layer on its share of the tokens
// (split in order) with its range of the experts; y, d_x and every expert's gradients must have
// the same bits — for every rank count ctest runs (1–4), with shares of any size (empty too); the
// routing statistics are the whole batch's, and the replicated parameters' gradients, summed over
// the ranks, those of one process within rounding.
#include "layer/layer_cases.hpp"
#include "support/compare.hpp"

#include <moe/moe.hpp>
#include <moe/mpi/exchange.hpp>
#include <moe/mpi/replicated.hpp>

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <string>

namespace moe {
namespace MOE_TEST_FILE_ID {

constexpr Index kD = 272, kFf = 40, kE = 8;

int rank() { return mpi::detail::rank_of(MPI_COMM_WORLD); }
int ranks() { return mpi::detail::size_of(MPI_COMM_WORLD); }
// This rank's tokens of T: [first, first + count).
std::pair<Index, Index> share(Index T) {
  const Index first = T * rank() / ranks(), last = T * (rank() + 1) / ranks();
  return {first, last - first};
}

ExpertConfig experts(Index count, std::uint64_t seed) {
  return {.num_experts = count, .d_model = kD, .d_ff = kFf, .seed = seed};
}

// Experts [first, first + count) of `all`, as a bank of their own.
template <class X>
X slice(const X& all, Index first, Index count) {
  ExpertConfig config = all.config();
  config.num_experts = count;
  X part(config);
  for (Index i = 0; i < count; ++i) {
    part.w1()[i] = all.w1()[first + i];
    part.w2()[i] = all.w2()[first + i];
    part.w3()[i] = all.w3()[first + i];
  }
  return part;
}

// The router's and shared experts' gradients summed over the ranks (sum_replicated_gradients)
// against one process's: bit for bit on one rank; otherwise within 1e-5 of the largest |gradient|
// (each is a float sum over tokens, grouped by rank).
template <class Gradients>
void expect_replicated_gradients_match(Gradients& mine, Gradients& whole) {
  mpi::sum_replicated_gradients(MPI_COMM_WORLD, mine);
  const auto got = mine.parameters(), want = whole.parameters();
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (got[i].name.starts_with("experts.")) continue;
    const auto a = got[i].matrix(), b = want[i].matrix();
    const double scale = std::max(1e-30, double(b.cwiseAbs().maxCoeff()));
    const double error = double((a - b).cwiseAbs().maxCoeff()) / scale;
    if (ranks() == 1)
      EXPECT_TRUE(test::same_bits_as_rows(a, b)) << got[i].name;
    else
      EXPECT_LE(error, 1e-5) << got[i].name;
  }
}

template <class X, class G>
void expect_expert_parallel_matches(const G& gate, const X& bank, const std::optional<SharedExperts<X>>& shared,
                                    Index T) {
  SCOPED_TRACE(testing::Message() << ranks() << " ranks, T = " << T << ", rank " << rank());
  SparseMoE<X, G> whole = shared ? SparseMoE<X, G>(gate, bank, *shared) : SparseMoE<X, G>(gate, bank);
  mpi::MpiExchange<float> exchange(MPI_COMM_WORLD, kE);
  const ExpertRange mine = exchange.owned(kE);
  BasicSparseMoE<mpi::MpiExchange<float>, X, G> part(exchange, gate, slice(bank, mine.first, mine.count), shared);

  const RowMatrix<float> x = test::random_matrix<float>(T, kD, 61), d_y = test::random_matrix<float>(T, kD, 62);
  const auto [first, count] = share(T);
  const RowMatrix<float> my_x = x.middleRows(first, count), my_d_y = d_y.middleRows(first, count);

  RowMatrix<float> y(T, kD), my_y(count, kD);
  whole.forward(x, y);
  part.forward(my_x, my_y);
  EXPECT_TRUE(test::same_bits_as_rows(my_y, y, first)) << "inference";
  // the counts exactly, the mean entropy within rounding (its sum over tokens is grouped by rank)
  test::cases::expect_same_stats(part.last_stats(), whole.last_stats(), 1e-12);
  part.set_chunk_tokens(3);  // ranks with fewer chunks join the others' exchanges
  my_y.setZero();
  typename decltype(part)::Workspace work;
  std::as_const(part).forward(my_x, my_y, work);
  EXPECT_TRUE(test::same_bits_as_rows(my_y, y, first)) << "chunked const forward";

  typename decltype(whole)::Cache cache;
  typename decltype(part)::Cache my_cache;
  auto grads = whole.make_gradients();
  auto my_grads = part.make_gradients();
  RowMatrix<float> d_x(T, kD), my_d_x(count, kD);
  whole.forward(x, y, cache);
  whole.backward(cache, d_y, d_x, grads);
  part.forward(my_x, my_y, my_cache);
  part.backward(my_cache, my_d_y, my_d_x, my_grads);
  EXPECT_TRUE(test::same_bits_as_rows(my_y, y, first)) << "training forward";
  EXPECT_TRUE(test::same_bits_as_rows(my_d_x, d_x, first)) << "d_x";
  test::cases::expect_same_stats(part.last_stats(), whole.last_stats(), 1e-12);
  expect_replicated_gradients_match(my_grads, grads);
  for (Index i = 0, e = mine.first; i < mine.count; ++i, ++e) {
    EXPECT_TRUE(test::same_bits_as_rows(my_grads.experts.w1()[i], grads.experts.w1()[e])) << "w1 of expert " << e;
    EXPECT_TRUE(test::same_bits_as_rows(my_grads.experts.w2()[i], grads.experts.w2()[e])) << "w2 of expert " << e;
    EXPECT_TRUE(test::same_bits_as_rows(my_grads.experts.w3()[i], grads.experts.w3()[e])) << "w3 of expert " << e;
  }
}

TEST(ExpertParallel, DeepSeekV3RoutingWithSharedExperts) {
  TopKGate<float> gate({.d_model = kD, .num_experts = kE, .top_k = 2, .scoring = Scoring::sigmoid, .scale = 2.5,
                        .selection_bias = true, .n_group = 4, .topk_group = 2, .seed = 1});
  for (Index e = 0; e < kE; ++e) gate.selection_bias()[e] = 0.01f * float(e % 3);
  for (const Index T : {Index(37), Index(2), Index(0)})
    expect_expert_parallel_matches(
        gate, SwiGluExpert<float>(experts(kE, 2)),
        std::optional(SharedExperts<SwiGluExpert<float>>(SwiGluExpert<float>(experts(2, 3)))), T);
}

TEST(ExpertParallel, MixtralRoutingWithBf16Experts) {
  using X = SwiGluExpert<float, Bf16>;
  expect_expert_parallel_matches(TopKGate<float>({.d_model = kD, .num_experts = kE, .top_k = 2, .seed = 4}),
                                 X(experts(kE, 5)), std::optional<SharedExperts<X>>(), 53);
}

TEST(ExpertParallel, RanksThatDisagreeOnTheExpertCountAllThrow) {
  if (ranks() == 1) GTEST_SKIP() << "needs 2 ranks";
  EXPECT_THROW(mpi::MpiExchange<float>(MPI_COMM_WORLD, rank() == 0 ? kE : kE + 1), config_error);
}

}  // namespace MOE_TEST_FILE_ID
}  // namespace moe
