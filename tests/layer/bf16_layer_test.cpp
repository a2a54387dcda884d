// A layer with bf16 expert weights on every ISA path: its error against a double-precision
// reference on the same bf16-rounded weights (the figures of the README's accuracy table), the
// same bits on 1 and 2 threads and on avx2 and avx512, and a training step.
#include <moe/moe.hpp>

#include "support/bf16.hpp"
#include "support/compare.hpp"
#include "support/reference_layer.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <type_traits>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::Isa;
using moe::RowMatrix;

using Layer = moe::SparseMoE<moe::SwiGluExpert<float, moe::Bf16>, moe::TopKGate<float>>;
constexpr Index kT = 150, kD = 96, kFf = 160, kE = 8;

Layer make_layer(int threads) {
  Layer layer(moe::TopKGate<float>({.d_model = kD, .num_experts = kE, .top_k = 2, .seed = 70}),
              moe::SwiGluExpert<float, moe::Bf16>({.num_experts = kE, .d_model = kD, .d_ff = kFf, .seed = 71}),
              moe::SharedExperts<moe::SwiGluExpert<float, moe::Bf16>>(
                  moe::SwiGluExpert<float, moe::Bf16>({.num_experts = 1, .d_model = kD, .d_ff = kFf, .seed = 72})));
  layer.set_num_threads(threads);
  return layer;
}

// The experts in double with the weights rounded to bf16.
moe::SwiGluExpert<double> rounded(const moe::SwiGluExpert<float, moe::Bf16>& from) {
  moe::SwiGluExpert<double> to({.num_experts = from.num_experts(), .d_model = kD, .d_ff = kFf});
  to.w1().all() = moe::test::bf16_rounded(from.w1().all()).cast<double>();
  to.w2().all() = moe::test::bf16_rounded(from.w2().all()).cast<double>();
  to.w3().all() = moe::test::bf16_rounded(from.w3().all()).cast<double>();
  return to;
}

// y of the layer's last forward in double, from its plan, with the experts' weights rounded to bf16.
RowMatrix<double> rounded_reference(const Layer& layer, const RowMatrix<float>& x) {
  const RowMatrix<double> xd = x.cast<double>();
  RowMatrix<double> y = moe::test::reference_routed(layer.last_plan(), rounded(layer.experts()), xd);
  const moe::SharedExperts<moe::SwiGluExpert<double>> shared(rounded(layer.shared()->experts()));
  for (Index t = 0; t < kT; ++t) y.row(t) += moe::test::reference_shared_row(shared, xd.row(t));
  return y;
}

TEST(Bf16Layer, ErrorAgainstTheRoundedReferenceIsWithinBoundsOnEveryPath) {
  const RowMatrix<float> x = moe::test::random_matrix<float>(kT, kD, 73);
  std::map<Isa, RowMatrix<float>> by_isa;
  for (const Isa isa : moe::kernels::isa_paths<moe::Bf16>()) {
    SCOPED_TRACE(moe::isa_name(isa));
    const moe::ScopedIsaCap cap(isa);
    Layer layer = make_layer(1), two = make_layer(2);
    RowMatrix<float> y(kT, kD), y_two(kT, kD);
    layer.forward(x, y);
    two.forward(x, y_two);
    EXPECT_EQ(y, y_two) << "1 and 2 threads";
    const RowMatrix<double> y_ref = rounded_reference(layer, x);
    const double relative = (y.cast<double>() - y_ref).norm() / y_ref.norm();
    const double max_abs = (y.cast<double>() - y_ref).cwiseAbs().maxCoeff() / y_ref.cwiseAbs().maxCoeff();
    std::printf("bf16 on %s: ‖y − y_ref‖/‖y_ref‖ = %.2e, max|y − y_ref| / max|y_ref| = %.2e\n",
                moe::isa_name(isa).data(), relative, max_abs);
    EXPECT_LT(relative, 4e-3);  // the activations are rounded to bf16 too: a few 2⁻⁹
    EXPECT_LT(max_abs, 1e-2);
    by_isa[isa] = y;
  }
  if (by_isa.count(Isa::avx2) && by_isa.count(Isa::avx512)) {
    EXPECT_EQ(by_isa[Isa::avx2], by_isa[Isa::avx512]);
  }
}

// Training forward + backward (the products of the forward on bf16 copies, gradients in fp32):
// the same bits on 1 and 2 threads, and the inference forward's output.
TEST(Bf16Layer, TrainingStepIsThreadIndependent) {
  const RowMatrix<float> x = moe::test::random_matrix<float>(kT, kD, 74), d_y = moe::test::random_matrix<float>(kT, kD, 75);
  const auto step = [&](int threads) {
    Layer layer = make_layer(threads);
    Layer::Cache cache;
    RowMatrix<float> y(kT, kD), y_inference(kT, kD), d_x(kT, kD);
    layer.forward(x, y_inference);
    layer.forward(x, y, cache);
    EXPECT_EQ(y, y_inference);
    auto grads = layer.make_gradients();
    layer.backward(cache, d_y, d_x, grads);
    std::vector<float> bits(d_x.data(), d_x.data() + d_x.size());
    for (const auto& g : grads.parameters()) bits.insert(bits.end(), g.values().begin(), g.values().end());
    return bits;
  };
  EXPECT_EQ(step(1), step(2));
}

// Mixed precision against fp32: the same master weights, one training step each; y, d_x and every
// gradient within bf16's rounding of the fp32 layer's (relative L2 per tensor).
TEST(Bf16Layer, MixedPrecisionStepIsWithinBf16OfTheFp32Step) {
  using Fp32 = moe::SparseMoE<moe::SwiGluExpert<float>, moe::TopKGate<float>>;
  Fp32 fp32(moe::TopKGate<float>({.d_model = kD, .num_experts = kE, .top_k = 2, .seed = 70}),
            moe::SwiGluExpert<float>({.num_experts = kE, .d_model = kD, .d_ff = kFf, .seed = 71}),
            moe::SharedExperts<moe::SwiGluExpert<float>>(
                moe::SwiGluExpert<float>({.num_experts = 1, .d_model = kD, .d_ff = kFf, .seed = 72})));
  Layer bf16 = make_layer(1);
  const RowMatrix<float> x = moe::test::random_matrix<float>(kT, kD, 76), d_y = moe::test::random_matrix<float>(kT, kD, 77);
  const auto step = [&](auto& layer) {
    typename std::remove_reference_t<decltype(layer)>::Cache cache;
    RowMatrix<float> y(kT, kD), d_x(kT, kD);
    layer.forward(x, y, cache);
    auto grads = layer.make_gradients();
    layer.backward(cache, d_y, d_x, grads);
    std::vector<RowMatrix<float>> out{y, d_x};
    for (const auto& g : grads.parameters()) out.emplace_back(g.matrix());
    return out;
  };
  const auto ours = step(bf16), reference = step(fp32);
  ASSERT_EQ(ours.size(), reference.size());
  double worst = 0;
  for (std::size_t i = 0; i < ours.size(); ++i) {
    const double error = (ours[i] - reference[i]).norm() / reference[i].norm();
    EXPECT_LT(error, 1e-2) << "tensor " << i << " (0: y, 1: d_x, then the parameters in order)";
    worst = std::max(worst, error);
  }
  std::printf("mixed precision vs fp32, one step: worst ‖ours − fp32‖/‖fp32‖ over y, d_x and the gradients = %.2e\n", worst);
}

}  // namespace MOE_TEST_FILE_ID
