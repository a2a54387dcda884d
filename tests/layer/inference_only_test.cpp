// release_master_weights(): a layer that serves inference only holds just the packed copies of its
// experts' weights (a bf16 layer: no fp32 copy), gives the same bits as before, and refuses
// whatever needs the master weights with state_error.
#include "support/compare.hpp"

#include <moe/io/layer_file.hpp>
#include <moe/moe.hpp>

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <utility>

namespace moe {
namespace MOE_TEST_FILE_ID {

constexpr Index kD = 40, kFf = 72, kE = 6, kT = 37;

template <class X>
auto layer_of(bool shared) {
  using Layer = SparseMoE<X, TopKGate<float>>;
  TopKGate<float> gate({.d_model = kD, .num_experts = kE, .top_k = 2, .seed = 1});
  X experts({.num_experts = kE, .d_model = kD, .d_ff = kFf, .seed = 2});
  if (!shared) return Layer(std::move(gate), std::move(experts));
  return Layer(std::move(gate), std::move(experts),
               SharedExperts<X>(X({.num_experts = 1, .d_model = kD, .d_ff = kFf, .seed = 3}), /*gated=*/true, 4));
}

bool same_bits(const RowMatrix<float>& a, const RowMatrix<float>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}

template <class Statement>
void expect_state_error(Statement&& statement, const char* who) {
  try {
    statement();
    ADD_FAILURE() << who << " did not throw";
  } catch (const state_error& e) {
    EXPECT_NE(std::string(e.what()).find(who), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("master weights were released"), std::string::npos) << e.what();
  }
}

TEST(InferenceOnly, Bf16LayerKeepsOnlyItsBf16WeightsAndItsBits) {
  using X = SwiGluExpert<float, Bf16>;
  auto layer = layer_of<X>(/*shared=*/true);
  const RowMatrix<float> x = test::random_matrix<float>(kT, kD, 5);
  RowMatrix<float> before(kT, kD), after(kT, kD), concurrent(kT, kD);
  layer.prepack();
  layer.forward(x, before);
  const std::size_t packed_and_masters = std::as_const(layer).experts().weight_bytes();

  layer.release_master_weights();
  layer.forward(x, after);
  decltype(layer)::Workspace work;
  std::as_const(layer).forward(x, concurrent, work);
  EXPECT_TRUE(same_bits(after, before));
  EXPECT_TRUE(same_bits(concurrent, before));

  // Each expert's bf16 weights in whole panels of 32 columns: up panels hold 16 hidden units of w1
  // and of w3, down panels 32 outputs of w2.
  const std::size_t up = std::size_t(kD) * ((kFf + 15) / 16 * 32), down = std::size_t(kFf) * ((kD + 31) / 32 * 32);
  EXPECT_EQ(std::as_const(layer).experts().weight_bytes(), kE * 2 * (up + down));
  EXPECT_EQ(packed_and_masters, kE * 2 * (up + down) + kE * 3 * std::size_t(kD * kFf) * sizeof(float));
}

TEST(InferenceOnly, WhatNeedsTheMasterWeightsThrowsStateError) {
  using X = SwiGluExpert<float, Bf16>;
  auto layer = layer_of<X>(/*shared=*/true);
  layer.release_master_weights();
  const RowMatrix<float> x = test::random_matrix<float>(kT, kD, 6);
  RowMatrix<float> y(kT, kD);
  decltype(layer)::Cache cache;
  expect_state_error([&] { layer.forward(x, y, cache); }, "weights_changed");
  expect_state_error([&] { layer.parameters(); }, "weights_changed");
  expect_state_error([&] { layer.weights_changed(); }, "weights_changed");
  expect_state_error([&] { (void)std::as_const(layer).experts().w1(); }, "GatedExpert::w1");
  expect_state_error([&] { (void)std::as_const(layer).shared()->experts().w2(); }, "GatedExpert::w2");
  std::vector<float> scratch(std::size_t(layer.experts().scratch_size(kT)));
  expect_state_error([&] { std::as_const(layer).experts().forward(0, x, y, scratch); }, "GatedExpert::forward");
  const auto path = std::filesystem::path(::testing::TempDir()) / "moe_inference_only.safetensors";
  expect_state_error([&] { io::save_layer(layer, path); }, "GatedExpert::w");
  EXPECT_FALSE(std::filesystem::exists(path));
  layer.forward(x, y);  // inference still runs
}

TEST(InferenceOnly, FfnExpertsToo) {
  using X = FfnExpert<float, Gelu>;
  auto layer = layer_of<X>(/*shared=*/false);
  const RowMatrix<float> x = test::random_matrix<float>(kT, kD, 7);
  RowMatrix<float> before(kT, kD), after(kT, kD);
  layer.forward(x, before);
  layer.release_master_weights();
  layer.forward(x, after);
  EXPECT_TRUE(same_bits(after, before));
  expect_state_error([&] { (void)std::as_const(layer).experts().w1(); }, "FfnExpert::w1");
  EXPECT_EQ(std::as_const(layer).experts().weight_bytes(),
            sizeof(float) * kE * (std::size_t(kD) * ((kFf + 31) / 32 * 32) + std::size_t(kFf) * ((kD + 31) / 32 * 32)));
}

}  // namespace MOE_TEST_FILE_ID
}  // namespace moe
