// Batch invariance: with a gate that routes each token on its own, a token's output — and in
// training its row of d_x — has the same bits whatever other tokens share the call: alone, in any
// block of the batch, or in the whole batch. What lets a batch be cut into chunks, requests be
// served one by one or batched, and tokens be split over processes, with the same bits. The
// dimensions cross the products' depth blocks (d_model > 256) and tile edges.
#include "support/compare.hpp"

#include <moe/moe.hpp>

#include <gtest/gtest.h>

#include <utility>
#include <vector>

namespace moe {
namespace MOE_TEST_FILE_ID {

constexpr Index kT = 41, kD = 272, kFf = 40, kE = 8;
const std::vector<std::pair<Index, Index>> kParts = {{0, 1}, {17, 1}, {kT - 1, 1}, {3, 13}, {1, kT - 1}};

ExpertConfig experts(Index count, std::uint64_t seed) {
  return {.num_experts = count, .d_model = kD, .d_ff = kFf, .seed = seed};
}

template <class Layer>
void expect_batch_invariant(Layer layer, bool trainable = true) {
  const RowMatrix<float> x = test::random_matrix<float>(kT, kD, 51), d_y = test::random_matrix<float>(kT, kD, 52);
  RowMatrix<float> y(kT, kD), d_x(kT, kD);
  layer.forward(x, y);
  typename Layer::Cache cache;
  auto grads = layer.make_gradients();
  RowMatrix<float> y_train(kT, kD);
  if (trainable) {
    layer.forward(x, y_train, cache);
    layer.backward(cache, d_y, d_x, grads);
  }
  for (const auto& [first, count] : kParts) {
    SCOPED_TRACE(testing::Message() << "tokens [" << first << ", " << first + count << ")");
    const RowMatrix<float> part = x.middleRows(first, count);  // its own memory, other alignment
    RowMatrix<float> part_y(count, kD), part_d_x(count, kD);
    layer.forward(part, part_y);
    EXPECT_TRUE(test::same_bits_as_rows(part_y, y, first)) << "inference";
    if (!trainable) continue;
    layer.forward(part, part_y, cache);
    layer.backward(cache, d_y.middleRows(first, count), part_d_x, grads);
    EXPECT_TRUE(test::same_bits_as_rows(part_y, y_train, first)) << "training forward";
    EXPECT_TRUE(test::same_bits_as_rows(part_d_x, d_x, first)) << "d_x";
  }
}

TEST(BatchInvariance, DeepSeekV3RoutingWithSharedExperts) {
  TopKGate<float> gate({.d_model = kD, .num_experts = kE, .top_k = 2, .scoring = Scoring::sigmoid, .scale = 2.5,
                        .selection_bias = true, .n_group = 4, .topk_group = 2, .seed = 1});
  for (Index e = 0; e < kE; ++e) gate.selection_bias()[e] = 0.01f * float(e % 3);
  expect_batch_invariant(SparseMoE<SwiGluExpert<float>, TopKGate<float>>(
      std::move(gate), SwiGluExpert<float>(experts(kE, 2)), SharedExperts<SwiGluExpert<float>>(SwiGluExpert<float>(experts(2, 3)))));
}

TEST(BatchInvariance, Qwen2RoutingWithAGatedSharedExpert) {
  expect_batch_invariant(SparseMoE<SwiGluExpert<float>, TopKGate<float>>(
      TopKGate<float>({.d_model = kD, .num_experts = kE, .top_k = 2, .normalize = false, .seed = 4}),
      SwiGluExpert<float>(experts(kE, 5)), SharedExperts<SwiGluExpert<float>>(SwiGluExpert<float>(experts(1, 6)), true, 7)));
}

TEST(BatchInvariance, Bf16ExpertsAndSoftmaxOfTheSelected) {
  using X = GeGluExpert<float, Bf16>;
  expect_batch_invariant(SparseMoE<X, TopKGate<float>>(
      TopKGate<float>({.d_model = kD, .num_experts = kE, .top_k = 3, .scoring = Scoring::softmax_selected, .seed = 8}),
      X(experts(kE, 9))));
}

TEST(BatchInvariance, DenseGateWithFfnExperts) {
  expect_batch_invariant(SparseMoE<ReluExpert<float>, DenseGate<float>>(
      DenseGate<float>({.d_model = kD, .num_experts = 4, .seed = 10}), ReluExpert<float>(experts(4, 11))));
}

}  // namespace MOE_TEST_FILE_ID
}  // namespace moe
