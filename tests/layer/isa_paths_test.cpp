// The layer on every ISA path this machine has (tests/support/isa.hpp; the cap is how a user
// picks one too): outputs against the double-precision reference, backward against finite
// differences, the same bits on 1 and 2 threads for each path, and the same bits on the paths
// with FMA (avx2 and up), since they sum in the same order.
#include <moe/moe.hpp>
#include <moe/testing/gradient_check.hpp>

#include "support/compare.hpp"
#include "support/reference_layer.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::Isa;
using moe::RowMatrix;

using Layer = moe::SparseMoE<moe::SwiGluExpert<float>, moe::TopKGate<float>, moe::LoadBalancingLoss<float>>;
constexpr Index kT = 200, kD = 48, kFf = 70;

Layer make_layer(int threads) {
  Layer layer(moe::TopKGate<float>({.d_model = kD, .num_experts = 8, .top_k = 2, .seed = 60}),
              moe::SwiGluExpert<float>({.num_experts = 8, .d_model = kD, .d_ff = kFf, .seed = 61}),
              moe::SharedExperts<moe::SwiGluExpert<float>>(
                  moe::SwiGluExpert<float>({.num_experts = 2, .d_model = kD, .d_ff = 40, .seed = 62}), true, 63),
              moe::LoadBalancingLoss<float>(moe::LoadBalancingConfig{}));
  layer.set_num_threads(threads);
  return layer;
}

// y, d_x and every gradient of one training step, as bits; the inference forward's y is checked
// against the reference and must equal the training forward's.
std::vector<float> training_step_bits(int threads) {
  Layer layer = make_layer(threads);
  const RowMatrix<float> x = moe::test::random_matrix<float>(kT, kD, 64), d_y = moe::test::random_matrix<float>(kT, kD, 65);
  RowMatrix<float> y_inference(kT, kD), y(kT, kD), d_x(kT, kD);
  layer.forward(x, y_inference);
  MOE_EXPECT_CLOSE(float, y_inference, moe::test::reference_layer_forward(layer, x));
  Layer::Cache cache;
  layer.forward(x, y, cache);
  EXPECT_EQ(y, y_inference);
  auto grads = layer.make_gradients();
  layer.backward(cache, d_y, d_x, grads);
  std::vector<float> bits(y.data(), y.data() + y.size());
  bits.insert(bits.end(), d_x.data(), d_x.data() + d_x.size());
  for (const auto& g : grads.parameters()) bits.insert(bits.end(), g.values().begin(), g.values().end());
  return bits;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(IsaPaths, EachPathMatchesTheReferenceAndGivesTheSameBitsOnOneAndTwoThreads) {
  std::map<Isa, std::vector<float>> by_isa;
  for (const Isa isa : moe::kernels::isa_paths<moe::kernels::NativeFormat<float>>()) {
    SCOPED_TRACE(moe::isa_name(isa));
    const moe::ScopedIsaCap cap(isa);
    const std::vector<float> one = training_step_bits(1), two = training_step_bits(2);
    EXPECT_TRUE(same_bits(one, two));
    by_isa[isa] = one;
  }
  if (by_isa.count(Isa::avx2) && by_isa.count(Isa::avx512)) {
    EXPECT_TRUE(same_bits(by_isa[Isa::avx2], by_isa[Isa::avx512])) << "avx2 and avx512 sum with the same FMAs";
  }
}

// The layer says which kernels it runs: the capped path's, or Eigen's for experts without a packed path.
TEST(IsaPaths, TheLayerNamesItsKernels) {
  for (const Isa isa : moe::kernels::isa_paths<moe::kernels::NativeFormat<float>>()) {
    const moe::ScopedIsaCap cap(isa);
    EXPECT_EQ(make_layer(1).kernels(), "f32 weights on " + std::string(moe::isa_name(isa)) + " kernels");
  }
  const moe::SparseMoE<moe::LinearExpert<double>, moe::TopKGate<double>> linear(
      moe::TopKGate<double>({.d_model = 4, .num_experts = 2, .top_k = 1}),
      moe::LinearExpert<double>({.num_experts = 2, .d_model = 4}));
  EXPECT_EQ(linear.kernels(), "Eigen products");
}

// Backward against central finite differences in double, for each expert kind with a packed path:
// 14 rows (two micro-panels, one ragged) and d_ff 20 (two panels of 16 doubles, one ragged).
TEST(IsaPaths, ExpertGradientsMatchFiniteDifferencesOnEveryPath) {
  const moe::ExpertConfig gated{.num_experts = 2, .d_model = 12, .d_ff = 20, .seed = 66};
  moe::ExpertConfig ffn = gated;
  ffn.bias = true;
  for (const Isa isa : moe::kernels::isa_paths<moe::kernels::NativeFormat<float>>()) {
    SCOPED_TRACE(moe::isa_name(isa));
    const moe::ScopedIsaCap cap(isa);
    for (const auto& result : {moe::testing::check_expert(moe::SwiGluExpert<double>(gated), 14, 1),
                               moe::testing::check_expert(moe::GeGluExpert<double>(gated), 14, 2),
                               moe::testing::check_expert(moe::ReluExpert<double>(ffn), 14, 3)})
      EXPECT_TRUE(result.ok) << result.log;
  }
}

}  // namespace MOE_TEST_FILE_ID
