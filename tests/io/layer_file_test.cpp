#include <moe/io/layer_file.hpp>

#include "io/io_files.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <utility>
#include <string>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;
using moe::io::CheckpointLayer;
using moe::io::SafetensorsFile;
using moe::test::ScratchDir;

template <class S>
class LayerFile : public ::testing::Test {};
TYPED_TEST_SUITE(LayerFile, moe::test::Scalars);

// Every parameter and buffer, bit for bit (NaN-safe), and the whole configuration.
template <class S>
void expect_same_layer(CheckpointLayer<S>& a, CheckpointLayer<S>& b) {
  const auto& ga = a.gate().config();
  const auto& gb = b.gate().config();
  EXPECT_EQ(ga.d_model, gb.d_model);
  EXPECT_EQ(ga.num_experts, gb.num_experts);
  EXPECT_EQ(ga.top_k, gb.top_k);
  EXPECT_EQ(ga.scoring, gb.scoring);
  EXPECT_EQ(ga.normalize, gb.normalize);
  EXPECT_EQ(std::bit_cast<std::uint64_t>(ga.scale), std::bit_cast<std::uint64_t>(gb.scale));
  EXPECT_EQ(ga.router_bias, gb.router_bias);
  EXPECT_EQ(ga.selection_bias, gb.selection_bias);
  EXPECT_EQ(ga.n_group, gb.n_group);
  EXPECT_EQ(ga.topk_group, gb.topk_group);
  EXPECT_EQ(ga.group_score, gb.group_score);
  EXPECT_EQ(ga.noisy, gb.noisy);
  EXPECT_EQ(std::bit_cast<std::uint64_t>(ga.jitter), std::bit_cast<std::uint64_t>(gb.jitter));
  EXPECT_EQ(ga.capacity.factor, gb.capacity.factor);
  EXPECT_EQ(ga.capacity.min_capacity, gb.capacity.min_capacity);
  EXPECT_EQ(ga.capacity.policy, gb.capacity.policy);
  EXPECT_EQ(ga.seed, gb.seed);
  EXPECT_EQ(a.experts().config().seed, b.experts().config().seed);
  ASSERT_EQ(a.shared() != nullptr, b.shared() != nullptr);
  if (a.shared()) {
    EXPECT_EQ(a.shared()->gated(), b.shared()->gated());
    EXPECT_EQ(a.shared()->num_experts(), b.shared()->num_experts());
  }
  const auto same_bits = [](const S* p, const S* q, Index n) { return std::memcmp(p, q, sizeof(S) * n) == 0; };
  EXPECT_EQ(a.gate().selection_bias().size(), b.gate().selection_bias().size());
  EXPECT_TRUE(same_bits(a.gate().selection_bias().data(), b.gate().selection_bias().data(),
                        a.gate().selection_bias().size()));
  const auto pa = a.parameters(), pb = b.parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pa[i].name, pb[i].name);
    ASSERT_EQ(pa[i].rows, pb[i].rows) << pa[i].name;
    ASSERT_EQ(pa[i].cols, pb[i].cols) << pa[i].name;
    EXPECT_TRUE(same_bits(pa[i].data, pb[i].data, pa[i].size())) << pa[i].name;
  }
}

template <class S>
CheckpointLayer<S> make_layer(bool with_shared, bool gated) {
  moe::TopKGateConfig g{.d_model = 8, .num_experts = 6, .top_k = 3, .scoring = moe::Scoring::sigmoid,
                        .normalize = true, .scale = 2.5, .router_bias = true, .selection_bias = true,
                        .n_group = 3, .topk_group = 2, .noisy = true, .jitter = 0.01,
                        .capacity = {.factor = 1.1, .min_capacity = 2, .policy = moe::DropPolicy::highest_score},
                        .seed = 12345678901234567ULL};
  moe::TopKGate<S> gate(g);
  gate.selection_bias() = moe::test::random_matrix<S>(6, 1, 4);
  gate.noise_weight() = moe::test::random_matrix<S>(6, 8, 5);
  gate.selection_bias()[1] = S(1) / S(3);  // not representable in a short decimal
  moe::SwiGluExpert<S> experts({.num_experts = 6, .d_model = 8, .d_ff = 5, .seed = 7});
  if (!with_shared) return CheckpointLayer<S>(std::move(gate), std::move(experts));
  moe::SharedExperts<moe::SwiGluExpert<S>> shared(moe::SwiGluExpert<S>({.num_experts = 2, .d_model = 8, .d_ff = 3, .seed = 9}),
                                                  gated, /*seed=*/11);
  return CheckpointLayer<S>(std::move(gate), std::move(experts), std::move(shared));
}

TYPED_TEST(LayerFile, RoundTripsBitExactly) {
  using S = TypeParam;
  ScratchDir dir;
  for (const auto& [with_shared, gated] : {std::pair{false, false}, {true, false}, {true, true}}) {
    auto layer = make_layer<S>(with_shared, gated);
    moe::io::save_layer(layer, dir / "layer.safetensors");
    auto loaded = moe::io::load_layer<S>(SafetensorsFile::open(dir / "layer.safetensors"));
    expect_same_layer(layer, loaded);
    // Same routing and output, bit for bit.
    const RowMatrix<S> x = moe::test::random_matrix<S>(9, 8, 21);
    RowMatrix<S> y(9, 8), y_loaded(9, 8);
    layer.forward(x, y);
    loaded.forward(x, y_loaded);
    EXPECT_EQ(y, y_loaded);
  }
}

TEST(LayerFileErrors, MissingConfigAndForeignFiles) {
  auto layer = make_layer<float>(true, true);
  auto writer = moe::io::layer_writer(layer);
  writer.metadata("moe.layer", "something else");
  try {
    moe::io::load_layer<float>(SafetensorsFile::from_bytes(writer.bytes(), "x.safetensors"));
    ADD_FAILURE() << "no io_error";
  } catch (const moe::io_error& e) {
    EXPECT_NE(std::string(e.what()).find("x.safetensors: __metadata__ \"moe.layer\""), std::string::npos) << e.what();
  }
  moe::io::SafetensorsWriter bare;
  bare.add("gate.weight", RowMatrix<float>::Zero(2, 2));
  EXPECT_THROW(moe::io::load_layer<float>(SafetensorsFile::from_bytes(bare.bytes())), moe::io_error);
  // A file whose config does not fit its tensors.
  auto wrong = moe::io::layer_writer(layer);
  wrong.metadata("experts.d_ff", "4");
  EXPECT_THROW(moe::io::load_layer<float>(SafetensorsFile::from_bytes(wrong.bytes())), moe::io_error);
}

}  // namespace
