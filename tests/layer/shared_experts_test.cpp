// SharedExperts::forward_add against the per-token reference, plain and gated, across the row
// tiles of 128 and thread counts; and their part in a SparseMoE's output.
#include "layer/layer_cases.hpp"
#include "support/compare.hpp"
#include "support/reference_layer.hpp"

#include <gtest/gtest.h>

#include <cmath>

namespace moe {
namespace MOE_TEST_FILE_ID {

using test::random_matrix;
using test::reference_shared_row;
using namespace test::cases;

template <class S>
using Shared = SharedExperts<SwiGluExpert<S>>;

template <class S>
Shared<S> make_shared(Index num_experts, bool gated, std::uint64_t gate_seed = 51) {
  return Shared<S>(SwiGluExpert<S>(experts_config(num_experts, false, 52)), gated, gate_seed);
}

// y0 + g ⊙ Σ_s shared_s(x), row by row in double.
template <class S>
RowMatrix<double> reference_add(const Shared<S>& shared, const RowMatrix<S>& x, const RowMatrix<S>& y0) {
  RowMatrix<double> y = y0.template cast<double>();
  for (Index t = 0; t < x.rows(); ++t) y.row(t) += reference_shared_row(shared, x.row(t));
  return y;
}

template <class S>
class SharedExpertsTest : public ::testing::Test {};
TYPED_TEST_SUITE(SharedExpertsTest, test::Scalars);

TYPED_TEST(SharedExpertsTest, PlainAddsTheSumOfAllSharedExperts) {
  using S = TypeParam;
  auto shared = make_shared<S>(2, /*gated=*/false);
  EXPECT_FALSE(shared.gated());
  EXPECT_EQ(shared.gate_weight().size(), 0);
  EXPECT_EQ(shared.num_experts(), 2);
  for (const Index T : {kTokens, kManyTokens}) {
    const RowMatrix<S> x = random_matrix<S>(T, kDModel, 4001 + T);
    const RowMatrix<S> y0 = random_matrix<S>(T, kDModel, 4002 + T);
    RowMatrix<S> y = y0;
    shared.forward_add(x, y, 1);
    const RowMatrix<double> expected = reference_add(shared, x, y0);
    MOE_EXPECT_CLOSE(S, y, expected) << " (T = " << T << ")";
    // The sum of both experts, not just the first: the increment is far from expert 0 alone.
    Eigen::RowVectorXd first_only = test::reference_expert_row(shared.experts(), 0, x.row(0));
    EXPECT_GT(test::normalised_error((y.row(0) - y0.row(0)).eval(), first_only), 1e-3);
  }
}

TYPED_TEST(SharedExpertsTest, GatedScalesBySigmoidOfTheGate) {
  using S = TypeParam;
  auto shared = make_shared<S>(1, /*gated=*/true);
  EXPECT_TRUE(shared.gated());
  ASSERT_EQ(shared.gate_weight().rows(), 1);
  ASSERT_EQ(shared.gate_weight().cols(), kDModel);
  const double bound = 1.0 / std::sqrt(double(kDModel));  // torch.nn.Linear(d_model, 1) init
  EXPECT_GT(shared.gate_weight().squaredNorm(), 0);
  EXPECT_LE(shared.gate_weight().cwiseAbs().maxCoeff(), S(bound));
  for (const Index T : {kTokens, kManyTokens}) {
    const RowMatrix<S> x = random_matrix<S>(T, kDModel, 4003 + T);
    RowMatrix<S> y = RowMatrix<S>::Zero(T, kDModel);
    shared.forward_add(x, y, 2);
    MOE_EXPECT_CLOSE(S, y, reference_add(shared, x, RowMatrix<S>::Zero(T, kDModel).eval())) << " (T = " << T << ")";
    // The gate matters: ungated output is far from y.
    const auto ungated = make_shared<S>(1, /*gated=*/false);
    EXPECT_GT(test::normalised_error(y, reference_add(ungated, x, RowMatrix<S>::Zero(T, kDModel).eval())), 1e-3);
  }
}

TYPED_TEST(SharedExpertsTest, GateWeightIsSeeded) {
  using S = TypeParam;
  EXPECT_TRUE(same_bits(make_shared<S>(1, true, 5).gate_weight(), make_shared<S>(1, true, 5).gate_weight()));
  EXPECT_FALSE(same_bits(make_shared<S>(1, true, 5).gate_weight(), make_shared<S>(1, true, 6).gate_weight()));
}

TYPED_TEST(SharedExpertsTest, AccumulatesIntoY) {
  using S = TypeParam;
  auto shared = make_shared<S>(2, /*gated=*/true);
  const RowMatrix<S> x = random_matrix<S>(kTokens, kDModel, 4004);
  RowMatrix<S> once = RowMatrix<S>::Zero(kTokens, kDModel), twice = once;
  shared.forward_add(x, once, 1);
  shared.forward_add(x, twice, 1);
  shared.forward_add(x, twice, 1);
  MOE_EXPECT_CLOSE(S, twice, (2 * once).eval());
}

TYPED_TEST(SharedExpertsTest, TilesAndThreadsDoNotChangeBits) {
  using S = TypeParam;
  auto shared = make_shared<S>(2, /*gated=*/true);
  const RowMatrix<S> big = random_matrix<S>(kManyTokens + 1, kDModel, 4005);
  const RowMatrix<S> x = big.bottomRows(kManyTokens);  // tiles 0–127, 128–255, 256–299
  const RowMatrix<S> y0 = random_matrix<S>(kManyTokens, kDModel, 4006);
  RowMatrix<S> y_one = y0;
  shared.forward_add(x, y_one, 1);
  for (const int threads : {2, 3, 8}) {
    RowMatrix<S> y = y0;
    shared.forward_add(x, y, threads);
    EXPECT_TRUE(same_bits(y, y_one)) << threads << " threads";
  }
  RowMatrix<S> y_block = y0;  // a row block starting one row into a bigger matrix
  shared.forward_add(big.bottomRows(kManyTokens), y_block, 2);
  EXPECT_TRUE(same_bits(y_block, y_one));
  // Each row depends only on its own token: the last tile alone gives the same rows.
  RowMatrix<S> tail = y0.bottomRows(kManyTokens - 256);
  shared.forward_add(x.bottomRows(kManyTokens - 256), tail, 1);
  MOE_EXPECT_CLOSE(S, tail, y_one.bottomRows(kManyTokens - 256));
}

TYPED_TEST(SharedExpertsTest, EmptyBatch) {
  using S = TypeParam;
  auto shared = make_shared<S>(2, /*gated=*/true);
  const RowMatrix<S> x(0, kDModel);
  RowMatrix<S> y(0, kDModel);
  EXPECT_NO_THROW(shared.forward_add(x, y, 2));
  EXPECT_EQ(y.size(), 0);
}

TYPED_TEST(SharedExpertsTest, LayerAddsThemToTheRoutedOutput) {
  using S = TypeParam;
  auto layer = qwen2_layer<S>();
  MixtralLayer<S> routed_only(layer.gate(), layer.experts());  // same gate and experts, no shared
  ASSERT_EQ(routed_only.shared(), nullptr);
  for (const Index T : {kTokens, kManyTokens}) {
    const RowMatrix<S> x = random_matrix<S>(T, kDModel, 4007 + T);
    RowMatrix<S> y(T, kDModel), y_routed(T, kDModel);
    layer.forward(x, y);
    routed_only.forward(x, y_routed);
    expect_same_plan(layer.last_plan(), routed_only.last_plan());
    RowMatrix<double> shared_part(T, kDModel);
    for (Index t = 0; t < T; ++t) shared_part.row(t) = reference_shared_row(*layer.shared(), x.row(t));
    // Compare against the whole of y, so the tolerance is relative to what the layer computes.
    MOE_EXPECT_CLOSE(S, y, (y_routed.template cast<double>() + shared_part).eval()) << " (T = " << T << ")";
    EXPECT_GT(shared_part.squaredNorm(), 1e-3 * y.template cast<double>().squaredNorm());
  }
}

}  // namespace
}  // namespace moe
