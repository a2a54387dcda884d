// kernels/packing.hpp: the packed layouts of A (micro-panels [depth][mr]) and B (panels
// [depth][kNR]) checked element by element for every way an operand can be stored, the rows of a
// weight written as columns of a panel, the strided views, and stream_rows.
#include <moe/detail/aligned_allocator.hpp>
#include <moe/kernels/packing.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <utility>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;
using moe::kernels::Blocking;
using moe::kernels::Strided;
using moe::test::random_matrix;

template <class S>
class PackingTest : public ::testing::Test {};
TYPED_TEST_SUITE(PackingTest, moe::test::Scalars);

// B panel p holds B(k, p·kNR + c) at [k][c], zeros past n.
//   packed: num_panels(n) · depth · kNR scalars;  b: the logical [depth, n]
template <class S>
void expect_b_panels(const std::vector<S>& packed, const RowMatrix<S>& b) {
  constexpr Index NR = Blocking<S>::kNR;
  const Index depth = b.rows(), n = b.cols();
  for (Index p = 0; p < moe::kernels::num_panels<S>(n); ++p)
    for (Index k = 0; k < depth; ++k)
      for (Index c = 0; c < NR; ++c)
        EXPECT_EQ(packed[static_cast<std::size_t>((p * depth + k) * NR + c)], p * NR + c < n ? b(k, p * NR + c) : S(0))
            << "panel " << p << ", depth " << k << ", column " << c;
}

// A's micro-panel q holds A(q·kMR + i, k) at [k][i] with i < its own row count mr.
//   packed: m · depth scalars;  a: the logical [m, depth]
template <class S>
void expect_a_micro_panels(const std::vector<S>& packed, const RowMatrix<S>& a) {
  constexpr Index MR = Blocking<S>::kMR;
  const Index m = a.rows(), depth = a.cols();
  for (Index i = 0; i < m; ++i) {
    const Index q0 = i / MR * MR, mr = std::min(MR, m - q0);
    for (Index k = 0; k < depth; ++k)
      EXPECT_EQ(packed[static_cast<std::size_t>(q0 * depth + k * mr + i - q0)], a(i, k)) << "row " << i << ", depth " << k;
  }
}

// The packed layouts are the documented ones whichever way round the operands are stored
// (transposing ones go through registers in whole packet-sized blocks, then element by element at
// the edges: depth 41 has both for every packet size).
TYPED_TEST(PackingTest, PackedLayoutsAreTheDocumentedOnes) {
  using S = TypeParam;
  constexpr Index NR = Blocking<S>::kNR, MR = Blocking<S>::kMR;
  const Index m = MR + 3, n = NR + 5, depth = 41;
  const RowMatrix<S> a = random_matrix<S>(m, depth, 3), b = random_matrix<S>(depth, n, 4);
  const RowMatrix<S> a_t = a.transpose(), b_t = b.transpose();
  for (const bool transposed : {false, true}) {
    SCOPED_TRACE(transposed ? "operands stored transposed" : "operands stored as they are");
    std::vector<S> packed_b(static_cast<std::size_t>(moe::kernels::num_panels<S>(n) * depth * NR), S(-1));
    moe::kernels::detail::pack_b<S>(transposed ? moe::kernels::strided<S>(b_t).transposed() : moe::kernels::strided<S>(b), depth,
                            n, packed_b.data());
    expect_b_panels(packed_b, b);
    std::vector<S> packed_a(static_cast<std::size_t>(m * depth));
    moe::kernels::detail::pack_a<S>(transposed ? moe::kernels::strided<S>(a_t).transposed() : moe::kernels::strided<S>(a), m,
                            depth, packed_a.data());
    expect_a_micro_panels(packed_a, a);
  }
}

// Operands stored with gaps pack to the same layouts: every other column of a wider matrix (neither
// stride is 1: the element-by-element paths) and every other row of a transposed one (the
// transposing paths, with rows twice as far apart as a dense transpose's). A has more than one
// micro-panel, B more than one panel, both ragged.
TYPED_TEST(PackingTest, OperandsWithNoUnitStridePackTheSame) {
  using S = TypeParam;
  constexpr Index NR = Blocking<S>::kNR, MR = Blocking<S>::kMR;
  const Index m = 2 * MR + 1, n = 2 * NR + 3, depth = 23;
  const RowMatrix<S> wide_a = random_matrix<S>(m, 2 * depth, 5), wide_b = random_matrix<S>(depth, 2 * n, 6);
  RowMatrix<S> a(m, depth), b(depth, n);  // the logical operands: the even columns
  for (Index k = 0; k < depth; ++k) a.col(k) = wide_a.col(2 * k);
  for (Index c = 0; c < n; ++c) b.col(c) = wide_b.col(2 * c);
  const RowMatrix<S> wide_a_t = wide_a.transpose(), wide_b_t = wide_b.transpose();
  for (const bool transposed : {false, true}) {
    SCOPED_TRACE(transposed ? "every other row of the transpose" : "every other column");
    // Element (i, j) of the operand is element (i, 2j) of the wide matrix, or (2j, i) of its transpose.
    const auto every_other = [&](const RowMatrix<S>& wide, const RowMatrix<S>& wide_t) {
      return transposed ? Strided<S>{wide_t.data(), 1, 2 * wide_t.outerStride()} : Strided<S>{wide.data(), wide.outerStride(), 2};
    };
    std::vector<S> packed_b(static_cast<std::size_t>(moe::kernels::num_panels<S>(n) * depth * NR), S(-1));
    moe::kernels::detail::pack_b<S>(every_other(wide_b, wide_b_t), depth, n, packed_b.data());
    expect_b_panels(packed_b, b);
    std::vector<S> packed_a(static_cast<std::size_t>(m * depth), S(-1));
    moe::kernels::detail::pack_a<S>(every_other(wide_a, wide_a_t), m, depth, packed_a.data());
    expect_a_micro_panels(packed_a, a);
  }
}

// pack_b with rows of B contiguous copies in passes of 16 depths: depths past one pass, and a
// single depth, land where they belong too.
TYPED_TEST(PackingTest, RowMajorBOfAnyDepth) {
  using S = TypeParam;
  constexpr Index NR = Blocking<S>::kNR;
  for (const Index depth : {Index{1}, Index{16}, Index{37}}) {
    SCOPED_TRACE(testing::Message() << "depth " << depth);
    const Index n = 3 * NR - 1;
    const RowMatrix<S> b = random_matrix<S>(depth, n, 7);
    std::vector<S> packed_b(static_cast<std::size_t>(moe::kernels::num_panels<S>(n) * depth * NR), S(-1));
    moe::kernels::detail::pack_b<S>(moe::kernels::strided<S>(b), depth, n, packed_b.data());
    expect_b_panels(packed_b, b);
  }
}

// pack_rows_as_columns writes the rows of w as columns [column, column + count) of a panel and
// leaves its other columns alone: whole packet blocks and ragged edges, from a w whose rows are
// further apart than its width.
TYPED_TEST(PackingTest, RowsAsColumnsFillOnlyTheirColumns) {
  using S = TypeParam;
  constexpr Index NR = Blocking<S>::kNR, P = Blocking<S>::kPacket;
  struct Case {
    Index count, depth, column;
  };
  for (const Case c : {Case{NR, 3 * P, 0}, Case{NR, 2 * P + 3, 0}, Case{P + 1, 2 * P + 3, 1}, Case{P, 41, P},
                       Case{1, 1, NR - 1}, Case{NR - 3, 5, 2}}) {
    SCOPED_TRACE(testing::Message() << "count " << c.count << ", depth " << c.depth << ", column " << c.column);
    const RowMatrix<S> wide = random_matrix<S>(c.count, c.depth + 3, 8);
    const moe::ConstMatrixRef<S> w = wide.leftCols(c.depth);
    std::vector<S> panel(static_cast<std::size_t>(c.depth * NR), S(-7));
    moe::kernels::detail::pack_rows_as_columns<S>(w, panel.data(), c.column);
    for (Index k = 0; k < c.depth; ++k)
      for (Index j = 0; j < NR; ++j) {
        const bool written = j >= c.column && j < c.column + c.count;
        EXPECT_EQ(panel[static_cast<std::size_t>(k * NR + j)], written ? w(j - c.column, k) : S(-7))
            << "depth " << k << ", column " << j;
      }
  }
}

// strided(m) reads element (i, j) of a row-major block with its outer stride; transposed() reads
// element (j, i).
TYPED_TEST(PackingTest, StridedViewsReadTheRightElements) {
  using S = TypeParam;
  const RowMatrix<S> wide = random_matrix<S>(5, 9, 9);
  const moe::ConstMatrixRef<S> block = wide.middleCols(2, 4);
  const Strided<S> view = moe::kernels::strided<S>(block), view_t = view.transposed();
  EXPECT_EQ(view.row_stride, 9);
  EXPECT_EQ(view.col_stride, 1);
  for (Index i = 0; i < 5; ++i)
    for (Index j = 0; j < 4; ++j) {
      EXPECT_EQ(view(i, j), wide(i, j + 2));
      EXPECT_EQ(view_t(j, i), wide(i, j + 2));
    }
}

// stream_rows copies rows of two packets, with non-temporal stores into an aligned target and plain
// ones into a misaligned target or one whose rows are not a whole number of packets apart; nothing
// else in the target changes.
TYPED_TEST(PackingTest, StreamRowsCopiesExactlyTheRowsWhateverTheAlignment) {
  using S = TypeParam;
  constexpr Index P = Blocking<S>::kPacket, rows = 5;
  const RowMatrix<S> from = random_matrix<S>(rows, 3 * P, 5);
  for (const auto& [offset, stride] : {std::pair<Index, Index>{0, 4 * P}, {1, 4 * P}, {0, 4 * P + 1}}) {
    SCOPED_TRACE(testing::Message() << "offset " << offset << ", stride " << stride);
    moe::detail::AlignedVector<S> to(static_cast<std::size_t>(offset + rows * stride), S(-3));
    moe::kernels::stream_rows<S>(from.data() + P, 3 * P, rows, 2 * P, to.data() + offset, stride);
    moe::kernels::stream_fence();
    for (Index i = 0; i < offset + rows * stride; ++i) {
      const Index row = (i - offset) / stride, column = (i - offset) % stride;
      const bool written = i >= offset && column < 2 * P;
      EXPECT_EQ(to[static_cast<std::size_t>(i)], written ? from(row, P + column) : S(-3)) << "at " << i;
    }
  }
}

}  // namespace
