// SparseMoE::forward against the plain per-token reference (support/reference_layer.hpp), for the
// routers of the literature; input binding; edge cases; errors; training vs inference.
#include "layer/layer_cases.hpp"
#include "support/compare.hpp"
#include "support/reference_layer.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace moe {
namespace MOE_TEST_FILE_ID {

using test::random_matrix;
using test::reference_layer_forward;
using test::reference_routed;
using test::reference_shared_row;
using namespace test::cases;

constexpr double kSentinel = 7.25;  // what y holds before a forward that must overwrite or keep it

template <class S>
struct Run {
  RowMatrix<S> x, y;
  RowMatrix<double> reference;
};

// Forwards a seeded x [T, d_model] into a y filled with the sentinel, and checks y against the
// reference built from the layer's own plan.
template <class Layer>
Run<typename Layer::Scalar> forward_and_check(Layer& layer, Index T, std::uint64_t seed) {
  using S = typename Layer::Scalar;
  Run<S> run{random_matrix<S>(T, kDModel, seed), RowMatrix<S>::Constant(T, kDModel, S(kSentinel)), {}};
  layer.forward(run.x, run.y);
  EXPECT_EQ(layer.last_plan().num_tokens(), T);
  run.reference = reference_layer_forward(layer, run.x);
  EXPECT_GT(run.reference.squaredNorm(), 0.0);
  MOE_EXPECT_CLOSE(S, run.y, run.reference) << " (T = " << T << ")";
  return run;
}

// Tokens with no active slot.
template <class S>
std::vector<Index> unserved_tokens(const RoutingPlan<S>& plan) {
  std::vector<Index> tokens;
  for (Index t = 0; t < plan.num_tokens(); ++t) {
    bool served = false;
    for (Index j = 0; j < plan.slots_per_token(); ++j) served = served || plan.active(t, j);
    if (!served) tokens.push_back(t);
  }
  return tokens;
}

// Calls f, which must throw Error whose what() contains every one of parts.
template <class Error, class F>
void expect_throw_naming(F&& f, std::initializer_list<std::string_view> parts) {
  try {
    f();
    ADD_FAILURE() << "no exception thrown";
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const std::string_view part : parts)
      EXPECT_NE(what.find(part), std::string::npos) << "\"" << what << "\" does not name \"" << part << "\"";
  }
}

template <class S>
class SparseMoEReference : public ::testing::Test {};
TYPED_TEST_SUITE(SparseMoEReference, test::Scalars);

TYPED_TEST(SparseMoEReference, MixtralLikeSwiGluTopTwo) {
  using S = TypeParam;
  auto layer = mixtral_layer<S>();
  for (const Index T : {kTokens, kManyTokens, Index{1}}) {
    forward_and_check(layer, T, 100 + T);
    const auto& plan = layer.last_plan();
    for (Index t = 0; t < T; ++t) {
      EXPECT_TRUE(plan.active(t, 0) && plan.active(t, 1)) << "token " << t;
      EXPECT_NEAR(double(plan.weight(t, 0) + plan.weight(t, 1)), 1.0, 1e-6) << "token " << t;
    }
  }
}

TYPED_TEST(SparseMoEReference, SwitchDroppedSlotsContributeNothing) {
  using S = TypeParam;
  auto layer = switch_layer<S>(/*factor=*/0.5);
  for (const Index T : {kTokens, kManyTokens}) {
    const auto run = forward_and_check(layer, T, 200 + T);
    const auto& plan = layer.last_plan();
    const Index capacity = expert_capacity({.factor = 0.5}, T, 1, kExperts);
    // k = 1: a token whose only slot is dropped gets y = 0 exactly (the experts have biases, so
    // running a dropped token through its expert would show).
    Index dropped = 0;
    for (Index t = 0; t < T; ++t) {
      ASSERT_NE(plan.expert(t, 0), kEmptySlot);
      if (!plan.dropped(t, 0)) continue;
      ++dropped;
      EXPECT_TRUE((run.y.row(t).array() == S(0)).all()) << "dropped token " << t << ": " << run.y.row(t);
    }
    EXPECT_GE(dropped, T - kExperts * capacity) << "T = " << T;
    EXPECT_EQ(layer.last_stats().dropped, dropped);
    // The drops matter: a reference that ignored them would be far from y.
    RoutingPlan<S> undropped = plan;
    undropped.dropped.setZero();
    EXPECT_GT(test::normalised_error(run.y, reference_routed(undropped, layer.experts(), run.x)), 1e-3);
  }
}

TYPED_TEST(SparseMoEReference, DeepSeekLikeSigmoidGroupsSelectionBiasSharedExperts) {
  using S = TypeParam;
  auto layer = deepseek_layer<S>();
  ASSERT_NE(layer.shared(), nullptr);
  EXPECT_FALSE(layer.shared()->gated());
  for (const Index T : {kTokens, kManyTokens}) {
    const auto run = forward_and_check(layer, T, 300 + T);
    // The shared experts contributed: the routed part alone is far from y.
    EXPECT_GT(test::normalised_error(run.y, reference_routed(layer.last_plan(), layer.experts(), run.x)), 1e-3);
  }
}

TYPED_TEST(SparseMoEReference, Qwen2LikeUnnormalisedSoftmaxGatedSharedExpert) {
  using S = TypeParam;
  auto layer = qwen2_layer<S>();
  ASSERT_NE(layer.shared(), nullptr);
  EXPECT_TRUE(layer.shared()->gated());
  for (const Index T : {kTokens, kManyTokens}) {
    const auto run = forward_and_check(layer, T, 400 + T);
    const auto& plan = layer.last_plan();
    for (Index t = 0; t < T; ++t)  // not renormalised: two of four softmax scores sum below 1
      EXPECT_LT(double(plan.weight(t, 0) + plan.weight(t, 1)), 1.0 - 1e-3) << "token " << t;
    EXPECT_GT(test::normalised_error(run.y, reference_routed(plan, layer.experts(), run.x)), 1e-3);
  }
}

TYPED_TEST(SparseMoEReference, DenseGateLinearExperts) {
  using S = TypeParam;
  auto layer = dense_layer<S>();
  for (const Index T : {kTokens, kManyTokens}) {
    forward_and_check(layer, T, 500 + T);
    EXPECT_EQ(layer.last_stats().tokens_per_expert, std::vector<Index>(kExperts, T));
  }
}

TYPED_TEST(SparseMoEReference, ExpertChoiceTokensWithoutExpertGetZero) {
  using S = TypeParam;
  auto layer = expert_choice_layer<S>(/*factor=*/0.5);
  for (const Index T : {kTokens, kManyTokens}) {
    const auto run = forward_and_check(layer, T, 600 + T);
    const Index capacity = layer.gate().capacity(T);
    const auto unserved = unserved_tokens(layer.last_plan());
    EXPECT_GE(static_cast<Index>(unserved.size()), T - kExperts * capacity) << "T = " << T;
    for (const Index t : unserved)
      EXPECT_TRUE((run.y.row(t).array() == S(0)).all()) << "token " << t << ": " << run.y.row(t);
  }
}

TYPED_TEST(SparseMoEReference, ExpertChoiceTokensWithoutExpertGetTheSharedExperts) {
  using S = TypeParam;
  auto layer = expert_choice_layer<S>(/*factor=*/0.5, /*with_shared=*/true);
  for (const Index T : {kTokens, kManyTokens}) {
    const auto run = forward_and_check(layer, T, 700 + T);
    const auto unserved = unserved_tokens(layer.last_plan());
    ASSERT_FALSE(unserved.empty());
    for (const Index t : unserved) {
      const Eigen::RowVectorXd shared = reference_shared_row(*layer.shared(), run.x.row(t));
      EXPECT_GT(shared.squaredNorm(), 0.0);
      MOE_EXPECT_CLOSE(S, run.y.row(t), shared) << " (token " << t << ")";
    }
  }
}

// ---- input and output binding ----------------------------------------------------------------

template <class S>
class SparseMoEBinding : public ::testing::Test {};
TYPED_TEST_SUITE(SparseMoEBinding, test::Scalars);

TYPED_TEST(SparseMoEBinding, RowBlockAndMapGiveTheSameBitsAsAMatrix) {
  using S = TypeParam;
  auto layer = qwen2_layer<S>();
  const Index T = kTokens;
  const RowMatrix<S> big = random_matrix<S>(T + 5, kDModel, 801);
  const RowMatrix<S> x = big.middleRows(3, T);
  RowMatrix<S> y_matrix(T, kDModel), y_block(T, kDModel), y_map(T, kDModel), y_mutable_map(T, kDModel);
  layer.forward(x, y_matrix);
  layer.forward(big.middleRows(3, T), y_block);
  std::vector<S> storage(x.data(), x.data() + x.size());
  layer.forward(Eigen::Map<const RowMatrix<S>>(storage.data(), T, kDModel), y_map);
  layer.forward(Eigen::Map<RowMatrix<S>>(storage.data(), T, kDModel), y_mutable_map);
  EXPECT_TRUE(same_bits(y_block, y_matrix));
  EXPECT_TRUE(same_bits(y_map, y_matrix));
  EXPECT_TRUE(same_bits(y_mutable_map, y_matrix));
  MOE_EXPECT_CLOSE(S, y_matrix, reference_layer_forward(layer, x));
}

TYPED_TEST(SparseMoEBinding, OutputIntoARowBlockLeavesOtherRowsUntouched) {
  using S = TypeParam;
  auto layer = deepseek_layer<S>();
  const Index T = kTokens;
  const RowMatrix<S> x = random_matrix<S>(T, kDModel, 802);
  RowMatrix<S> y(T, kDModel);
  layer.forward(x, y);
  RowMatrix<S> big = RowMatrix<S>::Constant(T + 4, kDModel, S(kSentinel));
  layer.forward(x, big.middleRows(2, T));
  EXPECT_TRUE(same_bits(big.middleRows(2, T), y));
  for (const Index r : {Index{0}, Index{1}, T + 2, T + 3})
    EXPECT_TRUE((big.row(r).array() == S(kSentinel)).all()) << "row " << r << " was written: " << big.row(r);
}

TYPED_TEST(SparseMoEBinding, OnlyRowMajorInputsOfTheLayerScalarCompile) {
  using S = TypeParam;
  using Other = std::conditional_t<std::is_same_v<S, float>, double, float>;
  using Layer = MixtralLayer<S>;
  using ColMatrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
  // Tokens are rows: a column-major x would be silently copied, so it must not compile.
  static_assert(!requires(Layer& l, ColMatrix& x, MatrixRef<S> y) { l.forward(x, y); });
  static_assert(!requires(Layer& l, Eigen::Map<const ColMatrix>& x, MatrixRef<S> y) { l.forward(x, y); });
  static_assert(!requires(Layer& l, RowMatrix<S>& x, ColMatrix& y) { l.forward(x, y); });
  static_assert(!requires(Layer& l, RowMatrix<Other>& x, MatrixRef<S> y) { l.forward(x, y); });
  // The positive versions: matrices, row blocks and Maps of row-major storage.
  static_assert(requires(Layer& l, RowMatrix<S>& x, MatrixRef<S> y) { l.forward(x, y); });
  static_assert(requires(Layer& l, const RowMatrix<S>& x, RowMatrix<S>& y) { l.forward(x, y); });
  static_assert(requires(Layer& l, RowMatrix<S>& x, RowMatrix<S>& y) { l.forward(x.middleRows(1, 2), y); });
  static_assert(requires(Layer& l, Eigen::Map<const RowMatrix<S>>& x, MatrixRef<S> y) { l.forward(x, y); });
  SUCCEED();  // the assertions above are checked by the compiler
}

// ---- packed weights follow the weights -------------------------------------------------------
// The fast path packs each expert's weights on first use (SparseMoE::prepack). Every way of changing
// the weights must reach the output: compared with a twin layer that had the same change made
// before it ever ran, bit for bit.

template <class S>
class SparseMoEPacked : public ::testing::Test {};
TYPED_TEST_SUITE(SparseMoEPacked, test::Scalars);

template <class Layer>
void check_mutable_access_drops_the_packed_copies(Layer layer, Layer twin) {
  using S = typename Layer::Scalar;
  const auto double_first_expert = [](Layer& l) {
    l.experts().w1()[0] *= S(2);
    l.experts().w2()[0] *= S(2);
  };
  const RowMatrix<S> x = random_matrix<S>(kTokens, kDModel, 811);
  RowMatrix<S> y(kTokens, kDModel), y_twin(kTokens, kDModel);
  layer.prepack();
  layer.forward(x, y);
  double_first_expert(layer);
  double_first_expert(twin);
  layer.forward(x, y);
  twin.forward(x, y_twin);
  ASSERT_GT(layer.last_stats().assignments, 0);
  EXPECT_TRUE(same_bits(y, y_twin));
  MOE_EXPECT_CLOSE(S, y, reference_layer_forward(layer, x));
}

TYPED_TEST(SparseMoEPacked, MutableAccessToTheWeightsDropsThePackedCopies) {
  check_mutable_access_drops_the_packed_copies(mixtral_layer<TypeParam>(), mixtral_layer<TypeParam>());
  SCOPED_TRACE("FFN experts with biases");
  check_mutable_access_drops_the_packed_copies(switch_layer<TypeParam>(2.0), switch_layer<TypeParam>(2.0));
}

// Scales every expert weight (routed and shared) of `layer` and of its `twin` through views.
template <class Layer>
void check_writes_through_kept_views(Layer layer, Layer twin) {
  using S = typename Layer::Scalar;
  const RowMatrix<S> x = random_matrix<S>(kTokens, kDModel, 812);
  RowMatrix<S> y(kTokens, kDModel), y_twin(kTokens, kDModel);
  const ParameterList<S> views = layer.parameters();  // kept, as an optimizer keeps them
  const auto scale_experts = [](const ParameterList<S>& list) {
    for (const auto& view : list)
      if (view.name.starts_with("experts.") || view.name.starts_with("shared_experts.w")) view.matrix() *= S(0.5);
  };
  layer.forward(x, y);  // packs
  scale_experts(views);
  scale_experts(twin.parameters());
  twin.forward(x, y_twin);
  layer.weights_changed();
  layer.forward(x, y);
  EXPECT_TRUE(same_bits(y, y_twin)) << "inference after weights_changed()";

  // An optimizer step between training forwards needs nothing: a training forward packs afresh
  // and leaves nothing packed for the inference forward after it.
  typename Layer::Cache cache, twin_cache;
  layer.forward(x, y, cache);
  scale_experts(views);
  scale_experts(twin.parameters());
  layer.forward(x, y, cache);
  twin.forward(x, y_twin, twin_cache);
  EXPECT_TRUE(same_bits(y, y_twin)) << "training forward after a step";
  scale_experts(views);
  scale_experts(twin.parameters());
  layer.forward(x, y);
  twin.forward(x, y_twin);
  EXPECT_TRUE(same_bits(y, y_twin)) << "inference after a training forward and a step";
}

TYPED_TEST(SparseMoEPacked, WritesThroughKeptViewsNeedWeightsChangedOrATrainingForward) {
  using S = TypeParam;
  check_writes_through_kept_views(mixtral_layer<S>(), mixtral_layer<S>());
  SCOPED_TRACE("shared experts");  // on the packed path too
  check_writes_through_kept_views(deepseek_layer<S>(), deepseek_layer<S>());
  SCOPED_TRACE("FFN experts with biases");
  check_writes_through_kept_views(switch_layer<S>(2.0), switch_layer<S>(2.0));
}

// ---- edge cases ------------------------------------------------------------------------------

template <class S>
class SparseMoEEdge : public ::testing::Test {};
TYPED_TEST_SUITE(SparseMoEEdge, test::Scalars);

TYPED_TEST(SparseMoEEdge, EmptyBatchGivesEmptyOutputAndZeroStats) {
  using S = TypeParam;
  auto qwen2 = qwen2_layer<S>();
  auto switch_ = switch_layer<S>(0.5);
  auto expert_choice = expert_choice_layer<S>(0.5, /*with_shared=*/true);
  const auto check = [](auto& layer) {
    forward_and_check(layer, kTokens, 901);  // stats of a non-empty batch first: they must be replaced
    const RowMatrix<S> x(0, kDModel);
    RowMatrix<S> y(0, kDModel);
    EXPECT_NO_THROW(layer.forward(x, y));
    EXPECT_EQ(y.size(), 0);
    EXPECT_EQ(layer.last_plan().num_tokens(), 0);
    const RoutingStats& stats = layer.last_stats();
    EXPECT_EQ(stats.num_tokens, 0);
    EXPECT_EQ(stats.assignments, 0);
    EXPECT_EQ(stats.dropped, 0);
    EXPECT_EQ(stats.tokens_per_expert, std::vector<Index>(kExperts, 0));
    EXPECT_EQ(stats.load_fraction, std::vector<double>(kExperts, 0.0));
    EXPECT_EQ(stats.unused_experts, kExperts);
    EXPECT_EQ(stats.max_load, 0.0);
    EXPECT_EQ(stats.mean_load, 0.0);
    EXPECT_EQ(stats.imbalance(), 0.0);
    EXPECT_EQ(stats.router_entropy, 0.0);
  };
  check(qwen2);
  check(switch_);
  check(expert_choice);
}

TYPED_TEST(SparseMoEEdge, SingleToken) {
  using S = TypeParam;
  auto qwen2 = qwen2_layer<S>();
  auto switch_ = switch_layer<S>(0.5);
  auto expert_choice = expert_choice_layer<S>(0.5);
  forward_and_check(qwen2, 1, 902);
  forward_and_check(switch_, 1, 903);
  EXPECT_EQ(switch_.last_stats().dropped, 0);  // capacity ceil(0.5 / 4) = 1
  forward_and_check(expert_choice, 1, 904);
  EXPECT_EQ(expert_choice.last_stats().tokens_per_expert, std::vector<Index>(kExperts, 1));
}

TYPED_TEST(SparseMoEEdge, ExpertNeverChosenIsNeverRun) {
  using S = TypeParam;
  auto config = mixtral_config();
  config.router_bias = true;
  auto layer = mixtral_layer<S>(config);
  constexpr Index kIdle = 2;
  layer.gate().router().weight().row(kIdle).setZero();
  layer.gate().router().bias()[kIdle] = S(-100);
  // Poison the idle expert: if the layer ran it on any row and combined it, y would hold NaN.
  layer.experts().w2()[kIdle].setConstant(nan<S>());
  const auto run = forward_and_check(layer, kManyTokens, 905);
  EXPECT_TRUE(run.y.allFinite());
  EXPECT_TRUE((layer.last_plan().expert.array() != kIdle).all());
  EXPECT_EQ(layer.last_stats().tokens_per_expert[kIdle], 0);
  EXPECT_EQ(layer.last_stats().unused_experts, 1);
}

TYPED_TEST(SparseMoEEdge, TopOne) {
  using S = TypeParam;
  auto layer = mixtral_layer<S>(mixtral_config(/*top_k=*/1));
  const auto run = forward_and_check(layer, kTokens, 906);
  const auto& plan = layer.last_plan();
  ASSERT_EQ(plan.slots_per_token(), 1);
  for (Index t = 0; t < kTokens; ++t) {
    EXPECT_EQ(plan.weight(t, 0), S(1)) << "token " << t;  // one renormalised weight
    MOE_EXPECT_CLOSE(S, run.y.row(t), test::reference_expert_row(layer.experts(), plan.expert(t, 0), run.x.row(t)))
        << " (token " << t << ")";
  }
}

TYPED_TEST(SparseMoEEdge, TopKEqualsNumExperts) {
  using S = TypeParam;
  auto layer = mixtral_layer<S>(mixtral_config(/*top_k=*/kExperts));
  forward_and_check(layer, kTokens, 907);
  EXPECT_EQ(layer.last_stats().tokens_per_expert, std::vector<Index>(kExperts, kTokens));
  EXPECT_EQ(layer.last_stats().unused_experts, 0);
  EXPECT_DOUBLE_EQ(layer.last_stats().imbalance(), 1.0);
}

TYPED_TEST(SparseMoEEdge, TiedScoresGoToTheLowestExperts) {
  using S = TypeParam;
  auto layer = mixtral_layer<S>();
  layer.gate().router().weight().setZero();  // every logit 0: all four experts tie
  const auto run = forward_and_check(layer, kTokens, 908);
  const auto& plan = layer.last_plan();
  for (Index t = 0; t < kTokens; ++t) {
    EXPECT_EQ(plan.expert(t, 0), 0) << "token " << t;
    EXPECT_EQ(plan.expert(t, 1), 1) << "token " << t;
    EXPECT_EQ(plan.weight(t, 0), S(0.5));
    EXPECT_EQ(plan.weight(t, 1), S(0.5));
    const Eigen::RowVectorXd expected = 0.5 * (test::reference_expert_row(layer.experts(), 0, run.x.row(t)) +
                                               test::reference_expert_row(layer.experts(), 1, run.x.row(t)));
    MOE_EXPECT_CLOSE(S, run.y.row(t), expected) << " (token " << t << ")";
  }
  EXPECT_EQ(layer.last_stats().tokens_per_expert, (std::vector<Index>{kTokens, kTokens, 0, 0}));
}

// ---- errors: thrown, named, and nothing changed ----------------------------------------------

template <class S>
class SparseMoEErrors : public ::testing::Test {};
TYPED_TEST_SUITE(SparseMoEErrors, test::Scalars);

// After a successful forward, a failing call must leave y (sentinel), last_plan() and last_stats()
// exactly as they were, and the layer usable.
template <class Layer, class Call>
void expect_no_change_on_throw(Layer& layer, RowMatrix<typename Layer::Scalar>& y, Call&& failing_call) {
  using S = typename Layer::Scalar;
  const RowMatrix<S> x = random_matrix<S>(kTokens, kDModel, 1001);
  RowMatrix<S> y_good(kTokens, kDModel);
  layer.forward(x, y_good);
  const RoutingPlan<S> plan = layer.last_plan();
  const RoutingStats stats = layer.last_stats();
  y.setConstant(S(kSentinel));
  failing_call();
  EXPECT_TRUE((y.array() == S(kSentinel)).all()) << "y was written by a failing call";
  expect_same_plan(layer.last_plan(), plan);
  expect_same_stats(layer.last_stats(), stats);
  RowMatrix<S> y_again(kTokens, kDModel);
  layer.forward(x, y_again);
  EXPECT_TRUE(same_bits(y_again, y_good));
}

TYPED_TEST(SparseMoEErrors, WrongInputWidth) {
  using S = TypeParam;
  auto layer = qwen2_layer<S>();
  const RowMatrix<S> x = random_matrix<S>(kTokens, 9, 1002);
  RowMatrix<S> y(kTokens, kDModel);
  expect_no_change_on_throw(layer, y, [&] {
    expect_throw_naming<shape_error>([&] { layer.forward(x, y); },
                                     {"SparseMoE::forward", "x.cols() = 9 but d_model = 8"});
  });
}

TYPED_TEST(SparseMoEErrors, WrongOutputShape) {
  using S = TypeParam;
  auto layer = qwen2_layer<S>();
  const RowMatrix<S> x = random_matrix<S>(kTokens, kDModel, 1003);
  RowMatrix<S> y_rows(kTokens - 1, kDModel), y_cols(kTokens, kDModel + 1);
  expect_no_change_on_throw(layer, y_rows, [&] {
    expect_throw_naming<shape_error>([&] { layer.forward(x, y_rows); },
                                     {"SparseMoE::forward", "y.rows() = 6 but x.rows() = 7"});
  });
  expect_no_change_on_throw(layer, y_cols, [&] {
    expect_throw_naming<shape_error>([&] { layer.forward(x, y_cols); },
                                     {"SparseMoE::forward", "y.cols() = 9 but d_model = 8"});
  });
}

TYPED_TEST(SparseMoEErrors, NonFiniteTokenIsNamed) {
  using S = TypeParam;
  auto layer = deepseek_layer<S>();
  RowMatrix<S> x = random_matrix<S>(kTokens, kDModel, 1004);
  x(3, 5) = nan<S>();
  RowMatrix<S> y(kTokens, kDModel);
  expect_no_change_on_throw(layer, y, [&] {
    expect_throw_naming<std::domain_error>([&] { layer.forward(x, y); }, {"token 3"});
  });
  x(3, 5) = std::numeric_limits<S>::infinity();
  expect_no_change_on_throw(layer, y, [&] {
    expect_throw_naming<std::domain_error>([&] { layer.forward(x, y); }, {"token 3"});
  });
}

TYPED_TEST(SparseMoEErrors, GateAndExpertsMustAgree) {
  using S = TypeParam;
  expect_throw_naming<config_error>(
      [] {
        MixtralLayer<S>(TopKGate<S>(mixtral_config()),
                        SwiGluExpert<S>({.num_experts = kExperts, .d_model = 6, .d_ff = kDff}));
      },
      {"SparseMoE", "d_model", "= 8", "= 6"});
  expect_throw_naming<config_error>(
      [] {
        MixtralLayer<S>(TopKGate<S>(mixtral_config()),
                        SwiGluExpert<S>({.num_experts = 5, .d_model = kDModel, .d_ff = kDff}));
      },
      {"SparseMoE", "num_experts", "= 4", "= 5"});
  expect_throw_naming<config_error>(
      [] {
        ExpertChoiceLayer<S>(
            ExpertChoiceGate<S>({.d_model = kDModel, .num_experts = 3}), ReluExpert<S>(experts_config()));
      },
      {"SparseMoE", "num_experts", "= 3", "= 4"});
}

TYPED_TEST(SparseMoEErrors, SharedExpertsMustHaveTheLayerWidth) {
  using S = TypeParam;
  expect_throw_naming<config_error>(
      [] {
        MixtralLayer<S>(TopKGate<S>(mixtral_config()), SwiGluExpert<S>(experts_config()),
                        SharedExperts<SwiGluExpert<S>>(SwiGluExpert<S>({.num_experts = 1, .d_model = 6, .d_ff = kDff})));
      },
      {"SparseMoE", "shared", "d_model", "= 6", "= 8"});
}

// ---- mode ------------------------------------------------------------------------------------

template <class S>
class SparseMoEMode : public ::testing::Test {};
TYPED_TEST_SUITE(SparseMoEMode, test::Scalars);

TYPED_TEST(SparseMoEMode, NoisyGateChangesTheOutputOnlyInTraining) {
  using S = TypeParam;
  auto config = mixtral_config();
  config.scoring = Scoring::softmax_selected;  // Shazeer 2017
  auto quiet = mixtral_layer<S>(config);
  config.noisy = true;
  auto noisy = mixtral_layer<S>(config);
  EXPECT_EQ(noisy.mode(), Mode::inference);
  const RowMatrix<S> x = random_matrix<S>(kTokens, kDModel, 1101);
  RowMatrix<S> y_quiet(kTokens, kDModel), y_inference(kTokens, kDModel), y_training(kTokens, kDModel),
      y_back(kTokens, kDModel);

  quiet.forward(x, y_quiet);
  noisy.forward(x, y_inference);
  EXPECT_TRUE(same_bits(y_inference, y_quiet)) << "inference must not draw noise";

  noisy.set_mode(Mode::training);
  EXPECT_EQ(noisy.mode(), Mode::training);
  noisy.forward(x, y_training);
  EXPECT_FALSE(same_bits(noisy.last_plan().logits, quiet.last_plan().logits)) << "no noise in training";
  EXPECT_GT(test::normalised_error(y_training, y_quiet), 1e-6);
  MOE_EXPECT_CLOSE(S, y_training, reference_layer_forward(noisy, x));  // the noisy plan is what ran

  noisy.set_mode(Mode::inference);
  noisy.forward(x, y_back);
  EXPECT_TRUE(same_bits(y_back, y_quiet));
}

TYPED_TEST(SparseMoEMode, JitterOnlyInTraining) {
  using S = TypeParam;
  auto config = mixtral_config();
  auto plain = mixtral_layer<S>(config);
  config.jitter = 0.2;
  auto jittery = mixtral_layer<S>(config);
  const RowMatrix<S> x = random_matrix<S>(kTokens, kDModel, 1102);
  RowMatrix<S> y_plain(kTokens, kDModel), y(kTokens, kDModel);
  plain.forward(x, y_plain);
  jittery.forward(x, y);
  EXPECT_TRUE(same_bits(y, y_plain));
  jittery.set_mode(Mode::training);
  jittery.forward(x, y);
  EXPECT_GT(test::normalised_error(y, y_plain), 1e-8);
}

TYPED_TEST(SparseMoEMode, DeterministicGatesIgnoreTheMode) {
  using S = TypeParam;
  auto layer = expert_choice_layer<S>(1.0);
  const RowMatrix<S> x = random_matrix<S>(kTokens, kDModel, 1103);
  RowMatrix<S> y_inference(kTokens, kDModel), y_training(kTokens, kDModel);
  layer.forward(x, y_inference);
  layer.set_mode(Mode::training);
  layer.forward(x, y_training);
  EXPECT_TRUE(same_bits(y_training, y_inference));
}

}  // namespace
}  // namespace moe
