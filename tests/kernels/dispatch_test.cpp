// build_dispatch and gather_rows: the stable counting sort of active slots by expert, checked
// against hand-computed plans and a bucket-by-bucket reference on seeded random plans.
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
using moe::test::reference_dispatch;
using Ints = std::vector<std::int32_t>;
using Offsets = std::vector<Index>;

constexpr Index kTokens = 7, kSlots = 2, kExperts = 4, kModel = 8;
constexpr std::int32_t X = kEmptySlot;

template <class S>
class DispatchTest : public ::testing::Test {};
TYPED_TEST_SUITE(DispatchTest, moe::test::Scalars);

TYPED_TEST(DispatchTest, HandBuiltPlan) {
  const auto plan = hand_plan<TypeParam>();
  DispatchPlan d;
  moe::kernels::build_dispatch(plan, d);
  // Expert-major; inside an expert, token order.
  EXPECT_EQ(d.offset, (Offsets{0, 4, 7, 7, 10}));
  EXPECT_EQ(d.token, (Ints{0, 2, 5, 6, /**/ 0, 1, 3, /**/ 1, 5, 6}));
  // Slot (t, j) -> dispatch row; empty and dropped slots have none.
  EXPECT_EQ(d.row, (Ints{4, 0, /**/ 7, 5, /**/ 1, X, /**/ 6, X, /**/ X, X, /**/ 2, 8, /**/ 9, 3}));
  EXPECT_EQ(d.num_rows(), 10);
  EXPECT_EQ(d.rows_of(0), 4);
  EXPECT_EQ(d.rows_of(1), 3);
  EXPECT_EQ(d.rows_of(2), 0) << "an expert with no tokens owns an empty block";
  EXPECT_EQ(d.rows_of(3), 3);
}

TYPED_TEST(DispatchTest, SlotOrderInsideATokenDecidesOnlyWhenTheTokenRepeats) {
  // A gate never sends a token to one expert twice, but the order is still defined: slot order.
  using S = TypeParam;
  RoutingPlan<S> plan;
  plan.reset(2, 3, 2);
  plan.expert << 1, 0, 1,  //
      0, 1, 0;
  DispatchPlan d;
  moe::kernels::build_dispatch(plan, d);
  EXPECT_EQ(d.offset, (Offsets{0, 3, 6}));
  EXPECT_EQ(d.token, (Ints{0, 1, 1, 0, 0, 1}));
  EXPECT_EQ(d.row, (Ints{3, 0, 4, 1, 5, 2}));
}

TYPED_TEST(DispatchTest, ZeroTokens) {
  using S = TypeParam;
  RoutingPlan<S> plan;
  plan.reset(0, kSlots, kExperts);
  DispatchPlan d;
  moe::kernels::build_dispatch(plan, d);
  EXPECT_EQ(d.offset, (Offsets{0, 0, 0, 0, 0}));
  EXPECT_TRUE(d.token.empty());
  EXPECT_TRUE(d.row.empty());
  EXPECT_EQ(d.num_rows(), 0);
}

TYPED_TEST(DispatchTest, EverySlotEmptyOrDropped) {
  using S = TypeParam;
  RoutingPlan<S> plan;
  plan.reset(3, kSlots, kExperts);  // all slots start empty
  plan.expert(1, 0) = 2;
  plan.dropped(1, 0) = 1;
  DispatchPlan d;
  moe::kernels::build_dispatch(plan, d);
  EXPECT_EQ(d.offset, (Offsets{0, 0, 0, 0, 0}));
  EXPECT_TRUE(d.token.empty());
  EXPECT_EQ(d.row, Ints(6, X));
}

TYPED_TEST(DispatchTest, ReusedPlanHoldsNothingStale) {
  using S = TypeParam;
  DispatchPlan d;
  moe::kernels::build_dispatch(random_plan<S>(20, 3, 6, 1), d);
  const auto small = hand_plan<S>();
  moe::kernels::build_dispatch(small, d);
  const DispatchPlan expected = reference_dispatch(small);
  EXPECT_EQ(d.offset, expected.offset);
  EXPECT_EQ(d.token, expected.token);
  EXPECT_EQ(d.row, expected.row);
}

TYPED_TEST(DispatchTest, MatchesReferenceOnRandomPlans) {
  using S = TypeParam;
  struct Shape {
    Index T, k, E;
  };
  for (const Shape s : {Shape{kTokens, kSlots, kExperts}, Shape{kTokens, 1, kExperts}, Shape{kTokens, kExperts, kExperts},
                        Shape{1, 2, 3}, Shape{33, 2, 8}})
    for (std::uint64_t seed = 0; seed < 5; ++seed) {
      SCOPED_TRACE(::testing::Message() << "T = " << s.T << ", k = " << s.k << ", E = " << s.E << ", seed " << seed);
      const auto plan = random_plan<S>(s.T, s.k, s.E, seed);
      DispatchPlan d;
      moe::kernels::build_dispatch(plan, d);
      const DispatchPlan expected = reference_dispatch(plan);
      EXPECT_EQ(d.offset, expected.offset);
      EXPECT_EQ(d.token, expected.token);
      EXPECT_EQ(d.row, expected.row);
      // The mapping is consistent both ways.
      for (Index t = 0; t < s.T; ++t)
        for (Index j = 0; j < s.k; ++j) {
          const auto r = d.row[static_cast<std::size_t>(t * s.k + j)];
          if (r == X) continue;
          EXPECT_EQ(d.token[static_cast<std::size_t>(r)], t);
          const Index e = plan.expert(t, j);
          EXPECT_GE(r, d.offset[static_cast<std::size_t>(e)]);
          EXPECT_LT(r, d.offset[static_cast<std::size_t>(e + 1)]);
        }
    }
}

TYPED_TEST(DispatchTest, GatherRowsCopiesTokenRows) {
  using S = TypeParam;
  const auto plan = hand_plan<S>();
  DispatchPlan d;
  moe::kernels::build_dispatch(plan, d);
  ASSERT_EQ(d.num_rows(), 10);
  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 3);
  // The layer gathers into the top rows of a larger, reused buffer.
  const S nan = std::numeric_limits<S>::quiet_NaN();
  RowMatrix<S> buffer = RowMatrix<S>::Constant(d.num_rows() + 3, kModel, nan);
  moe::kernels::gather_rows<S>(x, d.token, buffer.topRows(d.num_rows()));
  const Index expected_token[] = {0, 2, 5, 6, 0, 1, 3, 1, 5, 6};
  for (Index r = 0; r < d.num_rows(); ++r) EXPECT_EQ(buffer.row(r), x.row(expected_token[r])) << "row " << r;
  EXPECT_TRUE(buffer.bottomRows(3).array().isNaN().all()) << "rows past the dispatch rows are not written";

  // Expert e's rows are the contiguous block middleRows(offset[e], rows_of(e)).
  const auto block = buffer.middleRows(d.offset[3], d.rows_of(3));
  EXPECT_EQ(block.row(0), x.row(1));
  EXPECT_EQ(block.row(2), x.row(6));
}

TYPED_TEST(DispatchTest, GatherNothing) {
  using S = TypeParam;
  const RowMatrix<S> x = moe::test::random_matrix<S>(kTokens, kModel, 4);
  RowMatrix<S> buffer(0, kModel);
  moe::kernels::gather_rows<S>(x, {}, buffer);
  EXPECT_EQ(buffer.rows(), 0);
}

}  // namespace
