// The AuxLoss contract, the same checks for every auxiliary loss of the library (support/
// loss_checks.hpp): gradients against finite differences (moe::testing::check_aux_loss) and
// accumulated, T = 0 and all-padding give 0 and no gradient, the coefficient is linear, wrong mask
// sizes and gradient shapes throw. Reference values and what is particular to a loss stay in its
// own test.
#include <moe/concepts.hpp>
#include <moe/loss/importance_load.hpp>
#include <moe/loss/load_balancing.hpp>
#include <moe/loss/router_z_loss.hpp>
#include <moe/loss/sequence_balance.hpp>

#include "loss/loss_cases.hpp"
#include "support/loss_checks.hpp"

#include <gtest/gtest.h>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::Scoring;
namespace tl = moe::test::loss;

constexpr Index kExperts = 4, kTopK = 2;

// Selected (not dropped) and dropped slots count alike in f; an empty slot does not count.
template <class S>
moe::RoutingPlan<S> plan_with_drop_and_empty_slot(Index T, Scoring scoring, std::uint64_t seed) {
  auto plan = tl::make_plan<S>(tl::spaced_logits(T, kExperts, seed), kTopK, scoring);
  if (T > 4) {
    plan.dropped(2, 1) = 1;
    plan.expert(4, 1) = moe::kEmptySlot;
  }
  return plan;
}

template <moe::LoadBalancingConfig::Form form>
struct LoadBalancing {
  static constexpr Index kTokens = 9;
  template <class S>
  static moe::LoadBalancingLoss<S> make(double scale) {
    return moe::LoadBalancingLoss<S>({.coefficient = 0.5 * scale, .form = form});
  }
  template <class S>
  static moe::RoutingPlan<S> plan(Index T) {
    return plan_with_drop_and_empty_slot<S>(T, Scoring::softmax, 81);
  }
};

struct ImportanceLoad {
  static constexpr Index kTokens = 9;
  template <class S>
  static moe::ImportanceLoadLoss<S> make(double scale) {
    return moe::ImportanceLoadLoss<S>({.importance_coefficient = 0.3 * scale, .load_coefficient = 0.7 * scale});
  }
  template <class S>
  static moe::RoutingPlan<S> plan(Index T) {
    return tl::noisy_plan<S>(T, kExperts, kTopK, 82);
  }
};

struct RouterZ {
  static constexpr Index kTokens = 9;
  template <class S>
  static moe::RouterZLoss<S> make(double scale) {
    return moe::RouterZLoss<S>({.coefficient = 0.2 * scale});
  }
  template <class S>
  static moe::RoutingPlan<S> plan(Index T) {
    return plan_with_drop_and_empty_slot<S>(T, Scoring::softmax, 83);
  }
};

struct SequenceBalance {
  static constexpr Index kTokens = 9;  // three sequences of three
  template <class S>
  static moe::SequenceBalanceLoss<S> make(double scale) {
    return moe::SequenceBalanceLoss<S>({.coefficient = 0.4 * scale, .sequence_length = 3});
  }
  template <class S>
  static moe::RoutingPlan<S> plan(Index T) {
    return plan_with_drop_and_empty_slot<S>(T, Scoring::sigmoid, 84);
  }
};

template <class C, class S>
struct On {
  using Case = C;
  using Scalar = S;
  static_assert(moe::AuxLoss<decltype(C::template make<S>(1))>);
};

using SwitchForm = LoadBalancing<moe::LoadBalancingConfig::Form::switch_gshard>;
using HfForm = LoadBalancing<moe::LoadBalancingConfig::Form::hf>;
using Cases = ::testing::Types<On<SwitchForm, float>, On<SwitchForm, double>, On<HfForm, float>, On<HfForm, double>,
                               On<ImportanceLoad, float>, On<ImportanceLoad, double>, On<RouterZ, float>,
                               On<RouterZ, double>, On<SequenceBalance, float>, On<SequenceBalance, double>>;

template <class T>
class LossContractTest : public ::testing::Test {};
TYPED_TEST_SUITE(LossContractTest, Cases);

TYPED_TEST(LossContractTest, GradientsMatchFiniteDifferences) {
  moe::test::check_against_finite_differences<typename TypeParam::Case, typename TypeParam::Scalar>();
}

TYPED_TEST(LossContractTest, GradientsAccumulate) {
  moe::test::check_accumulates<typename TypeParam::Case, typename TypeParam::Scalar>();
}

TYPED_TEST(LossContractTest, NoTokensGiveZeroAndTouchNothing) {
  moe::test::check_no_tokens<typename TypeParam::Case, typename TypeParam::Scalar>();
}

TYPED_TEST(LossContractTest, AllPaddingGivesZeroAndNoGradient) {
  moe::test::check_all_padding<typename TypeParam::Case, typename TypeParam::Scalar>();
}

TYPED_TEST(LossContractTest, CoefficientScalesValueAndGradientsLinearly) {
  moe::test::check_coefficient_is_linear<typename TypeParam::Case, typename TypeParam::Scalar>();
}

TYPED_TEST(LossContractTest, MaskOfTheWrongSizeThrows) {
  moe::test::check_mask_size<typename TypeParam::Case, typename TypeParam::Scalar>();
}

TYPED_TEST(LossContractTest, GradientsOfTheWrongShapeThrow) {
  moe::test::check_gradient_shapes<typename TypeParam::Case, typename TypeParam::Scalar>();
}

}  // namespace
