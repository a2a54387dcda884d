// What every library expert shares: ExpertConfig validation (config_error naming the expert, the
// field and its value) and the Expert concept, which user types satisfy the same way.
#include <moe/concepts.hpp>
#include <moe/experts/expert_config.hpp>
#include <moe/experts/ffn.hpp>
#include <moe/experts/gated.hpp>
#include <moe/experts/linear.hpp>

#include "support/compare.hpp"
#include "support/reference_experts.hpp"

#include <gtest/gtest.h>

#include <span>

namespace MOE_TEST_FILE_ID {

using moe::ExpertConfig;
using moe::Index;
using moe::test::expect_throw_containing;

// ---- the concept -------------------------------------------------------------------------------

// A minimal user expert: enough to join a layer.
struct UserExpert {
  using Scalar = float;
  Index num_experts() const { return 1; }
  Index d_model() const { return 4; }
  Index scratch_size(Index) const { return 0; }
  void forward(Index, moe::ConstMatrixRef<float>, moe::MatrixRef<float>, std::span<float>) const {}
};

// The same without forward.
struct MissingForward {
  using Scalar = float;
  Index num_experts() const { return 1; }
  Index d_model() const { return 4; }
  Index scratch_size(Index) const { return 0; }
};

// forward that does not take the scratch span.
struct ForwardWithoutScratch {
  using Scalar = float;
  Index num_experts() const { return 1; }
  Index d_model() const { return 4; }
  Index scratch_size(Index) const { return 0; }
  void forward(Index, moe::ConstMatrixRef<float>, moe::MatrixRef<float>) const {}
};

// forward that is not const: the layer calls it concurrently on a const expert.
struct MutatingForward {
  using Scalar = float;
  Index num_experts() const { return 1; }
  Index d_model() const { return 4; }
  Index scratch_size(Index) const { return 0; }
  void forward(Index, moe::ConstMatrixRef<float>, moe::MatrixRef<float>, std::span<float>) {}
};

// Everything but the Scalar type.
struct MissingScalar {
  Index num_experts() const { return 1; }
  Index d_model() const { return 4; }
  Index scratch_size(Index) const { return 0; }
  void forward(Index, moe::ConstMatrixRef<float>, moe::MatrixRef<float>, std::span<float>) const {}
};

static_assert(moe::Expert<UserExpert>);
static_assert(!moe::Expert<MissingForward>);
static_assert(!moe::Expert<ForwardWithoutScratch>);
static_assert(!moe::Expert<MutatingForward>);
static_assert(!moe::Expert<MissingScalar>);
static_assert(!moe::Expert<int>);

// Every library expert, in both precisions.
static_assert(moe::Expert<moe::LinearExpert<float>> && moe::Expert<moe::LinearExpert<double>>);
static_assert(moe::Expert<moe::ReluExpert<float>> && moe::Expert<moe::ReluExpert<double>>);
static_assert(moe::Expert<moe::GeluExpert<float>> && moe::Expert<moe::GeluExpert<double>>);
static_assert(moe::Expert<moe::GeluTanhExpert<float>> && moe::Expert<moe::GeluTanhExpert<double>>);
static_assert(moe::Expert<moe::SiluExpert<float>> && moe::Expert<moe::SiluExpert<double>>);
static_assert(moe::Expert<moe::SwiGluExpert<float>> && moe::Expert<moe::SwiGluExpert<double>>);
static_assert(moe::Expert<moe::GeGluExpert<float>> && moe::Expert<moe::GeGluExpert<double>>);

// ---- config validation ----------------------------------------------------------------------------

constexpr ExpertConfig kValid{.num_experts = 4, .d_model = 8, .d_ff = 16, .bias = false, .seed = 1};

ExpertConfig with(ExpertConfig c, Index num_experts, Index d_model, Index d_ff, bool bias = false) {
  c.num_experts = num_experts;
  c.d_model = d_model;
  c.d_ff = d_ff;
  c.bias = bias;
  return c;
}

TEST(ExpertConfig, DefaultsAreZeroAndInvalid) {
  const ExpertConfig c;
  EXPECT_EQ(c.num_experts, 0);
  EXPECT_EQ(c.d_model, 0);
  EXPECT_EQ(c.d_ff, 0);
  EXPECT_FALSE(c.bias);
  EXPECT_EQ(c.seed, 0u);
  EXPECT_THROW(moe::LinearExpert<float>{c}, moe::config_error);
}

template <class S>
class ExpertConfigTest : public ::testing::Test {};
TYPED_TEST_SUITE(ExpertConfigTest, moe::test::Scalars);

TYPED_TEST(ExpertConfigTest, ValidConfigsConstruct) {
  using S = TypeParam;
  EXPECT_NO_THROW(moe::LinearExpert<S>{kValid});
  EXPECT_NO_THROW(moe::LinearExpert<S>{with(kValid, 4, 8, 0, true)}) << "LinearExpert does not use d_ff";
  EXPECT_NO_THROW((moe::ReluExpert<S>{with(kValid, 1, 1, 1, true)}));
  EXPECT_NO_THROW(moe::SwiGluExpert<S>{with(kValid, 1, 1, 1)});
  const moe::GeGluExpert<S> expert{kValid};
  EXPECT_EQ(expert.num_experts(), 4);
  EXPECT_EQ(expert.d_model(), 8);
  EXPECT_EQ(expert.d_ff(), 16);
  EXPECT_EQ(expert.config().seed, 1u);
}

TYPED_TEST(ExpertConfigTest, LinearRejectsEmptyShapes) {
  using S = TypeParam;
  expect_throw_containing<moe::config_error>([] { moe::LinearExpert<S>{with(kValid, 0, 8, 16)}; },
                                             {"LinearExpert", "num_experts = 0"});
  expect_throw_containing<moe::config_error>([] { moe::LinearExpert<S>{with(kValid, -2, 8, 16)}; },
                                             {"LinearExpert", "num_experts = -2"});
  expect_throw_containing<moe::config_error>([] { moe::LinearExpert<S>{with(kValid, 4, 0, 16)}; },
                                             {"LinearExpert", "d_model = 0"});
}

TYPED_TEST(ExpertConfigTest, FfnRejectsEmptyShapes) {
  using S = TypeParam;
  using Ffn = moe::SiluExpert<S>;
  expect_throw_containing<moe::config_error>([] { Ffn{with(kValid, 0, 8, 16)}; }, {"FfnExpert", "num_experts = 0"});
  expect_throw_containing<moe::config_error>([] { Ffn{with(kValid, 4, 0, 16)}; }, {"FfnExpert", "d_model = 0"});
  expect_throw_containing<moe::config_error>([] { Ffn{with(kValid, 4, 8, 0)}; }, {"FfnExpert", "d_ff = 0"});
  expect_throw_containing<moe::config_error>([] { Ffn{with(kValid, 4, 8, 0, true)}; }, {"FfnExpert", "d_ff = 0"});
  expect_throw_containing<moe::config_error>([] { Ffn{with(kValid, 4, 8, -1)}; }, {"FfnExpert", "d_ff = -1"});
}

TYPED_TEST(ExpertConfigTest, GatedRejectsEmptyShapesAndBias) {
  using S = TypeParam;
  using Gated = moe::SwiGluExpert<S>;
  expect_throw_containing<moe::config_error>([] { Gated{with(kValid, 0, 8, 16)}; },
                                             {"GatedExpert", "num_experts = 0"});
  expect_throw_containing<moe::config_error>([] { Gated{with(kValid, 4, 0, 16)}; }, {"GatedExpert", "d_model = 0"});
  expect_throw_containing<moe::config_error>([] { Gated{with(kValid, 4, 8, 0)}; }, {"GatedExpert", "d_ff = 0"});
  expect_throw_containing<moe::config_error>([] { Gated{with(kValid, 4, 8, 16, true)}; },
                                             {"GatedExpert", "bias = true"});
}

TEST(ExpertConfig, ConfigErrorIsAnInvalidArgument) {
  EXPECT_THROW(moe::LinearExpert<double>{ExpertConfig{}}, std::invalid_argument);
}

}  // namespace

// Init::zeros (for weights about to be loaded) draws nothing: every parameter is zero; the default
// draws U(±1/√fan_in).
TEST(ExpertConfig, InitZerosLeavesEveryParameterZero) {
  moe::ExpertConfig config{.num_experts = 3, .d_model = 8, .d_ff = 16, .seed = 5};
  const auto largest = [](const auto& bank) { return bank.all().cwiseAbs().maxCoeff(); };
  const moe::SwiGluExpert<float> gated_drawn(config);
  config.init = moe::Init::zeros;
  const moe::SwiGluExpert<float> gated(config);
  EXPECT_EQ(largest(gated.w1()) + largest(gated.w2()) + largest(gated.w3()), 0.0f);
  EXPECT_GT(largest(gated_drawn.w1()), 0.0f);
  config.bias = true;
  const moe::SiluExpert<float> ffn(config);
  EXPECT_EQ(largest(ffn.w1()) + largest(ffn.w2()) + largest(ffn.b1()) + largest(ffn.b2()), 0.0f);
  const moe::LinearExpert<float> linear(config);
  EXPECT_EQ(largest(linear.weight()) + largest(linear.bias()), 0.0f);
}
