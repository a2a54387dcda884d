// SparseMoE::backward against central finite differences in double (Grad tests), for the layer
// compositions of the issue, with auxiliary losses; and forward+backward bit-identical across
// thread counts.
//
// The checked loss is L = ⟨y, c⟩ + Σ aux losses for a seeded c, so backward gets d_y = c. Every
// finite-difference step re-runs forward; the check fails if a step changes the routing (expert
// ids or drops), so the inputs are chosen with a clear gap between the k-th and (k+1)-th choice.
#include <moe/loss/importance_load.hpp>
#include <moe/loss/load_balancing.hpp>
#include <moe/loss/mixture.hpp>
#include <moe/loss/router_z_loss.hpp>
#include <moe/loss/sequence_balance.hpp>
#include <moe/moe.hpp>
#include <moe/testing/gradient_check.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <utility>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::Mode;
using moe::RowMatrix;

constexpr Index kTokens = 8, kModel = 6, kHidden = 10, kExperts = 4;

moe::ExpertConfig experts(Index n = kExperts, std::uint64_t seed = 21) {
  return {.num_experts = n, .d_model = kModel, .d_ff = kHidden, .seed = seed};
}
moe::TopKGateConfig gate(Index top_k = 2) { return {.d_model = kModel, .num_experts = kExperts, .top_k = top_k, .seed = 22}; }

// Checks d_x and every parameter gradient of layer for L = ⟨y, c⟩ + aux.
template <class Layer>
void expect_layer_gradients(Layer& layer, std::uint64_t seed = 23) {
  RowMatrix<double> x = moe::test::random_matrix<double>(kTokens, kModel, seed);
  const RowMatrix<double> c = moe::test::random_matrix<double>(kTokens, kModel, seed + 1);
  const auto reseed = [&] {
    if constexpr (requires { layer.gate().reseed(0); }) layer.gate().reseed(seed);
  };
  typename Layer::Cache cache;
  RowMatrix<double> y(kTokens, kModel), d_x(kTokens, kModel);
  reseed();
  layer.forward(x, y, cache);
  const moe::IndexMatrix chosen = layer.last_plan().expert;
  const auto dropped = layer.last_plan().dropped;
  auto grads = layer.make_gradients();
  layer.backward(cache, c, d_x, grads);

  moe::ParameterList<double> params = layer.parameters(), analytic = grads.parameters();
  params.push_back(moe::view("x", x));
  analytic.push_back(moe::view("x", d_x));
  bool routing_changed = false;
  const auto loss = [&] {
    typename Layer::Cache step_cache;
    RowMatrix<double> step_y(kTokens, kModel);
    reseed();
    const double aux = layer.forward(x, step_y, step_cache);
    routing_changed |= layer.last_plan().expert != chosen || layer.last_plan().dropped != dropped;
    return (step_y.array() * c.array()).sum() + aux;
  };
  const moe::testing::GradCheckResult result = moe::testing::check_gradients(loss, params, analytic);
  EXPECT_TRUE(result.ok) << result.log;
  EXPECT_FALSE(routing_changed) << "a finite-difference step changed the routing";
}

TEST(SparseMoEGrad, MixtralWithLoadBalancingAndZLoss) {
  moe::SparseMoE<moe::SwiGluExpert<double>, moe::TopKGate<double>, moe::LoadBalancingLoss<double>,
                 moe::RouterZLoss<double>>
      layer(moe::TopKGate<double>(gate()), moe::SwiGluExpert<double>(experts()),
            moe::LoadBalancingLoss<double>({.coefficient = 0.3}), moe::RouterZLoss<double>({.coefficient = 0.2}));
  expect_layer_gradients(layer);
}

TEST(SparseMoEGrad, DeepSeekGroupsSharedExpertsSequenceBalance) {
  auto config = gate();
  config.scoring = moe::Scoring::sigmoid;
  config.selection_bias = true;
  config.n_group = 2;
  config.topk_group = 1;
  config.scale = 2.5;
  moe::SparseMoE<moe::GeGluExpert<double>, moe::TopKGate<double>, moe::SequenceBalanceLoss<double>> layer{
      moe::TopKGate<double>(config), moe::GeGluExpert<double>(experts()),
      moe::SharedExperts<moe::GeGluExpert<double>>(moe::GeGluExpert<double>(experts(2, 24))),
      moe::SequenceBalanceLoss<double>({.coefficient = 0.5, .sequence_length = 4})};
  layer.gate().selection_bias() << 0.1, -0.1, 0.05, 0.0;
  expect_layer_gradients(layer);
}

TEST(SparseMoEGrad, QwenUnnormalisedWithGatedSharedExpert) {
  auto config = gate();
  config.normalize = false;
  moe::SparseMoE<moe::SwiGluExpert<double>, moe::TopKGate<double>> layer{
      moe::TopKGate<double>(config), moe::SwiGluExpert<double>(experts()),
      moe::SharedExperts<moe::SwiGluExpert<double>>(moe::SwiGluExpert<double>(experts(1, 25)), /*gated=*/true, 26)};
  expect_layer_gradients(layer);
}

TEST(SparseMoEGrad, SwitchWithCapacityDrops) {
  auto config = gate(1);
  config.normalize = false;
  config.capacity = {.factor = 0.5};  // C = 1 of 8 tokens on 4 experts: most are dropped
  moe::SparseMoE<moe::ReluExpert<double>, moe::TopKGate<double>> layer{moe::TopKGate<double>(config),
                                                                      moe::ReluExpert<double>(experts())};
  expect_layer_gradients(layer);
  EXPECT_GT(layer.last_stats().dropped, 0);
}

TEST(SparseMoEGrad, NoisyTopKWithImportanceAndLoadLosses) {
  auto config = gate();
  config.scoring = moe::Scoring::softmax_selected;
  config.noisy = true;
  moe::SparseMoE<moe::SiluExpert<double>, moe::TopKGate<double>, moe::ImportanceLoadLoss<double>> layer{
      moe::TopKGate<double>(config), moe::SiluExpert<double>(experts()),
      moe::ImportanceLoadLoss<double>({.importance_coefficient = 0.5, .load_coefficient = 0.5})};
  layer.gate().noise_weight() = moe::test::random_matrix<double>(kExperts, kModel, 27);
  layer.set_mode(Mode::training);
  expect_layer_gradients(layer);
}

TEST(SparseMoEGrad, ExpertChoiceWithBiasedFfn) {
  moe::SparseMoE<moe::GeluExpert<double>, moe::ExpertChoiceGate<double>> layer{
      moe::ExpertChoiceGate<double>({.d_model = kModel, .num_experts = kExperts, .capacity_factor = 1.5}),
      moe::GeluExpert<double>({.num_experts = kExperts, .d_model = kModel, .d_ff = kHidden, .bias = true, .seed = 28})};
  expect_layer_gradients(layer);
}

TEST(SparseMoEGrad, GradientsAccumulateAndDxIsOverwritten) {
  moe::SparseMoE<moe::SwiGluExpert<double>, moe::TopKGate<double>> layer{moe::TopKGate<double>(gate()),
                                                                       moe::SwiGluExpert<double>(experts())};
  const RowMatrix<double> x = moe::test::random_matrix<double>(kTokens, kModel, 30);
  const RowMatrix<double> c = moe::test::random_matrix<double>(kTokens, kModel, 31);
  decltype(layer)::Cache cache;
  RowMatrix<double> y(kTokens, kModel), d_x = RowMatrix<double>::Constant(kTokens, kModel, 7.0), first(kTokens, kModel);
  layer.forward(x, y, cache);
  auto once = layer.make_gradients(), twice = layer.make_gradients();
  layer.backward(cache, c, first, once);
  layer.backward(cache, c, d_x, twice);
  layer.backward(cache, c, d_x, twice);
  EXPECT_EQ(d_x, first);
  const auto a = once.parameters(), b = twice.parameters();
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_LE(moe::test::normalised_error(b[i].matrix(), 2 * a[i].matrix()), 1e-28) << a[i].name;
}

// The Jacobs et al. 1991 losses through backward_experts(): finite differences of the loss itself.
TEST(SparseMoEGrad, MixtureLossesOfTheDenseGate) {
  for (const auto kind : {moe::MixtureLoss::cooperative, moe::MixtureLoss::competitive, moe::MixtureLoss::likelihood}) {
    moe::SparseMoE<moe::LinearExpert<double>, moe::DenseGate<double>> layer{
        moe::DenseGate<double>({.d_model = kModel, .num_experts = kExperts, .seed = 32}),
        moe::LinearExpert<double>({.num_experts = kExperts, .d_model = kModel, .bias = true, .seed = 33})};
    RowMatrix<double> x = moe::test::random_matrix<double>(kTokens, kModel, 34);
    const RowMatrix<double> target = moe::test::random_matrix<double>(kTokens, kModel, 35);
    decltype(layer)::Cache cache;
    RowMatrix<double> y(kTokens, kModel), d_x(kTokens, kModel);
    layer.forward(x, y, cache);
    RowMatrix<double> d_out(cache.experts.batch.num_rows(), kModel), d_weight(kTokens, kExperts);
    moe::mixture_loss<double>(kind, cache, target, d_out, d_weight);
    auto grads = layer.make_gradients();
    layer.backward_experts(cache, d_out, d_weight, d_x, grads);

    moe::ParameterList<double> params = layer.parameters(), analytic = grads.parameters();
    params.push_back(moe::view("x", x));
    analytic.push_back(moe::view("x", d_x));
    const auto loss = [&] {
      decltype(layer)::Cache step;
      RowMatrix<double> step_y(kTokens, kModel), o(step.experts.batch.num_rows(), kModel), w(kTokens, kExperts);
      layer.forward(x, step_y, step);
      o.resize(step.experts.batch.num_rows(), kModel);
      return moe::mixture_loss<double>(kind, step, target, o, w);
    };
    const auto result = moe::testing::check_gradients(loss, params, analytic);
    EXPECT_TRUE(result.ok) << int(kind) << "\n" << result.log;
  }
}

TEST(SparseMoEGrad, MixtureLossValuesMatchTheirDefinitions) {
  moe::SparseMoE<moe::LinearExpert<double>, moe::DenseGate<double>> layer{
      moe::DenseGate<double>({.d_model = kModel, .num_experts = kExperts, .seed = 36}),
      moe::LinearExpert<double>({.num_experts = kExperts, .d_model = kModel, .seed = 37})};
  const RowMatrix<double> x = moe::test::random_matrix<double>(kTokens, kModel, 38);
  const RowMatrix<double> target = moe::test::random_matrix<double>(kTokens, kModel, 39);
  decltype(layer)::Cache cache;
  RowMatrix<double> y(kTokens, kModel);
  layer.forward(x, y, cache);
  RowMatrix<double> d_out(cache.experts.batch.num_rows(), kModel), d_weight(kTokens, kExperts);
  double cooperative = 0, competitive = 0, likelihood = 0;
  for (Index t = 0; t < kTokens; ++t) {
    cooperative += (target.row(t) - y.row(t)).squaredNorm();
    double mixture = 0;
    for (Index e = 0; e < kExperts; ++e) {
      RowMatrix<double> o(1, kModel);
      layer.experts().forward(e, x.row(t), o);
      const double p = layer.last_plan().weight(t, e), error = (target.row(t) - o).squaredNorm();
      competitive += p * error;
      mixture += p * std::exp(-0.5 * error);
    }
    likelihood -= std::log(mixture);
  }
  EXPECT_NEAR(moe::mixture_loss<double>(moe::MixtureLoss::cooperative, cache, target, d_out, d_weight), cooperative / kTokens, 1e-12);
  EXPECT_NEAR(moe::mixture_loss<double>(moe::MixtureLoss::competitive, cache, target, d_out, d_weight), competitive / kTokens, 1e-12);
  EXPECT_NEAR(moe::mixture_loss<double>(moe::MixtureLoss::likelihood, cache, target, d_out, d_weight), likelihood / kTokens, 1e-12);
}

// Forward + backward give the same bits on 1 and 2 threads (float, a shape where both threads work),
// with two shared experts (one per thread in backward) and with one (its products split). With d_ff
// 70 and 200 tokens the second thread's scratch is off a packet boundary: backward's activation
// pass gave other bits there (Eigen's scalar and vector exp differ) before experts used elementwise().
TEST(SparseMoEDeterminism, ForwardBackwardBitIdenticalAcrossThreadCounts) {
  using Layer = moe::SparseMoE<moe::SwiGluExpert<float>, moe::TopKGate<float>, moe::LoadBalancingLoss<float>>;
  for (const auto& [d_ff, T] : {std::pair<Index, Index>{80, 300}, {70, 200}})
  for (const Index shared : {2, 1}) {
    const auto run = [shared, d_ff, T](int threads) {
      Layer layer(moe::TopKGate<float>({.d_model = 48, .num_experts = 8, .top_k = 2, .seed = 40}),
                  moe::SwiGluExpert<float>({.num_experts = 8, .d_model = 48, .d_ff = d_ff, .seed = 41}),
                  moe::SharedExperts<moe::SwiGluExpert<float>>(
                      moe::SwiGluExpert<float>({.num_experts = shared, .d_model = 48, .d_ff = 40, .seed = 42}),
                      true, 43),
                  moe::LoadBalancingLoss<float>(moe::LoadBalancingConfig{}));
      layer.set_num_threads(threads);
      const RowMatrix<float> x = moe::test::random_matrix<float>(T, 48, 44);
      const RowMatrix<float> c = moe::test::random_matrix<float>(T, 48, 45);
      Layer::Cache cache;
      RowMatrix<float> y(T, 48), d_x(T, 48);
      const double aux = layer.forward(x, y, cache);
      auto grads = layer.make_gradients();
      layer.backward(cache, c, d_x, grads);
      std::vector<float> bits(y.data(), y.data() + y.size());
      bits.insert(bits.end(), d_x.data(), d_x.data() + d_x.size());
      for (const auto& g : grads.parameters()) bits.insert(bits.end(), g.values().begin(), g.values().end());
      bits.push_back(float(aux));
      return bits;
    };
    const std::vector<float> one = run(1), two = run(2);
    ASSERT_EQ(one.size(), two.size());
    EXPECT_EQ(std::memcmp(one.data(), two.data(), one.size() * sizeof(float)), 0)
        << shared << " shared experts, d_ff " << d_ff;
  }
}

TEST(SparseMoETraining, BackwardNeedsATrainingCache) {
  moe::SparseMoE<moe::SwiGluExpert<double>, moe::TopKGate<double>> layer{moe::TopKGate<double>(gate()),
                                                                       moe::SwiGluExpert<double>(experts())};
  decltype(layer)::Cache cache;
  RowMatrix<double> d_y(kTokens, kModel), d_x(kTokens, kModel);
  auto grads = layer.make_gradients();
  EXPECT_THROW(layer.backward(cache, d_y, d_x, grads), std::invalid_argument);
  const RowMatrix<double> x = moe::test::random_matrix<double>(kTokens, kModel, 46);
  RowMatrix<double> y(kTokens, kModel), wrong(kTokens - 1, kModel);
  layer.forward(x, y, cache);
  EXPECT_THROW(layer.backward(cache, wrong, d_x, grads), moe::shape_error);
  EXPECT_THROW(layer.backward(cache, d_y, wrong, grads), moe::shape_error);
}

TEST(SparseMoETraining, ParameterNamesFollowTheParts) {
  moe::SparseMoE<moe::SwiGluExpert<float>, moe::TopKGate<float>> layer{
      moe::TopKGate<float>({.d_model = kModel, .num_experts = kExperts, .router_bias = true}),
      moe::SwiGluExpert<float>({.num_experts = kExperts, .d_model = kModel, .d_ff = kHidden}),
      moe::SharedExperts<moe::SwiGluExpert<float>>(
          moe::SwiGluExpert<float>({.num_experts = 1, .d_model = kModel, .d_ff = kHidden}), true)};
  std::vector<std::string> names;
  for (const auto& p : layer.parameters()) names.push_back(p.name);
  EXPECT_EQ(names, (std::vector<std::string>{"gate.weight", "gate.bias", "experts.w1", "experts.w2", "experts.w3",
                                             "shared_experts.w1", "shared_experts.w2", "shared_experts.w3",
                                             "shared_experts.gate_weight"}));
  auto grads = layer.make_gradients();
  moe::check_matching(layer.parameters(), grads.parameters(), "test");
}

}  // namespace

namespace MOE_TEST_FILE_ID {

// y may be x itself, with shared experts (which read x) and in training (which keeps x).
TEST(SparseMoEInPlace, ForwardIntoItsOwnInput) {
  moe::SparseMoE<moe::SwiGluExpert<double>, moe::TopKGate<double>> layer{
      moe::TopKGate<double>(gate()), moe::SwiGluExpert<double>(experts()),
      moe::SharedExperts<moe::SwiGluExpert<double>>(moe::SwiGluExpert<double>(experts(1, 50)), true, 51)};
  const RowMatrix<double> x = moe::test::random_matrix<double>(kTokens, kModel, 52);
  const RowMatrix<double> c = moe::test::random_matrix<double>(kTokens, kModel, 53);
  RowMatrix<double> y(kTokens, kModel), d_x(kTokens, kModel), d_x_in_place(kTokens, kModel);
  decltype(layer)::Cache cache;
  layer.forward(x, y, cache);
  auto grads = layer.make_gradients(), grads_in_place = layer.make_gradients();
  layer.backward(cache, c, d_x, grads);

  RowMatrix<double> z = x;
  layer.forward(z, z);
  EXPECT_EQ(z, y);
  z = x;
  layer.forward(z, z, cache);
  EXPECT_EQ(z, y);
  layer.backward(cache, c, d_x_in_place, grads_in_place);
  EXPECT_EQ(d_x_in_place, d_x);
}

}  // namespace
