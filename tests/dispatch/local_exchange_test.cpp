// LocalExchange: dispatch (a stable sort of the active slots by expert, rows gathered, scales),
// combine and its scaled form, combine_backward and dispatch_backward against plain loops over the
// plan (tests/support/reference_exchange.hpp), and dispatch_backward as the adjoint of the gather.
#include <moe/dispatch/local_exchange.hpp>

#include "support/compare.hpp"
#include "support/plans.hpp"
#include "support/reference_exchange.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::DispatchPlan;
using moe::ExpertBatch;
using moe::Index;
using moe::kEmptySlot;
using moe::LocalExchange;
using moe::RoutingPlan;
using moe::RowMatrix;
using moe::test::random_matrix;
using moe::test::reference_dispatch;

constexpr Index kModel = 40;

struct Shape {
  Index T, k, E;
};
// Odd shapes: top-2 of 5, top-1, k = E, one token, and more tokens than rows of a tile.
constexpr Shape kShapes[] = {{37, 2, 5}, {37, 1, 5}, {37, 5, 5}, {1, 2, 3}, {101, 3, 7}};

template <class S>
class LocalExchangeTest : public ::testing::Test {};
TYPED_TEST_SUITE(LocalExchangeTest, moe::test::Scalars);

template <class S>
RowMatrix<S> nan_matrix(Index rows, Index cols) {
  return RowMatrix<S>::Constant(rows, cols, std::numeric_limits<S>::quiet_NaN());
}

// The batch dispatch must make, from the bucket-by-bucket reference: the record, the offsets, the
// gathered rows, and the scales (the plan's weights, or none).
template <class S>
void expect_dispatched(const RoutingPlan<S>& plan, const RowMatrix<S>& x, bool with_scales,
                       const LocalExchange::Record& record, const ExpertBatch<S>& batch) {
  const DispatchPlan expected = reference_dispatch(plan);
  EXPECT_EQ(record.offset, expected.offset);
  EXPECT_EQ(record.token, expected.token);
  EXPECT_EQ(record.row, expected.row);
  EXPECT_EQ(batch.first_expert, 0);
  EXPECT_EQ(batch.offset, expected.offset);
  EXPECT_EQ(batch.num_rows(), expected.num_rows());
  for (Index r = 0; r < expected.num_rows(); ++r)
    EXPECT_EQ(batch.rows.row(r), x.row(expected.token[static_cast<std::size_t>(r)])) << "row " << r;
  if (!with_scales) {
    EXPECT_TRUE(batch.scale.empty());
    return;
  }
  ASSERT_EQ(static_cast<Index>(batch.scale.size()), expected.num_rows());
  const Index k = plan.slots_per_token();
  for (Index t = 0; t < plan.num_tokens(); ++t)
    for (Index j = 0; j < k; ++j)
      if (const auto r = expected.row[static_cast<std::size_t>(t * k + j)]; r != kEmptySlot) {
        EXPECT_EQ(batch.scale[static_cast<std::size_t>(r)], plan.weight(t, j)) << "slot (" << t << ", " << j << ")";
      }
}

// The stand-in experts on the batch, as a runner would run experts: out[r] = f_i(rows[r]) for the
// rows of expert i, times the row's scale when `scaled`.
template <class S>
void run_stand_in_experts(ExpertBatch<S>& batch, bool scaled) {
  for (Index i = 0; i < batch.num_experts(); ++i)
    for (Index r = batch.begin(i); r < batch.begin(i + 1); ++r)
      for (Index c = 0; c < batch.rows.cols(); ++c) {
        const S f = static_cast<S>(moe::test::stand_in(i, static_cast<double>(batch.rows(r, c))));
        batch.out(r, c) = scaled ? batch.scale[static_cast<std::size_t>(r)] * f : f;
      }
  batch.scaled = scaled;
}

TYPED_TEST(LocalExchangeTest, OwnsEveryExpert) {
  const moe::ExpertRange owned = LocalExchange{}.owned(5);
  EXPECT_EQ(owned.first, 0);
  EXPECT_EQ(owned.count, 5);
}

// Dispatch on the hand-built plan (an expert with no rows, a token with none, an empty and a dropped
// slot), with and without scales, into a batch that held a broadcast before: the rows are gathered
// again, in the order worked out by hand in kernels/dispatch_test.cpp.
TYPED_TEST(LocalExchangeTest, DispatchIsAStableSortByExpert) {
  using S = TypeParam;
  const RoutingPlan<S> plan = moe::test::hand_plan<S>();
  const RowMatrix<S> x = random_matrix<S>(plan.num_tokens(), kModel, 1), other = random_matrix<S>(3, kModel, 2);
  for (const bool with_scales : {true, false}) {
    SCOPED_TRACE(with_scales ? "with scales" : "without scales");
    LocalExchange::Record record;
    ExpertBatch<S> batch;
    batch.broadcast(other, 4);
    LocalExchange{}.dispatch(plan, x, LocalExchange{}.owned(plan.num_experts), with_scales, record, batch);
    expect_dispatched(plan, x, with_scales, record, batch);
    EXPECT_EQ(batch.offset, (std::vector<Index>{0, 4, 7, 7, 10}));
    EXPECT_EQ(batch.rows_of(2), 0);
    const Index tokens[] = {0, 2, 5, 6, 0, 1, 3, 1, 5, 6};
    EXPECT_EQ(batch.input(0).data(), batch.rows.data()) << "the gathered rows, not the broadcast matrix";
    EXPECT_EQ(batch.input(3).data(), batch.rows.data() + 7 * kModel);
    for (Index r = 0; r < 10; ++r) EXPECT_EQ(batch.rows.row(r), x.row(tokens[r])) << "row " << r;
    if (with_scales) {
      EXPECT_EQ(batch.scale[4], plan.weight(0, 0));  // slot (0, 0) → expert 1's first row
      EXPECT_EQ(batch.scale[0], plan.weight(0, 1));  // slot (0, 1) → expert 0's first row
    }
  }
}

// Inside an expert, token order first, then slot order (a token sent twice to one expert).
TYPED_TEST(LocalExchangeTest, DispatchKeepsSlotOrderInsideAToken) {
  using S = TypeParam;
  RoutingPlan<S> plan;
  plan.reset(2, 3, 2);
  plan.expert << 1, 0, 1,  //
      0, 1, 0;
  plan.weight << S(1), S(2), S(3),  //
      S(4), S(5), S(6);
  const RowMatrix<S> x = random_matrix<S>(2, kModel, 3);
  LocalExchange::Record record;
  ExpertBatch<S> batch;
  LocalExchange{}.dispatch(plan, x, LocalExchange{}.owned(2), true, record, batch);
  expect_dispatched(plan, x, true, record, batch);
  EXPECT_EQ(batch.scale, (std::vector<S>{S(2), S(4), S(6), S(1), S(3), S(5)}));
}

// Seeded plans of every shape (about 10 % of slots empty, 15 % dropped), reusing one record and one
// batch from the largest shape down, as a layer does.
TYPED_TEST(LocalExchangeTest, DispatchMatchesTheReferenceOnRandomPlans) {
  using S = TypeParam;
  LocalExchange::Record record;
  ExpertBatch<S> batch;
  for (const bool with_scales : {true, false})
    for (const Shape s : kShapes) {
      SCOPED_TRACE(testing::Message() << "T " << s.T << ", k " << s.k << ", E " << s.E << (with_scales ? ", scales" : ""));
      const auto plan = moe::test::random_plan<S>(s.T, s.k, s.E, 7 + std::uint64_t(s.T));
      const RowMatrix<S> x = random_matrix<S>(s.T, kModel, 4);
      LocalExchange{}.dispatch(plan, x, LocalExchange{}.owned(s.E), with_scales, record, batch);
      expect_dispatched(plan, x, with_scales, record, batch);
    }
}

// combine: y[t] = Σ_j w[t, j] · out[row(t, j)] (overwritten); with batch.scaled, the rows summed
// unweighted — the same y when the experts scaled their outputs, the unweighted sum when they did
// not. Against the per-token loop over the plan with the stand-in experts.
TYPED_TEST(LocalExchangeTest, CombineMatchesAPerTokenLoop) {
  using S = TypeParam;
  for (const Shape s : kShapes) {
    SCOPED_TRACE(testing::Message() << "T " << s.T << ", k " << s.k << ", E " << s.E);
    const auto plan = moe::test::random_plan<S>(s.T, s.k, s.E, 11);
    const RowMatrix<S> x = random_matrix<S>(s.T, kModel, 5);
    const RowMatrix<double> weighted = moe::test::reference_combine(plan, x),
                            unweighted = moe::test::reference_combine(plan, x, /*weighted=*/false);
    LocalExchange::Record record;
    ExpertBatch<S> batch;
    LocalExchange{}.dispatch(plan, x, LocalExchange{}.owned(s.E), /*with_scales=*/true, record, batch);
    const auto combine = [&] {
      RowMatrix<S> y = nan_matrix<S>(s.T, kModel);
      LocalExchange{}.combine(plan, record, batch, y);
      EXPECT_TRUE(y.allFinite()) << "every row of y is written";
      return y;
    };
    run_stand_in_experts(batch, /*scaled=*/false);
    MOE_EXPECT_CLOSE(S, combine(), weighted);
    run_stand_in_experts(batch, /*scaled=*/true);
    MOE_EXPECT_CLOSE(S, combine(), weighted);
    run_stand_in_experts(batch, /*scaled=*/false);
    batch.scaled = true;
    MOE_EXPECT_CLOSE(S, combine(), unweighted);
  }
}

// combine_backward: d_out[row(t, j)] = w[t, j] · d_y[t] for every row, d_weight[t, j] = ⟨d_y[t],
// out[row(t, j)]⟩ and 0 for an empty or dropped slot (both overwritten), against loops over the plan.
TYPED_TEST(LocalExchangeTest, CombineBackwardMatchesAPerSlotLoop) {
  using S = TypeParam;
  for (const Shape s : kShapes) {
    SCOPED_TRACE(testing::Message() << "T " << s.T << ", k " << s.k << ", E " << s.E);
    const auto plan = moe::test::random_plan<S>(s.T, s.k, s.E, 13);
    const RowMatrix<S> x = random_matrix<S>(s.T, kModel, 6), d_y = random_matrix<S>(s.T, kModel, 7);
    LocalExchange::Record record;
    ExpertBatch<S> batch;
    LocalExchange{}.dispatch(plan, x, LocalExchange{}.owned(s.E), false, record, batch);
    run_stand_in_experts(batch, false);
    const Index rows = batch.num_rows();
    RowMatrix<S> d_out = nan_matrix<S>(rows, kModel), d_weight = nan_matrix<S>(s.T, s.k);
    LocalExchange{}.combine_backward(plan, record, batch, d_y, d_out, d_weight);

    const DispatchPlan expected = reference_dispatch(plan);
    RowMatrix<double> d_out_expected = RowMatrix<double>::Zero(rows, kModel), d_weight_expected = RowMatrix<double>::Zero(s.T, s.k);
    for (Index t = 0; t < s.T; ++t)
      for (Index j = 0; j < s.k; ++j) {
        if (!plan.active(t, j)) continue;
        const auto r = expected.row[static_cast<std::size_t>(t * s.k + j)];
        d_out_expected.row(r) = double(plan.weight(t, j)) * d_y.row(t).template cast<double>();
        for (Index c = 0; c < kModel; ++c)
          d_weight_expected(t, j) += double(d_y(t, c)) * double(S(moe::test::stand_in(plan.expert(t, j), double(x(t, c)))));
      }
    ASSERT_TRUE(d_out.allFinite()) << "every row of d_out is written";
    ASSERT_TRUE(d_weight.allFinite());
    MOE_EXPECT_CLOSE(S, d_out, d_out_expected);
    MOE_EXPECT_CLOSE(S, d_weight, d_weight_expected);
    for (Index t = 0; t < s.T; ++t)
      for (Index j = 0; j < s.k; ++j)
        if (!plan.active(t, j)) {
          EXPECT_EQ(d_weight(t, j), S(0)) << "slot (" << t << ", " << j << ")";
        }
  }
}

// ⟨a, b⟩ in long double, so that its own rounding stays well below a bound on S's.
template <class A, class B>
double inner(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  long double sum = 0;
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < a.cols(); ++j) sum += static_cast<long double>(a(i, j)) * static_cast<long double>(b(i, j));
  return static_cast<double>(sum);
}

// dispatch_backward: d_x[t] = Σ_j d_in[row(t, j)] (overwritten; 0 for a token with no row), against
// a loop over the plan; and it is the adjoint of dispatch's gather: ⟨gather(x), r⟩ = ⟨x,
// dispatch_backward(r)⟩ up to the rounding of d_x's sums of at most k terms (bound: 4·k·ε·‖x‖·‖r‖).
TYPED_TEST(LocalExchangeTest, DispatchBackwardIsTheAdjointOfTheGather) {
  using S = TypeParam;
  for (const Shape s : kShapes) {
    SCOPED_TRACE(testing::Message() << "T " << s.T << ", k " << s.k << ", E " << s.E);
    const auto plan = moe::test::random_plan<S>(s.T, s.k, s.E, 17);
    const RowMatrix<S> x = random_matrix<S>(s.T, kModel, 8);
    LocalExchange::Record record;
    ExpertBatch<S> batch;
    LocalExchange{}.dispatch(plan, x, LocalExchange{}.owned(s.E), false, record, batch);
    const Index rows = batch.num_rows();
    const RowMatrix<S> r = random_matrix<S>(rows, kModel, 9);
    RowMatrix<S> d_x = nan_matrix<S>(s.T, kModel);
    LocalExchange{}.dispatch_backward(plan, record, batch, r, d_x);
    ASSERT_TRUE(d_x.allFinite());

    const DispatchPlan expected = reference_dispatch(plan);
    RowMatrix<double> d_x_expected = RowMatrix<double>::Zero(s.T, kModel);
    for (Index t = 0; t < s.T; ++t)
      for (Index j = 0; j < s.k; ++j)
        if (const auto row = expected.row[static_cast<std::size_t>(t * s.k + j)]; row != kEmptySlot)
          d_x_expected.row(t) += r.row(row).template cast<double>();
    MOE_EXPECT_CLOSE(S, d_x, d_x_expected);

    const double gathered = inner(batch.rows.topRows(rows), r), scattered = inner(x, d_x);
    const double bound = 4.0 * double(s.k) * double(std::numeric_limits<S>::epsilon()) *
                         x.template cast<double>().norm() * r.template cast<double>().norm();
    EXPECT_NEAR(gathered, scattered, bound);
  }
}

// No tokens: an empty batch over every expert; combine and both backward functions write nothing
// (and need nothing).
TYPED_TEST(LocalExchangeTest, NoTokens) {
  using S = TypeParam;
  RoutingPlan<S> plan;
  plan.reset(0, 2, 5);
  const RowMatrix<S> x(0, kModel);
  LocalExchange::Record record;
  ExpertBatch<S> batch;
  LocalExchange{}.dispatch(plan, x, LocalExchange{}.owned(5), true, record, batch);
  EXPECT_EQ(batch.offset, (std::vector<Index>(6, 0)));
  EXPECT_EQ(batch.num_rows(), 0);
  EXPECT_TRUE(batch.scale.empty());
  RowMatrix<S> y(0, kModel), d_out(0, kModel), d_weight(0, 2), d_x(0, kModel);
  LocalExchange{}.combine(plan, record, batch, y);
  LocalExchange{}.combine_backward(plan, record, batch, RowMatrix<S>(0, kModel), d_out, d_weight);
  LocalExchange{}.dispatch_backward(plan, record, batch, RowMatrix<S>(0, kModel), d_x);
  EXPECT_EQ(y.rows(), 0);
  EXPECT_EQ(d_x.rows(), 0);
}

}  // namespace
