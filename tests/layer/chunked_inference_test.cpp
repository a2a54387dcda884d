// Chunked inference (SparseMoE::set_chunk_tokens): the routed tokens go through the experts a
// chunk at a time, so the workspace is sized by the chunk, and the output has the bits of the
// whole batch at once — for every gate (the routing is made for the whole batch), with capacity
// drops, shared experts, bf16 weights, in place, and for both inference forwards.
#include "layer/layer_cases.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

namespace moe {
namespace MOE_TEST_FILE_ID {

using test::random_matrix;
using namespace test::cases;

const std::vector<Index> kChunks = {1, 7, 128, kManyTokens - 1, kManyTokens, 1000};

template <class Layer>
void expect_chunks_keep_the_bits(Layer layer) {
  using S = typename Layer::Scalar;
  const RowMatrix<S> x = random_matrix<S>(kManyTokens, kDModel, 4401);
  RowMatrix<S> whole(kManyTokens, kDModel);
  layer.forward(x, whole);
  const RoutingStats stats = layer.last_stats();
  const RoutingPlan<S> plan = layer.last_plan();
  for (const Index chunk : kChunks) {
    SCOPED_TRACE(testing::Message() << "chunk " << chunk);
    layer.set_chunk_tokens(chunk);
    RowMatrix<S> y = RowMatrix<S>::Constant(kManyTokens, kDModel, S(7));
    layer.forward(x, y);
    EXPECT_TRUE(same_bits(y, whole));
    expect_same_stats(layer.last_stats(), stats);
    expect_same_plan(layer.last_plan(), plan);

    typename Layer::Workspace work;
    y.setConstant(S(7));
    layer.forward(x, y, work);
    EXPECT_TRUE(same_bits(y, whole)) << "const forward";
    expect_same_stats(work.stats, stats);
    EXPECT_LE(work.batch.rows.rows(), std::min(chunk, kManyTokens) * plan.slots_per_token())
        << "the experts' rows are one chunk's";

    RowMatrix<S> in_place = x;
    layer.forward(in_place, in_place);
    EXPECT_TRUE(same_bits(in_place, whole)) << "y = x";
  }
  layer.set_chunk_tokens(0);
  RowMatrix<S> y(kManyTokens, kDModel);
  layer.forward(x, y);
  EXPECT_TRUE(same_bits(y, whole)) << "0: the whole batch again";
}

TEST(ChunkedInference, DeepSeekRoutingWithSharedExperts) { expect_chunks_keep_the_bits(deepseek_layer<float>()); }
TEST(ChunkedInference, GatedSharedExpertInDouble) { expect_chunks_keep_the_bits(qwen2_layer<double>()); }
TEST(ChunkedInference, CapacityDropsAreTheWholeBatchs) { expect_chunks_keep_the_bits(switch_layer<float>(0.5)); }
TEST(ChunkedInference, ExpertChoiceRoutesTheWholeBatch) {
  expect_chunks_keep_the_bits(expert_choice_layer<float>(1.0, /*with_shared=*/true));
}
TEST(ChunkedInference, Bf16Weights) {
  using X = SwiGluExpert<float, Bf16>;
  expect_chunks_keep_the_bits(SparseMoE<X, TopKGate<float>>(TopKGate<float>(mixtral_config()), X(experts_config())));
}

TEST(ChunkedInference, EmptyBatchAndNegativeChunk) {
  auto layer = mixtral_layer<float>();
  EXPECT_EQ(layer.chunk_tokens(), 4096) << "the default";
  layer.set_chunk_tokens(4);
  const RowMatrix<float> x(0, kDModel);
  RowMatrix<float> y(0, kDModel);
  layer.forward(x, y);
  EXPECT_EQ(layer.last_stats().num_tokens, 0);
  EXPECT_THROW(layer.set_chunk_tokens(-1), config_error);
  EXPECT_EQ(layer.chunk_tokens(), 4);
}

}  // namespace MOE_TEST_FILE_ID
}  // namespace moe
