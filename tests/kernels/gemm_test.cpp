// kernels/gemm.hpp: the packed products against a plain triple loop in double, on shapes that are
// not multiples of the micro-kernel's tile (kMR × kNR) nor of the depth block (kKC), with both
// operand layouts the experts use (row-major and transposed).
#include <moe/detail/aligned_allocator.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/packed_product.hpp>
#include <moe/kernels/packing.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::kernels::Blocking;
using moe::kernels::Strided;
using moe::test::random_matrix;

template <class S>
class GemmTest : public ::testing::Test {};
TYPED_TEST_SUITE(GemmTest, moe::test::Scalars);

// The reference: c(i, j) = Σ_k a(i, k)·b(k, j) in double, k ascending.
template <class S>
RowMatrix<double> reference_product(const RowMatrix<S>& a, const RowMatrix<S>& b) {
  RowMatrix<double> c = RowMatrix<double>::Zero(a.rows(), b.cols());
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < b.cols(); ++j)
      for (Index k = 0; k < a.cols(); ++k) c(i, j) += double(a(i, k)) * double(b(k, j));
  return c;
}

// (m, n, depth): one tile; ragged tiles; more than one depth block, column block (B blocks are
// ≤ 1 MB: 512 float columns at depth 512) and row block.
std::vector<std::tuple<Index, Index, Index>> shapes() {
  return {{1, 1, 1}, {1, 33, 70}, {13, 17, 5}, {25, 100, 600}, {150, 530, 40}, {7, 3, 1100}, {20, 700, 600}};
}

TYPED_TEST(GemmTest, MatchesATripleLoopForEveryLayoutAndShape) {
  using S = TypeParam;
  for (const auto& [m, n, depth] : shapes()) {
    SCOPED_TRACE(testing::Message() << "m " << m << ", n " << n << ", depth " << depth);
    const RowMatrix<S> a = random_matrix<S>(m, depth, 1), b = random_matrix<S>(depth, n, 2);
    const RowMatrix<S> a_t = a.transpose(), b_t = b.transpose();  // stored the other way round
    const RowMatrix<double> expected = reference_product(a, b);
    std::vector<S> workspace(static_cast<std::size_t>(moe::kernels::gemm_workspace_size<S>(m, n, depth)));
    for (const bool a_transposed : {false, true})
      for (const bool b_transposed : {false, true}) {
        const Strided<S> a_view = a_transposed ? moe::kernels::strided<S>(a_t).transposed() : moe::kernels::strided<S>(a);
        const Strided<S> b_view = b_transposed ? moe::kernels::strided<S>(b_t).transposed() : moe::kernels::strided<S>(b);
        // C is a block of a wider matrix (rows further apart than its width): the columns beside it
        // stay as they are.
        RowMatrix<S> wide = RowMatrix<S>::Constant(m, n + 3, S(7));
        auto c = wide.leftCols(n);
        moe::kernels::gemm<S>(a_view, b_view, depth, c, /*accumulate=*/false, workspace);
        MOE_EXPECT_CLOSE(S, RowMatrix<S>(c), expected);
        moe::kernels::gemm<S>(a_view, b_view, depth, c, /*accumulate=*/true, workspace);
        MOE_EXPECT_CLOSE(S, RowMatrix<S>(c), (2 * expected).eval());
        EXPECT_EQ(wide.rightCols(3), RowMatrix<S>::Constant(m, 3, S(7)));
      }
  }
}

// On several threads C's columns are split into ranges of whole panels: the same bits as on one,
// overwriting then accumulating, into a block of a wider matrix whose other columns stay as they
// are, with the workspace it asks for (one workspace when there is a single panel to compute).
TYPED_TEST(GemmTest, ThreadsGiveTheSameBitsAsOne) {
  using S = TypeParam;
  for (const auto& [m, n, depth] : shapes()) {
    SCOPED_TRACE(testing::Message() << "m " << m << ", n " << n << ", depth " << depth);
    const RowMatrix<S> a = random_matrix<S>(m, depth, 3), b_t = random_matrix<S>(n, depth, 4);
    const Strided<S> a_view = moe::kernels::strided<S>(a), b_view = moe::kernels::strided<S>(b_t).transposed();
    const auto run = [&](int threads) {
      std::vector<S> workspace(static_cast<std::size_t>(moe::kernels::gemm_workspace_size<S>(m, n, depth, threads)));
      RowMatrix<S> wide = RowMatrix<S>::Constant(m, n + 3, S(7));
      auto c = wide.rightCols(n);
      moe::kernels::gemm<S>(a_view, b_view, depth, c, /*accumulate=*/false, workspace, threads);
      moe::kernels::gemm<S>(a_view, b_view, depth, c, /*accumulate=*/true, workspace, threads);
      return wide;
    };
    const RowMatrix<S> one = run(1);
    const RowMatrix<S> b = b_t.transpose();
    MOE_EXPECT_CLOSE(S, RowMatrix<S>(one.rightCols(n)), (2 * reference_product(a, b)).eval());
    EXPECT_EQ(one.leftCols(3), RowMatrix<S>::Constant(m, 3, S(7)));
    for (const int threads : {2, 3, 5}) {
      const RowMatrix<S> many = run(threads);
      EXPECT_EQ(std::memcmp(many.data(), one.data(), sizeof(S) * static_cast<std::size_t>(one.size())), 0)
          << threads << " threads";
    }
  }
  constexpr Index NR = Blocking<S>::kNR;
  static_assert(moe::kernels::gemm_column_range<S>(16 * NR + 2, 2) == 9 * NR);  // 17 panels: 9 and 8
  static_assert(moe::kernels::gemm_column_range<S>(NR - 1, 3) == NR - 1);       // one panel: no split
  static_assert(moe::kernels::gemm_workspace_size<S>(20, NR - 1, 600, 3) ==
                moe::kernels::gemm_workspace_size<S>(20, NR - 1, 600));
}

TYPED_TEST(GemmTest, ZeroDepthGivesZerosOrLeavesTheSum) {
  using S = TypeParam;
  const RowMatrix<S> a(3, 0), b(0, 4);
  RowMatrix<S> c = RowMatrix<S>::Constant(3, 4, S(2));
  std::vector<S> workspace;
  moe::kernels::gemm<S>(moe::kernels::strided<S>(a), moe::kernels::strided<S>(b), 0, c, true, workspace);
  EXPECT_EQ(c, RowMatrix<S>::Constant(3, 4, S(2)));
  moe::kernels::gemm<S>(moe::kernels::strided<S>(a), moe::kernels::strided<S>(b), 0, c, false, workspace);
  EXPECT_EQ(c, RowMatrix<S>::Zero(3, 4));
}

// The packed layouts themselves: B panel p holds B(k, p·kNR + c) at [k][c], zero past n; A's
// micro-panel q holds A(q·kMR + i, k) at [k][i] with i < its own row count. Whichever way round the
// operands are stored (transposing ones go through registers in whole packet-sized blocks, then
// element by element at the edges: depth 41 has both for every packet size).
TYPED_TEST(GemmTest, PackedLayoutsAreTheDocumentedOnes) {
  using S = TypeParam;
  constexpr Index NR = Blocking<S>::kNR, MR = Blocking<S>::kMR;
  const Index m = MR + 3, n = NR + 5, depth = 41;
  const RowMatrix<S> a = random_matrix<S>(m, depth, 3), b = random_matrix<S>(depth, n, 4);
  const RowMatrix<S> a_t = a.transpose(), b_t = b.transpose();
  for (const bool transposed : {false, true}) {
    SCOPED_TRACE(transposed ? "operands stored transposed" : "operands stored as they are");
    std::vector<S> packed_b(static_cast<std::size_t>(moe::kernels::num_panels<S>(n) * depth * NR), S(-1));
    moe::kernels::pack_b<S>(transposed ? moe::kernels::strided<S>(b_t).transposed() : moe::kernels::strided<S>(b), depth,
                            n, packed_b.data());
    for (Index p = 0; p < 2; ++p)
      for (Index k = 0; k < depth; ++k)
        for (Index c = 0; c < NR; ++c)
          EXPECT_EQ(packed_b[static_cast<std::size_t>((p * depth + k) * NR + c)], p * NR + c < n ? b(k, p * NR + c) : S(0));
    std::vector<S> packed_a(static_cast<std::size_t>(m * depth));
    moe::kernels::pack_a<S>(transposed ? moe::kernels::strided<S>(a_t).transposed() : moe::kernels::strided<S>(a), m,
                            depth, packed_a.data());
    for (Index i = 0; i < m; ++i) {
      const Index q0 = i / MR * MR, mr = std::min(MR, m - q0);
      for (Index k = 0; k < depth; ++k) EXPECT_EQ(packed_a[static_cast<std::size_t>(q0 * depth + k * mr + i - q0)], a(i, k));
    }
  }
}

// A and B packed once; multiply(p_begin, p_end, c) writes those panels of A·B into c through
// multiply_packed's store.
template <class S>
class PackedProduct {
 public:
  PackedProduct(const RowMatrix<S>& a, const RowMatrix<S>& b)
      : m_(a.rows()), n_(b.cols()), depth_(a.cols()), pa_(static_cast<std::size_t>(m_ * depth_)),
        pb_(static_cast<std::size_t>(panels() * depth_ * kNR)), tiles_(static_cast<std::size_t>(m_ * kNR)) {
    moe::kernels::pack_a<S>(moe::kernels::strided<S>(a), m_, depth_, pa_.data());
    moe::kernels::pack_b<S>(moe::kernels::strided<S>(b), depth_, n_, pb_.data());
  }
  Index panels() const { return moe::kernels::num_panels<S>(n_); }
  void multiply(Index p_begin, Index p_end, RowMatrix<S>& c) {
    moe::kernels::multiply_packed<moe::kernels::NativeFormat<S>>(m_, depth_, pa_.data(), pb_.data(), p_begin, p_end, tiles_.data(),
                                     [&](Index i0, Index mr, Index p, const S* tile) {
      for (Index i = 0; i < mr; ++i)
        for (Index j = p * kNR; j < std::min(n_, (p + 1) * kNR); ++j) c(i0 + i, j) = tile[i * kNR + j - p * kNR];
    });
  }

 private:
  static constexpr Index kNR = Blocking<S>::kNR;
  Index m_, n_, depth_;
  std::vector<S> pa_, pb_, tiles_;
};

// multiply_packed over a range of panels computes exactly those panels, with the same bits as the
// whole product: every element is one sum in a fixed order however the work is split.
TYPED_TEST(GemmTest, PanelRangesGiveTheSameBitsAsTheWholeProduct) {
  using S = TypeParam;
  constexpr Index NR = Blocking<S>::kNR;
  const Index m = 29, n = 5 * NR - 3, depth = Blocking<S>::kKC + 17;
  const RowMatrix<S> a = random_matrix<S>(m, depth, 5), b = random_matrix<S>(depth, n, 6);
  PackedProduct<S> product(a, b);
  RowMatrix<S> whole = RowMatrix<S>::Zero(m, n), pieces = RowMatrix<S>::Zero(m, n);
  product.multiply(0, product.panels(), whole);
  product.multiply(3, product.panels(), pieces);
  EXPECT_EQ(pieces.leftCols(3 * NR), RowMatrix<S>::Zero(m, 3 * NR)) << "panels outside the range are not written";
  product.multiply(0, 1, pieces);
  product.multiply(1, 3, pieces);
  EXPECT_EQ(pieces, whole);
  MOE_EXPECT_CLOSE(S, whole, reference_product(a, b));
}

// With few rows (decode), multiply_packed reads kStreams panels at a time; a panel range too short
// for that takes the main kernel. Both sum each element over the whole depth in the same order, so
// the bits agree for every row count, and with the reference.
TYPED_TEST(GemmTest, DecodeStreamsGiveTheSameBitsAsOnePanelAtATime) {
  using S = TypeParam;
  constexpr Index NR = Blocking<S>::kNR, MR = Blocking<S>::kMR;
  const Index n = (2 * moe::kernels::kStreams + 1) * NR - 5, depth = Blocking<S>::kKC + 17;
  for (Index m = 1; m <= MR; ++m) {
    SCOPED_TRACE(testing::Message() << "m " << m);
    const RowMatrix<S> a = random_matrix<S>(m, depth, 7), b = random_matrix<S>(depth, n, 8);
    PackedProduct<S> product(a, b);
    RowMatrix<S> whole = RowMatrix<S>::Zero(m, n), one_by_one = RowMatrix<S>::Zero(m, n);
    product.multiply(0, product.panels(), whole);
    for (Index p = 0; p < product.panels(); ++p) product.multiply(p, p + 1, one_by_one);
    EXPECT_EQ(whole, one_by_one);
    MOE_EXPECT_CLOSE(S, whole, reference_product(a, b));
  }
}

// No rows: nothing to store, whatever the panels (the decode kernel takes up to kMR/kStreams rows,
// not zero).
TYPED_TEST(GemmTest, NoRowsStoresNothing) {
  using S = TypeParam;
  const Index panels = 2 * moe::kernels::kStreams, depth = 5;
  const std::vector<S> pb(static_cast<std::size_t>(panels * depth * Blocking<S>::kNR), S(1));
  std::vector<S> tiles(1);
  int stores = 0;
  moe::kernels::multiply_packed<moe::kernels::NativeFormat<S>>(0, depth, nullptr, pb.data(), 0, panels, tiles.data(),
                                   [&](Index, Index, Index, const S*) { ++stores; });
  EXPECT_EQ(stores, 0);
}

// stream_rows copies rows of one packet, with non-temporal stores into an aligned target and plain
// ones into a misaligned target or one whose rows are not a whole number of packets apart; nothing
// else in the target changes.
TYPED_TEST(GemmTest, StreamRowsCopiesExactlyTheRowsWhateverTheAlignment) {
  using S = TypeParam;
  constexpr Index P = Blocking<S>::kPacket, rows = 5;
  const RowMatrix<S> from = random_matrix<S>(rows, 2 * P, 5);
  for (const auto& [offset, stride] : {std::pair<Index, Index>{0, 3 * P}, {1, 3 * P}, {0, 3 * P + 1}}) {
    SCOPED_TRACE(testing::Message() << "offset " << offset << ", stride " << stride);
    moe::detail::AlignedVector<S> to(static_cast<std::size_t>(offset + rows * stride), S(-3));
    moe::kernels::stream_rows<S>(from.data() + P, 2 * P, rows, to.data() + offset, stride);
    moe::kernels::simd::stream_fence();
    for (Index i = 0; i < offset + rows * stride; ++i) {
      const Index row = (i - offset) / stride, column = (i - offset) % stride;
      const bool written = i >= offset && column < P;
      EXPECT_EQ(to[static_cast<std::size_t>(i)], written ? from(row, P + column) : S(-3)) << "at " << i;
    }
  }
}

}  // namespace
