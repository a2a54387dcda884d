// The layers the tests of tests/layer/ run: small odd shapes (T = 7, d_model = 8, d_ff = 16, E = 4,
// k = 2) and the routers of the literature. Kept to five layer types per scalar, because every
// SparseMoE<Expert, Gate> instantiates its own Eigen products and the suite has to compile quickly.
#pragma once

#include <moe/moe.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace moe::test::cases {

inline constexpr Index kTokens = 7, kDModel = 8, kDff = 16, kExperts = 4, kTopK = 2;
inline constexpr Index kManyTokens = 300;  // crosses the shared experts' row tiles of 128

template <class S> using MixtralLayer = SparseMoE<SwiGluExpert<S>, TopKGate<S>>;   // also Qwen2
template <class S> using SwitchLayer = SparseMoE<ReluExpert<S>, TopKGate<S>>;
template <class S> using DeepSeekLayer = SparseMoE<GeGluExpert<S>, TopKGate<S>>;
template <class S> using DenseLayer = SparseMoE<LinearExpert<S>, DenseGate<S>>;
template <class S> using ExpertChoiceLayer = SparseMoE<ReluExpert<S>, ExpertChoiceGate<S>>;

inline ExpertConfig experts_config(Index num_experts = kExperts, bool bias = false, std::uint64_t seed = 21) {
  return {.num_experts = num_experts, .d_model = kDModel, .d_ff = kDff, .bias = bias, .seed = seed};
}

// Mixtral: softmax over all experts, top-2, renormalised.
inline TopKGateConfig mixtral_config(Index top_k = kTopK) {
  return {.d_model = kDModel, .num_experts = kExperts, .top_k = top_k, .seed = 11};
}

template <class S>
MixtralLayer<S> mixtral_layer(const TopKGateConfig& config = mixtral_config()) {
  return MixtralLayer<S>(TopKGate<S>(config), SwiGluExpert<S>(experts_config(config.num_experts)));
}

// Switch: top-1, no renormalisation, capacity factor `factor`, FFN(ReLU) experts with biases (so
// that an expert run on a dropped token would show even where its weights cancel).
template <class S>
SwitchLayer<S> switch_layer(double factor) {
  return SwitchLayer<S>(switch_gate<S>(kDModel, kExperts, factor, /*seed=*/12),
                        ReluExpert<S>(experts_config(kExperts, /*bias=*/true)));
}

// DeepSeek-V3 style: sigmoid scores, a selection bias used only for choosing, 2 groups of 2 experts
// of which 1 is kept, renormalised and scaled by 2.5; plus 2 plain (ungated) shared experts.
template <class S>
DeepSeekLayer<S> deepseek_layer() {
  TopKGate<S> gate({.d_model = kDModel,
                    .num_experts = kExperts,
                    .top_k = kTopK,
                    .scoring = Scoring::sigmoid,
                    .normalize = true,
                    .scale = 2.5,
                    .selection_bias = true,
                    .n_group = 2,
                    .topk_group = 1,
                    .seed = 13});
  gate.selection_bias() << S(0.3), S(-0.2), S(0.1), S(-0.4);
  return DeepSeekLayer<S>(std::move(gate), GeGluExpert<S>(experts_config()),
                          SharedExperts<GeGluExpert<S>>(GeGluExpert<S>(experts_config(2, false, 31))));
}

// Qwen2-MoE style: softmax, top-2 without renormalisation, one shared expert behind a sigmoid gate.
template <class S>
MixtralLayer<S> qwen2_layer() {
  return MixtralLayer<S>(
      TopKGate<S>({.d_model = kDModel, .num_experts = kExperts, .top_k = kTopK, .normalize = false, .seed = 14}),
      SwiGluExpert<S>(experts_config()),
      SharedExperts<SwiGluExpert<S>>(SwiGluExpert<S>(experts_config(1, false, 32)), /*gated=*/true, /*seed=*/33));
}

// The classic dense mixture: every token to every expert, linear experts with biases.
template <class S>
DenseLayer<S> dense_layer() {
  return DenseLayer<S>(DenseGate<S>({.d_model = kDModel, .num_experts = kExperts, .seed = 15}),
                       LinearExpert<S>(experts_config(kExperts, /*bias=*/true)));
}

// Expert choice with capacity factor `factor`; optionally with one plain shared expert.
template <class S>
ExpertChoiceLayer<S> expert_choice_layer(double factor, bool with_shared = false) {
  ExpertChoiceGate<S> gate({.d_model = kDModel, .num_experts = kExperts, .capacity_factor = factor, .seed = 16});
  ReluExpert<S> experts(experts_config(kExperts, /*bias=*/true));
  if (!with_shared) return ExpertChoiceLayer<S>(std::move(gate), std::move(experts));
  return ExpertChoiceLayer<S>(std::move(gate), std::move(experts),
                              SharedExperts<ReluExpert<S>>(ReluExpert<S>(experts_config(1, true, 34))));
}

template <class S>
constexpr S nan() {
  return std::numeric_limits<S>::quiet_NaN();
}

// Whether a and b have the same shape and the same bits (NaN-safe, unlike ==).
template <class A, class B>
bool same_bits(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b) {
  static_assert(std::is_same_v<typename A::Scalar, typename B::Scalar>);
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < a.cols(); ++j)
      if (const typename A::Scalar u = a(i, j), v = b(i, j); std::memcmp(&u, &v, sizeof u) != 0) return false;
  return true;
}

template <class S>
void expect_same_plan(const RoutingPlan<S>& a, const RoutingPlan<S>& b) {
  EXPECT_EQ(a.num_experts, b.num_experts);
  EXPECT_TRUE(same_bits(a.expert, b.expert)) << "expert ids differ";
  EXPECT_TRUE(same_bits(a.weight, b.weight)) << "weights differ";
  EXPECT_TRUE(same_bits(a.dropped, b.dropped)) << "dropped marks differ";
  EXPECT_TRUE(same_bits(a.logits, b.logits)) << "logits differ";
  EXPECT_TRUE(same_bits(a.scores, b.scores)) << "scores differ";
}

// Equal statistics; the mean entropy within `entropy_tolerance` (relative; 0: the same bits).
inline void expect_same_stats(const RoutingStats& a, const RoutingStats& b, double entropy_tolerance = 0) {
  EXPECT_EQ(a.num_tokens, b.num_tokens);
  EXPECT_EQ(a.assignments, b.assignments);
  EXPECT_EQ(a.dropped, b.dropped);
  EXPECT_EQ(a.tokens_per_expert, b.tokens_per_expert);
  EXPECT_EQ(a.load_fraction, b.load_fraction);
  EXPECT_EQ(a.unused_experts, b.unused_experts);
  EXPECT_EQ(a.max_load, b.max_load);
  EXPECT_EQ(a.mean_load, b.mean_load);
  if (entropy_tolerance == 0)
    EXPECT_EQ(a.router_entropy, b.router_entropy);
  else
    EXPECT_NEAR(a.router_entropy, b.router_entropy, entropy_tolerance * std::max(1.0, b.router_entropy));
}

}  // namespace moe::test::cases
