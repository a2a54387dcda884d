// The optimizers' step contract, the same checks for each (support/optimizer_checks.hpp): a step
// descends a convex quadratic, the same steps give the same bits, a non-finite gradient and lists
// that disagree (with each other, or with the first step's) throw and change nothing. The formulas
// of each optimizer are checked in its own test.
#include <moe/train/adam.hpp>
#include <moe/train/sgd.hpp>

#include "support/optimizer_checks.hpp"

#include <gtest/gtest.h>

namespace MOE_TEST_FILE_ID {

struct PlainSgd {
  static constexpr const char* kWho = "Sgd::step";
  template <class S>
  static moe::Sgd<S> make() {
    return moe::Sgd<S>({.lr = 0.1});
  }
};

struct MomentumSgd {
  static constexpr const char* kWho = "Sgd::step";
  template <class S>
  static moe::Sgd<S> make() {
    return moe::Sgd<S>({.lr = 0.05, .momentum = 0.9});
  }
};

struct NesterovSgd {
  static constexpr const char* kWho = "Sgd::step";
  template <class S>
  static moe::Sgd<S> make() {
    return moe::Sgd<S>({.lr = 0.05, .momentum = 0.9, .nesterov = true});
  }
};

// With L2 decay through the gradient: 0.01·|θ| cannot turn a gradient of at least 0.15 around.
struct L2Adam {
  static constexpr const char* kWho = "Adam::step";
  template <class S>
  static moe::Adam<S> make() {
    return moe::Adam<S>({.lr = 0.05, .weight_decay = 0.01});
  }
};

struct AdamW {
  static constexpr const char* kWho = "AdamW::step";
  template <class S>
  static moe::Adam<S> make() {
    return moe::adamw<S>({.lr = 0.05, .weight_decay = 0.01});
  }
};

template <class C, class S>
struct On {
  using Case = C;
  using Scalar = S;
};

using Cases = ::testing::Types<On<PlainSgd, float>, On<PlainSgd, double>, On<MomentumSgd, float>,
                               On<MomentumSgd, double>, On<NesterovSgd, float>, On<NesterovSgd, double>,
                               On<L2Adam, float>, On<L2Adam, double>, On<AdamW, float>, On<AdamW, double>>;

template <class T>
class OptimizerContractTest : public ::testing::Test {};
TYPED_TEST_SUITE(OptimizerContractTest, Cases);

TYPED_TEST(OptimizerContractTest, StepsDescendAConvexQuadratic) {
  moe::test::check_descends<typename TypeParam::Case, typename TypeParam::Scalar>();
}

TYPED_TEST(OptimizerContractTest, TheSameStepsGiveTheSameBits) {
  moe::test::check_same_steps_same_bits<typename TypeParam::Case, typename TypeParam::Scalar>();
}

TYPED_TEST(OptimizerContractTest, NonFiniteGradientThrowsAndChangesNothing) {
  moe::test::check_non_finite_gradient<typename TypeParam::Case, typename TypeParam::Scalar>();
}

TYPED_TEST(OptimizerContractTest, MismatchedListsThrowAndChangeNothing) {
  moe::test::check_mismatched_lists<typename TypeParam::Case, typename TypeParam::Scalar>();
}

TYPED_TEST(OptimizerContractTest, TheFirstStepFixesTheParameterList) {
  moe::test::check_fixed_parameter_list<typename TypeParam::Case, typename TypeParam::Scalar>();
}

}  // namespace
