// Checkpoints and bf16 expert weights: a BF16 file loads into a bf16 layer with exactly the file's
// values (bf16 → fp32 → bf16 is exact), an F32 file is rounded to nearest even, and moe's own layer
// file saves and reloads a bf16 layer with the same output bits.
#include <moe/io/checkpoint.hpp>
#include <moe/io/layer_file.hpp>
#include <moe/io/safetensors_writer.hpp>

#include "support/bf16.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <string>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;
using moe::io::CheckpointFormat;
using moe::io::Dtype;
using moe::io::SafetensorsFile;

constexpr Index kE = 4, kD = 8, kF = 6;
const std::string kPrefix = "model.layers.0.block_sparse_moe.";

// A Mixtral layer whose expert tensors are stored as `dtype` (the router as F32).
SafetensorsFile mixtral_file(Dtype dtype) {
  moe::io::SafetensorsWriter w;
  w.add(kPrefix + "gate.weight", moe::test::random_matrix<float>(kE, kD, 1));
  for (Index e = 0; e < kE; ++e) {
    const std::string head = kPrefix + "experts." + std::to_string(e) + ".";
    w.add(head + "w1.weight", moe::test::random_matrix<float>(kF, kD, 10 + 3 * std::uint64_t(e)), dtype);
    w.add(head + "w3.weight", moe::test::random_matrix<float>(kF, kD, 11 + 3 * std::uint64_t(e)), dtype);
    w.add(head + "w2.weight", moe::test::random_matrix<float>(kD, kF, 12 + 3 * std::uint64_t(e)), dtype);
  }
  return SafetensorsFile::from_bytes(w.bytes(), "mixtral.safetensors");
}

TEST(Bf16Checkpoint, ABf16FileLoadsWithItsValuesAndAnF32FileIsRounded) {
  const auto bf16_file = mixtral_file(Dtype::BF16), f32_file = mixtral_file(Dtype::F32);
  auto from_bf16 = moe::io::load_checkpoint_layer<float, moe::Bf16>(bf16_file, CheckpointFormat::mixtral, kPrefix);
  auto from_f32 = moe::io::load_checkpoint_layer<float, moe::Bf16>(f32_file, CheckpointFormat::mixtral, kPrefix);
  const auto file_values = [](const SafetensorsFile& f, const std::string& name) { return f.read<float>(name); };
  for (Index e = 0; e < kE; ++e) {
    const std::string w1 = kPrefix + "experts." + std::to_string(e) + ".w1.weight";
    EXPECT_EQ(RowMatrix<float>(from_bf16.experts().w1()[e]), file_values(bf16_file, w1)) << "exactly the file's";
    EXPECT_EQ(file_values(bf16_file, w1), moe::test::bf16_rounded(file_values(f32_file, w1))) << "the writer rounds to even";
  }
  // The F32 file's layer keeps fp32 master weights; its kernels multiply them rounded to bf16, as
  // the BF16 file's layer multiplies its own values: the same outputs.
  const RowMatrix<float> x = moe::test::random_matrix<float>(9, kD, 2);
  RowMatrix<float> y_bf16(9, kD), y_f32(9, kD);
  from_bf16.forward(x, y_bf16);
  from_f32.forward(x, y_f32);
  EXPECT_EQ(y_bf16, y_f32);
  EXPECT_EQ(from_bf16.kernels().substr(0, 4), "bf16");
}

// expert_dtype reads the dtype of the layer's expert weights (what moe-run picks --dtype by), and
// names a missing layer as load_checkpoint_layer does.
TEST(Bf16Checkpoint, ExpertDtypeIsTheFilesDtypeForTheExperts) {
  EXPECT_EQ(moe::io::expert_dtype(mixtral_file(Dtype::BF16), CheckpointFormat::mixtral, kPrefix), Dtype::BF16);
  EXPECT_EQ(moe::io::expert_dtype(mixtral_file(Dtype::F32), CheckpointFormat::mixtral, kPrefix), Dtype::F32);
  try {
    moe::io::expert_dtype(mixtral_file(Dtype::BF16), CheckpointFormat::qwen2_moe, kPrefix);
    FAIL() << "no io_error";
  } catch (const moe::io_error& e) {
    EXPECT_NE(std::string(e.what()).find("experts.0.gate_proj.weight"), std::string::npos) << e.what();
  }
}

TEST(Bf16Checkpoint, TheLayerFileSavesAndReloadsABf16LayerBitForBit) {
  auto layer = moe::io::load_checkpoint_layer<float, moe::Bf16>(mixtral_file(Dtype::F32), CheckpointFormat::mixtral,
                                                               kPrefix);
  const auto bytes = moe::io::layer_writer(layer).bytes();
  auto copy = moe::io::load_layer<float, moe::Bf16>(SafetensorsFile::from_bytes(bytes, "layer.safetensors"));
  const RowMatrix<float> x = moe::test::random_matrix<float>(13, kD, 3);
  RowMatrix<float> y(13, kD), y_copy(13, kD);
  layer.forward(x, y);
  copy.forward(x, y_copy);
  EXPECT_EQ(y, y_copy);
}

}  // namespace MOE_TEST_FILE_ID
