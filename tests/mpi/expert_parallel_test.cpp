// Expert parallelism (moe/mpi/exchange.hpp) against one process: every rank builds the
// single-process layer on the whole batch and the expert-parallel layer on its share of the tokens
// (split in order) with its range of the experts; y, d_x and every expert's gradients must have
// the same bits — for every rank count ctest runs (1–4), with shares of any size (empty too); the
// routing statistics are the whole batch's, and the replicated parameters' gradients, summed over
// the ranks, those of one process within rounding; the auxiliary losses are the whole batch's, and
// capacity is per rank.
#include "layer/layer_cases.hpp"
#include "support/compare.hpp"
#include "support/throws.hpp"

#include <moe/moe.hpp>
#include <moe/mpi/exchange.hpp>
#include <moe/mpi/replicated.hpp>

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

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

// The experts `ids` of `all`, as a bank of their own.
template <class X>
X slice(const X& all, const std::vector<Index>& ids) {
  ExpertConfig config = all.config();
  config.num_experts = Index(ids.size());
  X part(config);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    part.w1()[Index(i)] = all.w1()[ids[i]];
    part.w2()[Index(i)] = all.w2()[ids[i]];
    part.w3()[Index(i)] = all.w3()[ids[i]];
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
                                    Index T, const mpi::MpiExchange<float>& exchange) {
  SCOPED_TRACE(testing::Message() << ranks() << " ranks, T = " << T << ", rank " << rank());
  SparseMoE<X, G> whole = shared ? SparseMoE<X, G>(gate, bank, *shared) : SparseMoE<X, G>(gate, bank);
  const std::vector<Index> mine = exchange.experts();
  BasicSparseMoE<mpi::MpiExchange<float>, X, G> part(exchange, gate, slice(bank, mine), shared);

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
  for (Index i = 0; i < Index(mine.size()); ++i) {
    const Index e = mine[static_cast<std::size_t>(i)];
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
        std::optional(SharedExperts<SwiGluExpert<float>>(SwiGluExpert<float>(experts(2, 3)))), T,
        mpi::MpiExchange<float>(MPI_COMM_WORLD, kE));
}

TEST(ExpertParallel, MixtralRoutingWithBf16Experts) {
  using X = SwiGluExpert<float, Bf16>;
  expect_expert_parallel_matches(TopKGate<float>({.d_model = kD, .num_experts = kE, .top_k = 2, .seed = 4}),
                                 X(experts(kE, 5)), std::optional<SharedExperts<X>>(), 53,
                                 mpi::MpiExchange<float>(MPI_COMM_WORLD, kE));
}

// An explicit placement, experts scattered over the ranks: the same bits, each rank's bank holding
// its experts in ascending order.
TEST(ExpertParallel, AnExplicitPlacementGivesTheSameBits) {
  std::vector<int> placement(kE);
  for (Index e = 0; e < kE; ++e) placement[std::size_t(e)] = int((e * 5 + 3) % ranks());
  const mpi::MpiExchange<float> exchange(MPI_COMM_WORLD, placement);
  std::vector<Index> expected;
  for (Index e = 0; e < kE; ++e)
    if (placement[std::size_t(e)] == rank()) expected.push_back(e);
  EXPECT_EQ(exchange.experts(), expected);
  for (const Index T : {Index(41), Index(1)})
    expect_expert_parallel_matches(TopKGate<float>({.d_model = kD, .num_experts = kE, .top_k = 3, .seed = 14}),
                                   SwiGluExpert<float>(experts(kE, 15)), std::optional<SharedExperts<SwiGluExpert<float>>>(),
                                   T, exchange);
}

TEST(ExpertParallel, RanksThatDisagreeOnThePlacementAllThrow) {
  if (ranks() == 1) GTEST_SKIP() << "needs 2 ranks";
  std::vector<int> placement(kE, 0);
  placement[3] = rank() == 0 ? 0 : 1;
  const auto disagree = [&] { mpi::MpiExchange<float>(MPI_COMM_WORLD, placement); };
  test::expect_throw_naming<config_error>(disagree, "disagree on the rank of expert 3");
  const auto outside = [&] { mpi::MpiExchange<float>(MPI_COMM_WORLD, std::vector<int>(kE, ranks())); };
  test::expect_throw_naming<config_error>(outside, "placed on rank");
  const auto idle = [&] { mpi::MpiExchange<float>(MPI_COMM_WORLD, std::vector<int>(kE, 0)); };
  test::expect_throw_naming<config_error>(idle, "rank 1 of");
  const auto elsewhere = [&] { mpi::MpiExchange<float>(MPI_COMM_SELF, mpi::Placement::contiguous(MPI_COMM_WORLD, kE)); };
  test::expect_throw_naming<config_error>(elsewhere, "a placement over ");
}

// The auxiliary losses of a batch whose sequences are split over the ranks (whole sequences each):
// every rank's value is the whole batch's (within rounding: the sums over tokens are grouped by
// rank), and d_x keeps the single-process bits — the losses' gradients depend on the whole batch
// only through counts, which the ranks sum exactly. DeepSeek-V3's bias update from the statistics
// moves every rank's bias as one process's.
TEST(ExpertParallel, AuxiliaryLossesAndTheBiasUpdateAreTheWholeBatchs) {
  using X = SwiGluExpert<float>;
  using G = TopKGate<float>;
  constexpr Index kSequence = 4, kSequences = 7, T = kSequence * kSequences;
  const G gate({.d_model = kD, .num_experts = kE, .top_k = 2, .selection_bias = true, .seed = 8});
  const X bank(experts(kE, 9));
  const LoadBalancingLoss<float> balance;
  const RouterZLoss<float> z_loss;
  const SequenceBalanceLoss<float> sequence_balance({.sequence_length = kSequence});
  SparseMoE<X, G, LoadBalancingLoss<float>, RouterZLoss<float>, SequenceBalanceLoss<float>> whole(
      gate, bank, balance, z_loss, sequence_balance);
  mpi::MpiExchange<float> exchange(MPI_COMM_WORLD, kE);
  BasicSparseMoE<mpi::MpiExchange<float>, X, G, LoadBalancingLoss<float>, RouterZLoss<float>,
                 SequenceBalanceLoss<float>>
      part(exchange, gate, slice(bank, exchange.experts()), std::nullopt, balance, z_loss, sequence_balance);

  const Index first = kSequence * (kSequences * rank() / ranks());
  const Index count = kSequence * (kSequences * (rank() + 1) / ranks()) - first;
  const RowMatrix<float> x = test::random_matrix<float>(T, kD, 63), d_y = test::random_matrix<float>(T, kD, 64);
  std::vector<std::uint8_t> mask(T, 1);
  mask[5] = mask[6] = 0;  // padding inside the second sequence
  for (Index t = 8; t < 12; ++t) mask[static_cast<std::size_t>(t)] = 0;  // a sequence of padding only
  const std::span<const std::uint8_t> my_mask(mask.data() + first, static_cast<std::size_t>(count));

  RowMatrix<float> y(T, kD), my_y(count, kD), d_x(T, kD), my_d_x(count, kD);
  typename decltype(whole)::Cache cache;
  typename decltype(part)::Cache my_cache;
  auto grads = whole.make_gradients();
  auto my_grads = part.make_gradients();
  const double aux = whole.forward(x, y, cache, mask);
  const double my_aux = part.forward(x.middleRows(first, count), my_y, my_cache, my_mask);
  EXPECT_NEAR(my_aux, aux, 1e-12 * std::abs(aux));
  whole.backward(cache, d_y, d_x, grads);
  part.backward(my_cache, d_y.middleRows(first, count), my_d_x, my_grads);
  EXPECT_TRUE(test::same_bits_as_rows(my_y, y, first)) << "y";
  EXPECT_TRUE(test::same_bits_as_rows(my_d_x, d_x, first)) << "d_x";
  expect_replicated_gradients_match(my_grads, grads);

  // Clipping by the norm of all the gradients: every rank's experts count, the factor is one.
  const double norm = global_norm(grads.parameters()), my_norm = mpi::global_grad_norm(MPI_COMM_WORLD, my_grads);
  EXPECT_NEAR(my_norm, norm, 1e-5 * norm);
  EXPECT_NEAR(mpi::clip_grad_norm(MPI_COMM_WORLD, my_grads, 0.5 * norm), my_norm, 0.0);
  EXPECT_NEAR(mpi::global_grad_norm(MPI_COMM_WORLD, my_grads), 0.5 * norm, 1e-5 * norm);

  Vector<float> bias = gate.selection_bias(), my_bias = gate.selection_bias();
  update_selection_bias(bias, whole.last_stats().tokens_per_expert);
  update_selection_bias(my_bias, part.last_stats().tokens_per_expert);
  EXPECT_EQ(my_bias, bias);
}

// Capacity is per rank: each rank's gate drops among its own tokens (capacity = factor · T_rank ·
// k / E), as GShard and Switch apply capacity per group of tokens on a device. So the layer over
// the ranks gives each rank's tokens the output one process gives that share alone.
TEST(ExpertParallel, CapacityIsAppliedToEachRanksTokens) {
  using X = SwiGluExpert<float>;
  const TopKGate<float> gate({.d_model = kD, .num_experts = kE, .top_k = 2, .capacity = {.factor = 1.0}, .seed = 10});
  const X bank(experts(kE, 11));
  SparseMoE<X, TopKGate<float>> one(gate, bank);
  mpi::MpiExchange<float> exchange(MPI_COMM_WORLD, kE);
  BasicSparseMoE<mpi::MpiExchange<float>, X, TopKGate<float>> part(exchange, gate, slice(bank, exchange.experts()),
                                                                   std::nullopt);
  const Index T = 61;
  const auto [first, count] = share(T);
  const RowMatrix<float> my_x = test::random_matrix<float>(T, kD, 65).middleRows(first, count);
  RowMatrix<float> alone(count, kD), my_y(count, kD);
  one.forward(my_x, alone);
  part.forward(my_x, my_y);
  EXPECT_TRUE(test::same_bits_as_rows(my_y, alone));
  Index dropped = one.last_stats().dropped;
  exchange.sum(std::span<Index>(&dropped, 1));
  EXPECT_EQ(part.last_stats().dropped, dropped);
  EXPECT_GT(dropped, 0) << "capacity factor 1 drops some of 61 tokens' slots";
}

// A loss that cannot sum over processes would see only its rank's tokens: refused.
TEST(ExpertParallel, ALossThatSeesOnlyItsRanksTokensIsRefused) {
  struct LocalOnly {
    using Scalar = float;
    double evaluate(const RoutingPlan<float>&, std::span<const std::uint8_t>, RouterGradients<float>*) const {
      return 0;
    }
  };
  using X = SwiGluExpert<float>;
  const TopKGate<float> gate({.d_model = kD, .num_experts = kE, .top_k = 2, .seed = 12});
  mpi::MpiExchange<float> exchange(MPI_COMM_WORLD, kE);
  const ExpertRange mine = exchange.owned(kE);
  const auto make = [&] {
    return BasicSparseMoE<mpi::MpiExchange<float>, X, TopKGate<float>, LocalOnly>(
        exchange, gate, X(experts(mine.count, 13)), std::nullopt, LocalOnly{});
  };
  if (ranks() == 1)
    EXPECT_NO_THROW(make());
  else
    EXPECT_THROW(make(), config_error);
}

// Layers of different shapes on different ranks: config_error on every rank, at construction.
TEST(ExpertParallel, RanksThatDisagreeOnTheLayerShapeAllThrow) {
  if (ranks() == 1) GTEST_SKIP() << "needs 2 ranks";
  using X = SwiGluExpert<float>;
  const Index d_model = rank() == 1 ? kD + 1 : kD;
  mpi::MpiExchange<float> exchange(MPI_COMM_WORLD, kE);
  const auto make = [&] {
    BasicSparseMoE<mpi::MpiExchange<float>, X, TopKGate<float>>(
        exchange, TopKGate<float>({.d_model = d_model, .num_experts = kE, .top_k = 2}),
        X({.num_experts = exchange.owned(kE).count, .d_model = d_model, .d_ff = kFf}), std::nullopt);
  };
  test::expect_throw_naming<config_error>(make, "the ranks disagree on d_model");
}

// A bad argument on one rank: that rank throws its error, the others an mpi_error naming it — and
// the next step runs on every rank as if nothing had happened.
TEST(ExpertParallel, ABadArgumentOnOneRankIsAnExceptionOnEveryRank) {
  using X = SwiGluExpert<float>;
  mpi::MpiExchange<float> exchange(MPI_COMM_WORLD, kE);
  const TopKGate<float> gate({.d_model = kD, .num_experts = kE, .top_k = 2, .seed = 16});
  const X bank(experts(kE, 17));
  BasicSparseMoE<mpi::MpiExchange<float>, X, TopKGate<float>> part(exchange, gate, slice(bank, exchange.experts()),
                                                                   std::nullopt);
  const bool bad = rank() == ranks() - 1;
  const RowMatrix<float> x = test::random_matrix<float>(6, kD, 66);
  RowMatrix<float> y(6, kD), wrong(6, kD + (bad ? 1 : 0));
  const std::string named = "rank " + std::to_string(ranks() - 1) + " of " + std::to_string(ranks()) +
                            ": SparseMoE::forward: y.cols() = " + std::to_string(kD + 1);
  if (bad)
    test::expect_throw_naming<shape_error>([&] { part.forward(x, wrong); }, "y.cols() = ");
  else
    test::expect_throw_naming<mpi::mpi_error>([&] { part.forward(x, wrong); }, named);

  typename decltype(part)::Cache cache;
  auto grads = part.make_gradients();
  part.forward(x, y, cache);
  RowMatrix<float> d_x(bad ? 5 : 6, kD);
  if (bad)
    test::expect_throw_naming<shape_error>([&] { part.backward(cache, y, d_x, grads); }, "d_x.rows() = 5");
  else
    test::expect_throw_naming<mpi::mpi_error>([&] { part.backward(cache, y, d_x, grads); }, "d_x.rows() = 5");

  SparseMoE<X, TopKGate<float>> whole(gate, bank);
  RowMatrix<float> all(6 * ranks(), kD), expected(6 * ranks(), kD);
  for (int r = 0; r < ranks(); ++r) all.middleRows(6 * r, 6) = x;
  whole.forward(all, expected);
  part.forward(x, y);
  EXPECT_TRUE(test::same_bits_as_rows(y, expected, 6 * rank())) << "the step after";
}

TEST(ExpertParallel, RanksThatDisagreeOnTheExpertCountAllThrow) {
  if (ranks() == 1) GTEST_SKIP() << "needs 2 ranks";
  EXPECT_THROW(mpi::MpiExchange<float>(MPI_COMM_WORLD, rank() == 0 ? kE : kE + 1), config_error);
}

}  // namespace MOE_TEST_FILE_ID
}  // namespace moe
