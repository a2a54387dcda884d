// Concurrent inference on one layer (SparseMoE's const forward with a workspace per thread): many
// threads serving requests of mixed sizes against one copy of the weights give, request by
// request, the bits of a single-threaded run. The tsan preset runs this suite under
// ThreadSanitizer (without OpenMP); the test preset runs it with OpenMP threads inside each call.
#include "support/compare.hpp"

#include <moe/moe.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

namespace moe {
namespace MOE_TEST_FILE_ID {

constexpr Index kD = 48, kFf = 40, kE = 8;
constexpr int kServers = 6, kRounds = 3;
const std::vector<Index> kSizes = {1, 2, 5, 16, 33, 64, 130, 3};

ExpertConfig experts(Index count, std::uint64_t seed) {
  return {.num_experts = count, .d_model = kD, .d_ff = kFf, .seed = seed};
}

// DeepSeek-V3's routing (sigmoid, groups, selection bias, scaled) with plain shared experts, fp32.
auto deepseek_layer() {
  TopKGate<float> gate({.d_model = kD, .num_experts = kE, .top_k = 2, .scoring = Scoring::sigmoid, .scale = 2.5,
                        .selection_bias = true, .n_group = 4, .topk_group = 2, .seed = 1});
  for (Index e = 0; e < kE; ++e) gate.selection_bias()[e] = 0.05f * float(e % 3);
  return SparseMoE<SwiGluExpert<float>, TopKGate<float>>(std::move(gate), SwiGluExpert<float>(experts(kE, 2)),
                                                         SharedExperts<SwiGluExpert<float>>(SwiGluExpert<float>(experts(2, 3))));
}

// Qwen2-MoE's (softmax top-2 unnormalised, gated shared expert), bf16 weights, capacity drops.
auto qwen2_bf16_layer() {
  using X = SwiGluExpert<float, Bf16>;
  return SparseMoE<X, TopKGate<float>>(
      TopKGate<float>({.d_model = kD, .num_experts = kE, .top_k = 2, .normalize = false, .capacity = {.factor = 1.0},
                       .seed = 4}),
      X(experts(kE, 5)), SharedExperts<X>(X(experts(1, 6)), /*gated=*/true, 7));
}

auto expert_choice_layer() {
  return SparseMoE<GeGluExpert<float>, ExpertChoiceGate<float>>(
      ExpertChoiceGate<float>({.d_model = kD, .num_experts = kE, .capacity_factor = 2.0, .seed = 8}),
      GeGluExpert<float>(experts(kE, 9)));
}

std::vector<RowMatrix<float>> requests() {
  std::vector<RowMatrix<float>> out;
  for (std::size_t i = 0; i < kSizes.size(); ++i) out.push_back(test::random_matrix<float>(kSizes[i], kD, 100 + i));
  return out;
}

bool same_bits(const RowMatrix<float>& a, const RowMatrix<float>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}

// kServers threads, each with its own workspace, run every request kRounds times in an order of
// their own against `layer`; every output must equal the single-threaded one. Returns mismatches.
template <class Layer>
int serve(const Layer& layer, const std::vector<RowMatrix<float>>& xs, const std::vector<RowMatrix<float>>& expected) {
  std::atomic<int> mismatches{0};
  std::vector<std::thread> servers;
  for (int s = 0; s < kServers; ++s)
    servers.emplace_back([&, s] {
      typename Layer::Workspace work;
      for (int round = 0; round < kRounds; ++round)
        for (std::size_t i = 0; i < xs.size(); ++i) {
          const std::size_t r = (i * 5 + std::size_t(s) + std::size_t(round)) % xs.size();
          RowMatrix<float> y(xs[r].rows(), kD);
          layer.forward(xs[r], y, work);
          if (!same_bits(y, expected[r]) || work.plan.num_tokens() != xs[r].rows()) ++mismatches;
        }
    });
  for (auto& server : servers) server.join();
  return mismatches.load();
}

template <class Layer>
void expect_concurrent_inference_matches(Layer layer, int threads_per_call) {
  const auto xs = requests();
  std::vector<RowMatrix<float>> expected;
  layer.set_num_threads(1);
  for (const auto& x : xs) {
    expected.emplace_back(x.rows(), kD);
    layer.forward(x, expected.back());  // the plain forward: packs the weights it uses
  }
  layer.prepack();
  layer.set_num_threads(threads_per_call);
  EXPECT_EQ(serve(layer, xs, expected), 0);
}

TEST(ConcurrentInference, DeepSeekLayerServesManyThreadsWithTheSingleThreadedBits) {
  expect_concurrent_inference_matches(deepseek_layer(), 1);
}
TEST(ConcurrentInference, Bf16LayerWithCapacityAndGatedSharedExpert) {
  expect_concurrent_inference_matches(qwen2_bf16_layer(), 1);
}
TEST(ConcurrentInference, ExpertChoiceLayer) { expect_concurrent_inference_matches(expert_choice_layer(), 1); }
TEST(ConcurrentInference, ThreadsInsideEachCallToo) { expect_concurrent_inference_matches(deepseek_layer(), 2); }

// Without prepack() the const forward packs each weight panel as it uses it: the same bits, and
// the layer is not written (so it may still be shared).
TEST(ConcurrentInference, UnpackedLayerGivesTheSameBits) {
  const auto xs = requests();
  auto packed = qwen2_bf16_layer();
  const auto unpacked = qwen2_bf16_layer();
  std::vector<RowMatrix<float>> expected;
  for (const auto& x : xs) {
    expected.emplace_back(x.rows(), kD);
    packed.forward(x, expected.back());
  }
  EXPECT_EQ(serve(unpacked, xs, expected), 0);
}

// The workspace describes the call like last_plan() and last_stats(); a copy of it, or of a layer,
// starts with empty buffers; release() frees them.
TEST(ConcurrentInference, WorkspaceDescribesTheCallAndCopiesEmpty) {
  auto layer = deepseek_layer();
  const RowMatrix<float> x = test::random_matrix<float>(40, kD, 7);
  RowMatrix<float> y(40, kD), y_plain(40, kD);
  decltype(layer)::Workspace work;
  layer.forward(x, y, work);
  layer.forward(x, y_plain);
  EXPECT_TRUE(same_bits(y, y_plain));
  EXPECT_TRUE(work.plan.expert == layer.last_plan().expert);
  EXPECT_EQ(work.stats.tokens_per_expert, layer.last_stats().tokens_per_expert);
  EXPECT_GT(work.batch.rows.size(), 0);

  const auto copy = work;
  EXPECT_EQ(copy.batch.rows.size(), 0);
  EXPECT_EQ(copy.plan.num_tokens(), 0);
  work.release();
  EXPECT_EQ(work.batch.rows.size(), 0);
  layer.forward(x, y, work);
  EXPECT_TRUE(same_bits(y, y_plain));
}

}  // namespace MOE_TEST_FILE_ID
}  // namespace moe
