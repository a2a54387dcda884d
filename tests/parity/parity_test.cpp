// Parity with PyTorch: the layers of tests/parity/fixtures were computed by make_fixtures.py from
// the Hugging Face semantics (in float64 from float32 weights and inputs); loading the same
// safetensors through io::load_checkpoint_layer must give the same outputs and gradients.
//   float:  max |ours − reference| ≤ 1e-5 · max |reference|
//   double: max |ours − reference| ≤ 1e-7 · max |reference|: the references are stored as float32,
//           whose rounding (≤ 2^-24 relative, 6e-8) is all that a double layer can differ by.
#include <moe/io/checkpoint.hpp>
#include <moe/io/npy.hpp>
#include <moe/moe.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#ifndef MOE_PARITY_FIXTURES
#define MOE_PARITY_FIXTURES ""
#endif

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;
using moe::io::CheckpointFormat;
using moe::io::CheckpointOptions;

std::filesystem::path fixture(const std::string& name) {
  const std::filesystem::path dir = std::string(MOE_PARITY_FIXTURES).empty()
                                        ? std::filesystem::path(__FILE__).parent_path() / "fixtures"
                                        : std::filesystem::path(MOE_PARITY_FIXTURES);
  return dir / name;
}

template <class S>
RowMatrix<S> npy(const std::string& name) {
  return moe::io::NpyFile::open(fixture(name)).read<S>();
}

// max |a − b| / max |b|
template <class A, class B>
double relative_max_error(const A& a, const B& b) {
  const auto ref = b.template cast<double>();
  return (a.template cast<double>() - ref).cwiseAbs().maxCoeff() / ref.cwiseAbs().maxCoeff();
}

template <class S>
constexpr double bound() {
  return sizeof(S) == sizeof(float) ? 1e-5 : 1e-7;
}

template <class S>
class Parity : public ::testing::Test {};
TYPED_TEST_SUITE(Parity, moe::test::Scalars);

template <class S>
double forward_error(const std::string& stem, CheckpointFormat format, const std::string& prefix,
                     const CheckpointOptions& options = {}, const std::string& expected = "") {
  const auto file = moe::io::SafetensorsFile::open(fixture(stem + ".safetensors"));
  auto layer = moe::io::load_checkpoint_layer<S>(file, format, prefix, options);
  const RowMatrix<S> x = npy<S>(stem + "_x.npy");
  const RowMatrix<S> reference = npy<S>(expected.empty() ? stem + "_y.npy" : expected);
  RowMatrix<S> y(x.rows(), x.cols());
  layer.forward(x, y);
  return relative_max_error(y, reference);
}

TYPED_TEST(Parity, MixtralForward) {
  const double error = forward_error<TypeParam>("mixtral", CheckpointFormat::mixtral, "model.layers.0.block_sparse_moe.");
  EXPECT_LE(error, bound<TypeParam>());
  std::cout << "  mixtral forward: max abs error / max |ref| = " << error << "\n";
}

// The Mixtral layer with bf16 expert weights, on every ISA path, against the float64 reference on
// the same rounded weights: no less accurate than PyTorch's bf16 module (HF's block after
// .to(torch.bfloat16)) by either measure.
TEST(ParityBf16, MixtralIsNoLessAccurateThanPyTorchBf16) {
  const auto file = moe::io::SafetensorsFile::open(fixture("mixtral.safetensors"));
  auto f32 = moe::io::load_checkpoint_layer<float>(file, CheckpointFormat::mixtral, "model.layers.0.block_sparse_moe.");
  const auto& from = f32.experts();
  moe::SwiGluExpert<float, moe::Bf16> experts({.num_experts = from.num_experts(), .d_model = from.d_model(), .d_ff = from.d_ff()});
  experts.w1().all() = from.w1().all();
  experts.w2().all() = from.w2().all();
  experts.w3().all() = from.w3().all();
  moe::SparseMoE<moe::SwiGluExpert<float, moe::Bf16>, moe::TopKGate<float>> layer(f32.gate(), std::move(experts));
  const RowMatrix<float> x = npy<float>("mixtral_x.npy");
  const RowMatrix<double> reference = npy<double>("mixtral_bf16_reference_y.npy"), torch = npy<double>("mixtral_bf16_torch_y.npy");
  const auto l2 = [&](const RowMatrix<double>& y) { return (y - reference).norm() / reference.norm(); };
  const double torch_l2 = l2(torch), torch_max = relative_max_error(torch, reference);
  for (const moe::Isa isa : moe::kernels::isa_paths<moe::Bf16>()) {
    const moe::ScopedIsaCap cap(isa);
    RowMatrix<float> y(x.rows(), x.cols());
    layer.forward(x, y);
    const RowMatrix<double> ours = y.cast<double>();
    std::cout << "  mixtral bf16 on " << moe::isa_name(isa) << ": ‖y − ref‖/‖ref‖ = " << l2(ours)
              << " (PyTorch bf16 " << torch_l2 << "), max error / max |ref| = " << relative_max_error(ours, reference)
              << " (PyTorch bf16 " << torch_max << ")\n";
    EXPECT_LE(l2(ours), torch_l2) << moe::isa_name(isa);
    EXPECT_LE(relative_max_error(ours, reference), torch_max) << moe::isa_name(isa);
  }
}

TYPED_TEST(Parity, MixtralSecondLayerByPrefix) {
  const double error = forward_error<TypeParam>("mixtral", CheckpointFormat::mixtral, "model.layers.1.block_sparse_moe.",
                                                {}, "mixtral_layer1_y.npy");
  EXPECT_LE(error, bound<TypeParam>());
}

TYPED_TEST(Parity, Qwen2MoeForward) {
  const double error = forward_error<TypeParam>("qwen2_moe", CheckpointFormat::qwen2_moe, "model.layers.0.mlp.");
  EXPECT_LE(error, bound<TypeParam>());
  std::cout << "  qwen2-moe forward: max abs error / max |ref| = " << error << "\n";
}

TYPED_TEST(Parity, DeepSeekV3Forward) {
  const double error = forward_error<TypeParam>("deepseek_v3", CheckpointFormat::deepseek_v3, "model.layers.0.mlp.",
                                                {.top_k = 3, .n_group = 4, .topk_group = 2});
  EXPECT_LE(error, bound<TypeParam>());
  std::cout << "  deepseek-v3 forward: max abs error / max |ref| = " << error << "\n";
}

// L = Σ y ⊙ c: d_x from backward(d_y = c), and every weight gradient mapped back to its HF name.
TYPED_TEST(Parity, MixtralGradients) {
  using S = TypeParam;
  const std::string prefix = "model.layers.0.block_sparse_moe.";
  const auto file = moe::io::SafetensorsFile::open(fixture("mixtral.safetensors"));
  const auto grads_file = moe::io::SafetensorsFile::open(fixture("mixtral_grads.safetensors"));
  auto layer = moe::io::load_checkpoint_layer<S>(file, CheckpointFormat::mixtral, prefix);
  const RowMatrix<S> x = npy<S>("mixtral_x.npy"), c = npy<S>("mixtral_c.npy");
  RowMatrix<S> y(x.rows(), x.cols()), d_x(x.rows(), x.cols());
  typename moe::io::CheckpointLayer<S>::Cache cache;
  auto grads = layer.make_gradients();
  layer.forward(x, y, cache);
  layer.backward(cache, c, d_x, grads);

  const double dx_error = relative_max_error(d_x, npy<S>("mixtral_dx.npy"));
  EXPECT_LE(dx_error, bound<S>());
  double worst = dx_error;
  Index compared = 0;
  const Index E = layer.num_experts(), f = layer.experts().d_ff();
  for (const auto& g : grads.parameters()) {
    if (g.name == "gate.weight") {
      const double error = relative_max_error(g.matrix(), grads_file.read<S>("grad." + prefix + "gate.weight"));
      EXPECT_LE(error, bound<S>()) << g.name;
      worst = std::max(worst, error);
      ++compared;
      continue;
    }
    ASSERT_TRUE(g.name == "experts.w1" || g.name == "experts.w2" || g.name == "experts.w3") << g.name;
    const std::string w = g.name.substr(8);
    const Index rows = g.rows / E;
    ASSERT_EQ(rows, w == "w2" ? layer.d_model() : f);
    for (Index e = 0; e < E; ++e) {
      const std::string hf = "grad." + prefix + "experts." + std::to_string(e) + "." + w + ".weight";
      const double error = relative_max_error(g.matrix().middleRows(e * rows, rows), grads_file.read<S>(hf));
      EXPECT_LE(error, bound<S>()) << hf;
      worst = std::max(worst, error);
      ++compared;
    }
  }
  EXPECT_EQ(compared, 1 + 3 * E);
  EXPECT_EQ(static_cast<Index>(grads_file.size()), compared);
  std::cout << "  mixtral gradients: worst max abs error / max |ref| over d_x and " << compared
            << " tensors = " << worst << "\n";
}

}  // namespace
