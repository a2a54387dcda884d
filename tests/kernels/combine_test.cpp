// combine: y[t] = Σ_j weight[t, j] · expert_out[row(t, j)] over active slots, against a per-token
// loop that never looks at the dispatch plan.
#include <moe/kernels/combine.hpp>
#include <moe/kernels/dispatch.hpp>

#include "support/compare.hpp"
#include "support/plans.hpp"
#include "support/reference_exchange.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::DispatchPlan;
using moe::Index;
using moe::kEmptySlot;
using moe::RoutingPlan;
using moe::RowMatrix;
using moe::test::hand_plan;
using moe::test::random_plan;
using moe::test::reference_combine;
using moe::test::stand_in;

constexpr Index kTokens = 7, kSlots = 2, kExperts = 4, kModel = 8;
constexpr std::int32_t X = kEmptySlot;

// Runs the stand-in experts the way the layer runs experts: gather, then each expert on its block.
template <class S>
RowMatrix<S> run_stand_in_experts(const RowMatrix<S>& x, const DispatchPlan& d, Index E) {
  RowMatrix<S> buffer(d.num_rows(), x.cols()), out(d.num_rows(), x.cols());
  moe::kernels::gather_rows<S>(x, d.token, buffer);
  for (Index e = 0; e < E; ++e) {
    const auto in = buffer.middleRows(d.offset[static_cast<std::size_t>(e)], d.rows_of(e));
    auto block = out.middleRows(d.offset[static_cast<std::size_t>(e)], d.rows_of(e));
    for (Index r = 0; r < in.rows(); ++r)
      for (Index c = 0; c < in.cols(); ++c) block(r, c) = static_cast<S>(stand_in(e, static_cast<double>(in(r, c))));
  }
  return out;
}

template <class S>
class CombineTest : public ::testing::Test {};
TYPED_TEST_SUITE(CombineTest, moe::test::Scalars);

TYPED_TEST(CombineTest, HandBuiltPlanMatchesPerTokenLoop) {
  using S = TypeParam;
  const auto plan = hand_plan<S>();
  DispatchPlan d;
  moe::kernels::build_dispatch(plan, d);
  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 1);
  const RowMatrix<S> out = run_stand_in_experts(x, d, kExperts);
  // y is overwritten: NaN before the call must not survive anywhere, not even in token 4.
  RowMatrix<S> y = RowMatrix<S>::Constant(kTokens, kModel, std::numeric_limits<S>::quiet_NaN());
  moe::kernels::combine<S>(plan.weight, d, out, y);
  ASSERT_TRUE(y.allFinite());
  MOE_EXPECT_CLOSE(S, y, reference_combine(plan, x));
  EXPECT_TRUE(y.row(4).isZero(0)) << "a token with no active slot gets zero";

  // Token 3: only slot 0 counts (slot 1 is dropped): y[3] = 0.7 · f_1(x[3]).
  for (Index c = 0; c < kModel; ++c)
    EXPECT_NEAR(y(3, c), S(0.7) * static_cast<S>(stand_in(1, static_cast<double>(x(3, c)))), 1e-6) << c;
}

TYPED_TEST(CombineTest, RandomPlansMatchPerTokenLoop) {
  using S = TypeParam;
  struct Shape {
    Index T, k, E;
  };
  for (const Shape s : {Shape{kTokens, kSlots, kExperts}, Shape{kTokens, 1, kExperts}, Shape{kTokens, kExperts, kExperts},
                        Shape{1, 2, 3}, Shape{33, 2, 8}})
    for (std::uint64_t seed = 0; seed < 3; ++seed) {
      SCOPED_TRACE(::testing::Message() << "T = " << s.T << ", k = " << s.k << ", E = " << s.E << ", seed " << seed);
      const auto plan = random_plan<S>(s.T, s.k, s.E, seed);
      DispatchPlan d;
      moe::kernels::build_dispatch(plan, d);
      const RowMatrix<S> x = moe::test::random_matrix<S>(s.T, kModel, 10 + seed);
      const RowMatrix<S> out = run_stand_in_experts(x, d, s.E);
      RowMatrix<S> y = RowMatrix<S>::Constant(s.T, kModel, std::numeric_limits<S>::quiet_NaN());
      moe::kernels::combine<S>(plan.weight, d, out, y);
      ASSERT_TRUE(y.allFinite());
      MOE_EXPECT_CLOSE(S, y, reference_combine(plan, x));
    }
}

TYPED_TEST(CombineTest, ReadsExpertOutputThroughTheRowMapping) {
  // Arbitrary expert output rows, combined per token through dispatch.row (no stand-in experts).
  using S = TypeParam;
  const auto plan = hand_plan<S>();
  DispatchPlan d;
  moe::kernels::build_dispatch(plan, d);
  const RowMatrix<S> out = moe::test::random_matrix<S>(d.num_rows(), kModel, 2);
  RowMatrix<S> y(kTokens, kModel);
  moe::kernels::combine<S>(plan.weight, d, out, y);
  // Rows by hand (see dispatch_test): (0,0)→4 (0,1)→0, (5,0)→2 (5,1)→8, (2,0)→1, token 4 none.
  RowMatrix<double> expected = RowMatrix<double>::Zero(3, kModel);
  for (Index c = 0; c < kModel; ++c) {
    expected(0, c) = double(plan.weight(0, 0)) * double(out(4, c)) + double(plan.weight(0, 1)) * double(out(0, c));
    expected(1, c) = double(plan.weight(5, 0)) * double(out(2, c)) + double(plan.weight(5, 1)) * double(out(8, c));
    expected(2, c) = double(plan.weight(2, 0)) * double(out(1, c));
  }
  MOE_EXPECT_CLOSE(S, y.row(0), expected.row(0));
  MOE_EXPECT_CLOSE(S, y.row(5), expected.row(1));
  MOE_EXPECT_CLOSE(S, y.row(2), expected.row(2));
  EXPECT_TRUE(y.row(4).isZero(0));
}

TYPED_TEST(CombineTest, ZeroTokens) {
  using S = TypeParam;
  RoutingPlan<S> plan;
  plan.reset(0, kSlots, kExperts);
  DispatchPlan d;
  moe::kernels::build_dispatch(plan, d);
  const RowMatrix<S> out(0, kModel);
  RowMatrix<S> y(0, kModel);
  moe::kernels::combine<S>(plan.weight, d, out, y);
  EXPECT_EQ(y.rows(), 0);
}

TYPED_TEST(CombineTest, WritesIntoARowBlock) {
  using S = TypeParam;
  const auto plan = hand_plan<S>();
  DispatchPlan d;
  moe::kernels::build_dispatch(plan, d);
  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 5);
  const RowMatrix<S> out = run_stand_in_experts(x, d, kExperts);
  const S sentinel = S(-77);
  RowMatrix<S> big = RowMatrix<S>::Constant(kTokens + 3, kModel, sentinel);
  moe::kernels::combine<S>(plan.weight, d, out, big.middleRows(1, kTokens));
  MOE_EXPECT_CLOSE(S, big.middleRows(1, kTokens), reference_combine(plan, x));
  EXPECT_TRUE((big.row(0).array() == sentinel).all());
  EXPECT_TRUE((big.bottomRows(2).array() == sentinel).all());
}

}  // namespace

namespace MOE_TEST_FILE_ID {

// Slots are summed in ascending order, where the order changes the result: the rows 1, 1e20, −1e20
// give (1 + 1e20) − 1e20 = 0 in order, and 1 in reverse. Bit for bit, combine and sum_slots.
TYPED_TEST(CombineTest, SumsSlotsInAscendingOrderBitForBit) {
  using S = TypeParam;
  RoutingPlan<S> plan;
  plan.reset(1, 3, 3);
  for (Index j = 0; j < 3; ++j) plan.expert(0, j) = static_cast<std::int32_t>(j);
  plan.weight.setOnes();
  DispatchPlan d;
  moe::kernels::build_dispatch(plan, d);
  RowMatrix<S> out(3, 1);
  out << S(1), S(1e20), S(-1e20);
  const S ascending = (S(0) + out(d.row[0], 0) + out(d.row[1], 0)) + out(d.row[2], 0);
  ASSERT_EQ(ascending, S(0));
  RowMatrix<S> y(1, 1), summed(1, 1);
  moe::kernels::combine<S>(plan.weight, d, out, y);
  moe::kernels::sum_slots<S>(d, 3, out, summed);
  EXPECT_EQ(y(0, 0), ascending);
  EXPECT_EQ(summed(0, 0), ascending);
}

}  // namespace MOE_TEST_FILE_ID
