// kernels/gemm.hpp: the backward's GEMM against a plain triple loop in double, on shapes that are
// not multiples of the micro-kernel's tile (kMR × kNR) nor of the depth block (kKC), with both
// operand layouts the experts use (row-major and transposed); its threads, its workspace and its
// column ranges.
#include <moe/kernels/format.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/packing.hpp>

#include "support/compare.hpp"
#include "support/reference_products.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <span>
#include <tuple>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;
using moe::kernels::Blocking;
using moe::kernels::Strided;
using moe::test::random_matrix;
using moe::test::reference::product;

template <class S>
class GemmTest : public ::testing::Test {};
TYPED_TEST_SUITE(GemmTest, moe::test::Scalars);

// (m, n, depth): one tile; ragged tiles; more than one depth block, column block (B blocks are
// ≤ 1 MB: 512 float columns at depth 512) and row block.
std::vector<std::tuple<Index, Index, Index>> shapes() {
  return {{1, 1, 1}, {1, 33, 70}, {13, 17, 5}, {25, 100, 600}, {150, 530, 40}, {7, 3, 1100}, {20, 700, 600}};
}

TYPED_TEST(GemmTest, MatchesATripleLoopForEveryLayoutAndShapeOnEveryIsa) {
  using S = TypeParam;
  for (const moe::Isa isa : moe::kernels::isa_paths<moe::kernels::NativeFormat<float>>()) {
    const moe::ScopedIsaCap cap(isa);
    for (const auto& [m, n, depth] : shapes()) {
      SCOPED_TRACE(testing::Message() << moe::isa_name(isa) << ", m " << m << ", n " << n << ", depth " << depth);
      const RowMatrix<S> a = random_matrix<S>(m, depth, 1), b = random_matrix<S>(depth, n, 2);
      const RowMatrix<S> a_t = a.transpose(), b_t = b.transpose();  // stored the other way round
      const RowMatrix<double> expected = product(a, b);
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
    MOE_EXPECT_CLOSE(S, RowMatrix<S>(one.rightCols(n)), (2 * product(a, b)).eval());
    EXPECT_EQ(one.leftCols(3), RowMatrix<S>::Constant(m, 3, S(7)));
    for (const int threads : {2, 3, 5}) {
      const RowMatrix<S> many = run(threads);
      EXPECT_EQ(std::memcmp(many.data(), one.data(), sizeof(S) * static_cast<std::size_t>(one.size())), 0)
          << threads << " threads";
    }
  }
  constexpr Index NR = Blocking<S>::kNR;
  static_assert(moe::kernels::detail::gemm_column_range<S>(16 * NR + 2, 2) == 9 * NR);  // 17 panels: 9 and 8
  static_assert(moe::kernels::detail::gemm_column_range<S>(NR - 1, 3) == NR - 1);       // one panel: no split
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

// gemm_workspace_size(m, n, depth, threads) is enough and all that gemm touches: a workspace of
// NaN (which must be written before it is read) gives the reference product, and the scalars past
// the size it asked for keep their values, on one thread and split over three.
TYPED_TEST(GemmTest, TouchesOnlyTheWorkspaceItAsksFor) {
  using S = TypeParam;
  for (const auto& [m, n, depth] : shapes())
    for (const int threads : {1, 3}) {
      SCOPED_TRACE(testing::Message() << "m " << m << ", n " << n << ", depth " << depth << ", " << threads << " threads");
      const RowMatrix<S> a = random_matrix<S>(m, depth, 5), b = random_matrix<S>(depth, n, 6);
      const auto size = static_cast<std::size_t>(moe::kernels::gemm_workspace_size<S>(m, n, depth, threads));
      std::vector<S> workspace(size + 64, std::numeric_limits<S>::quiet_NaN());
      std::fill(workspace.begin() + static_cast<std::ptrdiff_t>(size), workspace.end(), S(5));
      RowMatrix<S> c(m, n);
      moe::kernels::gemm<S>(moe::kernels::strided<S>(a), moe::kernels::strided<S>(b), depth, c, false,
                            std::span<S>(workspace.data(), size), threads);
      MOE_EXPECT_CLOSE(S, c, product(a, b));
      EXPECT_TRUE(std::all_of(workspace.begin() + static_cast<std::ptrdiff_t>(size), workspace.end(),
                              [](S v) { return v == S(5); }));
    }
}

// gemm_column_range(n, threads): whole panels (or all of n), at most `threads` ranges covering n,
// and as even as whole panels go: one panel less per range would need more than `threads` ranges.
TYPED_TEST(GemmTest, ColumnRangesAreWholePanelsAsEvenAsTheyGo) {
  using S = TypeParam;
  constexpr Index NR = Blocking<S>::kNR;
  for (Index n = 1; n <= 6 * NR + 1; ++n)
    for (int threads = 1; threads <= 5; ++threads) {
      SCOPED_TRACE(testing::Message() << "n " << n << ", " << threads << " threads");
      const Index range = moe::kernels::detail::gemm_column_range<S>(n, threads), ranges = (n + range - 1) / range;
      EXPECT_TRUE(range == n || range % NR == 0) << "range " << range;
      EXPECT_LE(ranges, threads);
      if (range > NR) {
        EXPECT_GT((n + range - NR - 1) / (range - NR), threads) << "a range of one panel less would do";
      }
    }
}

// GemmBlocks: a packed kc × nc block of B is whole panels and stays within 1 MB (at least one
// panel, however deep).
TYPED_TEST(GemmTest, BlocksOfBAreWholePanelsWithinOneMegabyte) {
  using S = TypeParam;
  using Blocks = moe::kernels::detail::GemmBlocks<S>;
  constexpr Index NR = Blocking<S>::kNR;
  for (const Index kc : {Index{1}, Index{40}, Blocks::kKC, Index{100000}}) {
    const Index nc = Blocks::nc(kc);
    EXPECT_EQ(nc % NR, 0) << "kc " << kc;
    EXPECT_GE(nc, NR) << "kc " << kc;
    if (nc > NR) {
      EXPECT_LE(kc * nc * Index(sizeof(S)), Index{1} << 20) << "kc " << kc;
    }
  }
  static_assert(Blocks::kMC % Blocking<S>::kMR == 0);
  static_assert(Blocks::kKC == 2 * Blocking<S>::kKC);
}

}  // namespace
