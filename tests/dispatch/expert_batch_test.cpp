// ExpertBatch: the per-expert offsets, the inputs (gathered rows, or one matrix every expert reads
// in place), the outputs, the scales, and buffers that only grow.
#include <moe/dispatch/expert_batch.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::ExpertBatch;
using moe::Index;
using moe::RowMatrix;
using moe::test::random_matrix;

constexpr Index kModel = 40, kTokens = 37, kExperts = 5;

template <class S>
class ExpertBatchTest : public ::testing::Test {};
TYPED_TEST_SUITE(ExpertBatchTest, moe::test::Scalars);

// A new batch covers no experts and no rows.
TYPED_TEST(ExpertBatchTest, StartsEmpty) {
  const ExpertBatch<TypeParam> batch;
  EXPECT_EQ(batch.num_experts(), 0);
  EXPECT_EQ(batch.num_rows(), 0);
  EXPECT_EQ(batch.scales(0), nullptr);
  EXPECT_FALSE(batch.scaled);
}

// Expert i owns rows [offset[i], offset[i + 1]): begin(i) and rows_of(i), an expert with none
// included (first, inside and last).
TYPED_TEST(ExpertBatchTest, OffsetsGiveEachExpertItsRows) {
  ExpertBatch<TypeParam> batch;
  batch.offset = {0, 0, 9, 9, 32, 37, 37};
  EXPECT_EQ(batch.num_experts(), 6);
  EXPECT_EQ(batch.num_rows(), 37);
  const Index begin[] = {0, 0, 9, 9, 32, 37}, rows[] = {0, 9, 0, 23, 5, 0};
  for (Index i = 0; i < 6; ++i) {
    EXPECT_EQ(batch.begin(i), begin[i]) << "expert " << i;
    EXPECT_EQ(batch.rows_of(i), rows[i]) << "expert " << i;
  }
}

// Gathered: expert i's input and output are its rows of `rows` and `out`, views and not copies
// (writing through output(i) writes `out`).
TYPED_TEST(ExpertBatchTest, GatheredInputsAndOutputsAreRowBlocks) {
  using S = TypeParam;
  ExpertBatch<S> batch;
  batch.offset = {0, 11, 11, 30, 37};
  batch.reserve(kModel);
  batch.rows.topRows(kTokens) = random_matrix<S>(kTokens, kModel, 1);
  for (Index i = 0; i < batch.num_experts(); ++i) {
    SCOPED_TRACE(testing::Message() << "expert " << i);
    const auto in = batch.input(i);
    EXPECT_EQ(in.rows(), batch.rows_of(i));
    EXPECT_EQ(in.cols(), kModel);
    EXPECT_EQ(in.data(), batch.rows.data() + batch.begin(i) * kModel);
    EXPECT_EQ(RowMatrix<S>(in), RowMatrix<S>(batch.rows.middleRows(batch.begin(i), batch.rows_of(i))));
    batch.output(i).setConstant(S(i + 1));
    EXPECT_EQ(batch.output(i).data(), batch.out.data() + batch.begin(i) * kModel);
  }
  for (Index r = 0; r < kTokens; ++r) {
    const S owner = r < 11 ? S(1) : r < 30 ? S(3) : S(4);
    EXPECT_TRUE((batch.out.row(r).array() == owner).all()) << "row " << r;
  }
}

// Broadcast: every one of E experts reads all of x in place — the same data pointer and stride, no
// copy, even for a block of a wider matrix — and its outputs are rows [i·T, i·T + T); any scales
// from before are gone. reserve() then sizes only the outputs, and gathered() goes back to rows.
TYPED_TEST(ExpertBatchTest, BroadcastReadsOneMatrixInPlace) {
  using S = TypeParam;
  const RowMatrix<S> wide = random_matrix<S>(kTokens, kModel + 3, 2);
  const moe::ConstMatrixRef<S> x = wide.leftCols(kModel);
  ExpertBatch<S> batch;
  batch.first_expert = 2;
  batch.scale.assign(4, S(1));
  batch.scaled = true;
  batch.broadcast(x, kExperts);
  EXPECT_EQ(batch.first_expert, 0);
  EXPECT_EQ(batch.num_experts(), kExperts);
  EXPECT_EQ(batch.num_rows(), kExperts * kTokens);
  EXPECT_TRUE(batch.scale.empty());
  EXPECT_EQ(batch.scales(0), nullptr);
  EXPECT_FALSE(batch.scaled);
  batch.reserve(kModel);
  EXPECT_EQ(batch.rows.rows(), 0) << "no gathered copy";
  EXPECT_EQ(batch.out.rows(), kExperts * kTokens);
  for (Index i = 0; i < kExperts; ++i) {
    SCOPED_TRACE(testing::Message() << "expert " << i);
    EXPECT_EQ(batch.begin(i), i * kTokens);
    EXPECT_EQ(batch.rows_of(i), kTokens);
    const auto in = batch.input(i);
    EXPECT_EQ(in.data(), x.data());
    EXPECT_EQ(in.outerStride(), wide.outerStride());
    EXPECT_EQ(in.rows(), kTokens);
    EXPECT_EQ(in.cols(), kModel);
    EXPECT_EQ(RowMatrix<S>(in), RowMatrix<S>(x));
    EXPECT_EQ(batch.output(i).data(), batch.out.data() + i * kTokens * kModel);
  }
  batch.gathered();
  batch.offset = {0, 4};
  batch.reserve(kModel);
  EXPECT_EQ(batch.input(0).data(), batch.rows.data());
  EXPECT_EQ(batch.input(0).rows(), 4);
}

// reserve(d_model) sizes rows and out for num_rows() rows; a smaller batch afterwards keeps the
// buffers (same memory, same rows), a larger one grows them, another d_model resizes them.
TYPED_TEST(ExpertBatchTest, ReserveOnlyGrows) {
  using S = TypeParam;
  ExpertBatch<S> batch;
  batch.offset = {0, 20, 37};
  batch.reserve(kModel);
  EXPECT_EQ(batch.rows.rows(), 37);
  EXPECT_EQ(batch.out.rows(), 37);
  EXPECT_EQ(batch.rows.cols(), kModel);
  EXPECT_EQ(batch.out.cols(), kModel);
  const S* const rows_data = batch.rows.data();
  const S* const out_data = batch.out.data();
  batch.offset = {0, 3, 5, 9};
  batch.reserve(kModel);
  EXPECT_EQ(batch.rows.rows(), 37);
  EXPECT_EQ(batch.out.rows(), 37);
  EXPECT_EQ(batch.rows.data(), rows_data) << "a smaller batch does not reallocate";
  EXPECT_EQ(batch.out.data(), out_data);
  batch.offset = {0, 50};
  batch.reserve(kModel);
  EXPECT_EQ(batch.rows.rows(), 50);
  EXPECT_EQ(batch.out.rows(), 50);
  batch.offset = {0, 7};
  batch.reserve(kModel + 1);
  EXPECT_EQ(batch.rows.cols(), kModel + 1);
  EXPECT_EQ(batch.out.cols(), kModel + 1);
  EXPECT_EQ(batch.rows.rows(), 50) << "rows kept when the width changes";
}

// scales(from): the scales of rows from `from` on, or null when the batch has none.
TYPED_TEST(ExpertBatchTest, ScalesFromARow) {
  using S = TypeParam;
  ExpertBatch<S> batch;
  batch.offset = {0, 4, 6};
  EXPECT_EQ(batch.scales(0), nullptr);
  batch.scale = {S(0.5), S(1.5), S(2.5), S(3.5), S(4.5), S(5.5)};
  EXPECT_EQ(batch.scales(0), batch.scale.data());
  EXPECT_EQ(batch.scales(batch.begin(1)), batch.scale.data() + 4);
  EXPECT_EQ(batch.scales(batch.begin(1))[1], S(5.5));
}

}  // namespace
