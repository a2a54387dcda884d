// kernels/format.hpp: NativeFormat<S>, the weight format the experts use by default — its packing
// agrees with packing.hpp's, and its kernels (the micro-kernels for every row count, stream_panels for
// decode, on every ISA path the machine has) against a plain triple loop in double.
#include <moe/kernels/blocking.hpp>
#include <moe/kernels/format.hpp>
#include <moe/kernels/packing.hpp>

#include "support/compare.hpp"
#include "support/reference_products.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;
using moe::kernels::Blocking;
using moe::test::random_matrix;
using moe::test::reference::product;

template <class S>
using Native = moe::kernels::NativeFormat<S>;

template <class S>
class FormatTest : public ::testing::Test {};
TYPED_TEST_SUITE(FormatTest, moe::test::Scalars);

TYPED_TEST(FormatTest, NativeStoresAndMultipliesInItsScalar) {
  using S = TypeParam;
  using F = Native<S>;
  static_assert(std::is_same_v<typename F::Scalar, S> && std::is_same_v<typename F::Weight, S> &&
                std::is_same_v<typename F::Input, S>);
  static_assert(F::kMR == Blocking<S>::kMR && F::kNR == Blocking<S>::kNR && F::kKC == Blocking<S>::kKC);
  EXPECT_EQ(F::kernels().isa, moe::kernels::detail::tile_kernels<S>(moe::active_isa()).isa);
  EXPECT_EQ(std::string_view(F::name), (std::is_same_v<S, float> ? "f32" : "f64"));
}

// input_size(m, depth) is what pack_input writes, and pack_input writes what pack_a writes, for
// row-major and transposed inputs (one micro-panel, a ragged one, several).
TYPED_TEST(FormatTest, PackInputIsPackAInInputSizeScalars) {
  using S = TypeParam;
  using F = Native<S>;
  constexpr Index MR = F::kMR;
  for (const auto& [m, depth] : {std::pair<Index, Index>{1, 1}, {MR, 40}, {MR + 3, 70}, {37, 41}}) {
    SCOPED_TRACE(testing::Message() << "m " << m << ", depth " << depth);
    EXPECT_EQ(F::input_size(m, depth), m * depth);
    const RowMatrix<S> x = random_matrix<S>(m, depth, 1), x_t = x.transpose();
    for (const bool transposed : {false, true}) {
      const auto view = transposed ? moe::kernels::strided<S>(x_t).transposed() : moe::kernels::strided<S>(x);
      const auto size = static_cast<std::size_t>(F::input_size(m, depth));
      std::vector<S> by_format(size + 8, S(-2)), by_pack_a(size, S(-3));
      F::pack_input(view, m, depth, by_format.data());
      moe::kernels::detail::pack_a<S>(view, m, depth, by_pack_a.data());
      EXPECT_TRUE(std::equal(by_pack_a.begin(), by_pack_a.end(), by_format.begin())) << (transposed ? "transposed" : "");
      EXPECT_TRUE(std::all_of(by_format.begin() + static_cast<std::ptrdiff_t>(size), by_format.end(),
                              [](S v) { return v == S(-2); }));
    }
  }
}

// pack_weight_rows writes what pack_rows_as_columns writes, and only there.
TYPED_TEST(FormatTest, PackWeightRowsIsPackRowsAsColumns) {
  using S = TypeParam;
  using F = Native<S>;
  constexpr Index NR = F::kNR;
  const Index depth = 29, count = NR - 1, column = 1;
  const RowMatrix<S> w = random_matrix<S>(count, depth, 2);
  std::vector<S> by_format(static_cast<std::size_t>(depth * NR), S(-5)), by_packing = by_format;
  F::pack_weight_rows(w, by_format.data(), column);
  moe::kernels::detail::pack_rows_as_columns<S>(w, by_packing.data(), column);
  EXPECT_EQ(by_format, by_packing);
  EXPECT_EQ(by_format[0], S(-5)) << "column 0 is not one of the rows'";
}

// The packed operands as plain matrices: A(i, k) = a[k·mr + i], B(k, c) = b[k·kNR + c].
template <class S>
RowMatrix<S> unpacked_a(const std::vector<S>& a, Index mr, Index depth) {
  RowMatrix<S> m(mr, depth);
  for (Index i = 0; i < mr; ++i)
    for (Index k = 0; k < depth; ++k) m(i, k) = a[static_cast<std::size_t>(k * mr + i)];
  return m;
}
template <class S>
RowMatrix<S> unpacked_b(const S* b, Index depth) {
  constexpr Index NR = Blocking<S>::kNR;
  RowMatrix<S> m(depth, NR);
  for (Index k = 0; k < depth; ++k)
    for (Index c = 0; c < NR; ++c) m(k, c) = b[k * NR + c];
  return m;
}

// The kernels of every ISA path this machine has (tests/support/isa.hpp), each against the triple
// loop: micro[mr − 1] for every mr, the tile (rows tile_stride apart, wider than kNR) = A·B, or
// += A·B when accumulating; the columns past kNR are left alone. With lines to prefetch (the B
// panel itself) or none: the same bits.
TYPED_TEST(FormatTest, MicroKernelsMatchAPlainLoopForEveryRowCountOnEveryIsa) {
  using S = TypeParam;
  using F = Native<S>;
  constexpr Index NR = F::kNR, stride = NR + 3;
  const Index depth = 37;
  const RowMatrix<S> b = random_matrix<S>(depth, NR, 3);  // a packed panel is [depth][kNR] row-major
  for (const moe::Isa isa : moe::kernels::isa_paths<F>()) {
    const auto& kernels = F::kernels(isa);
    ASSERT_EQ(kernels.isa, isa);
    for (Index mr = 1; mr <= F::kMR; ++mr) {
      SCOPED_TRACE(testing::Message() << moe::isa_name(isa) << ", mr " << mr);
      const RowMatrix<S> a_values = random_matrix<S>(1, mr * depth, 4 + std::uint64_t(mr));
      const std::vector<S> a(a_values.data(), a_values.data() + a_values.size());
      const RowMatrix<double> expected = product(unpacked_a(a, mr, depth), unpacked_b(b.data(), depth));
      const RowMatrix<S> before = random_matrix<S>(mr, stride, 5);
      const moe::kernels::detail::Lines none, panel{reinterpret_cast<const char*>(b.data()), 2, 2 * moe::kernels::kLine, 0};
      const auto kernel = kernels.micro[static_cast<std::size_t>(mr - 1)];
      for (const bool accumulate : {false, true}) {
        SCOPED_TRACE(accumulate ? "accumulate" : "overwrite");
        RowMatrix<S> tile = before, prefetching = before;
        kernel(depth, a.data(), b.data(), tile.data(), stride, accumulate, none);
        kernel(depth, a.data(), b.data(), prefetching.data(), stride, accumulate, panel);
        const RowMatrix<double> sum = accumulate ? (expected + before.leftCols(NR).template cast<double>()).eval() : expected;
        MOE_EXPECT_CLOSE(S, RowMatrix<S>(tile.leftCols(NR)), sum);
        EXPECT_EQ(tile.rightCols(stride - NR), before.rightCols(stride - NR));
        EXPECT_EQ(prefetching, tile);
      }
    }
  }
}

// stream_panels (decode, m ≤ stream_rows) stores whole groups of stream_width panels from p_begin,
// each as (0, m, p, tile), and returns where it stopped; each tile is the triple loop's product and
// has the same bits as micro[m − 1] over the whole depth (so that decode and prefill agree).
TYPED_TEST(FormatTest, StreamPanelsMatchAPlainLoopAndTheMicroKernelOnEveryIsa) {
  using S = TypeParam;
  using F = Native<S>;
  constexpr Index NR = F::kNR;
  const Index depth = 37;
  for (const moe::Isa isa : moe::kernels::isa_paths<F>()) {
    const auto& kernels = F::kernels(isa);
    const Index W = kernels.stream_width, panels = 2 * W + 1;
    ASSERT_GE(kernels.stream_rows, 1);
    ASSERT_LE(W * kernels.stream_rows, F::kMR);
    const RowMatrix<S> b = random_matrix<S>(panels * depth, NR, 6);  // panel p at rows [p·depth, …)
    for (Index m = 1; m <= kernels.stream_rows; ++m) {
      SCOPED_TRACE(testing::Message() << moe::isa_name(isa) << ", m " << m);
      const RowMatrix<S> a_values = random_matrix<S>(1, m * depth, 7);
      const std::vector<S> a(a_values.data(), a_values.data() + a_values.size());
      for (const Index p_begin : {0, 1, 2}) {
        const Index p_end = panels, stop = p_begin + (p_end - p_begin) / W * W;
        SCOPED_TRACE(testing::Message() << "panels [" << p_begin << ", " << p_end << ")");
        std::vector<Index> stored;
        const Index stopped = kernels.stream_panels(m, depth, a.data(), b.data(), p_begin, p_end,
                                                    [&](Index i0, Index mr, Index p, const S* tile) {
          EXPECT_EQ(i0, 0);
          EXPECT_EQ(mr, m);
          stored.push_back(p);
          const S* const panel = b.data() + p * depth * NR;
          const RowMatrix<S> got = Eigen::Map<const RowMatrix<S>>(tile, m, NR);
          MOE_EXPECT_CLOSE(S, got, product(unpacked_a(a, m, depth), unpacked_b(panel, depth)));
          RowMatrix<S> by_micro_kernel(m, NR);
          kernels.micro[static_cast<std::size_t>(m - 1)](depth, a.data(), panel, by_micro_kernel.data(), NR, false, {});
          EXPECT_EQ(got, by_micro_kernel) << "panel " << p;
        });
        EXPECT_EQ(stopped, stop);
        std::vector<Index> expected(static_cast<std::size_t>(stop - p_begin));
        std::iota(expected.begin(), expected.end(), p_begin);
        EXPECT_EQ(stored, expected);
      }
    }
  }
}

// The ISAs with fused multiply-add (avx2 and up) sum every element as the same FMA chain, so they
// agree bit for bit: packed weights and results do not depend on which of them a CPU has.
TYPED_TEST(FormatTest, FmaIsasGiveTheSameBits) {
  using S = TypeParam;
  using F = Native<S>;
  if (moe::detected_isa() < moe::Isa::avx512) GTEST_SKIP() << "needs avx2 and avx512 (has " << moe::isa_name(moe::detected_isa()) << ")";
  constexpr Index NR = F::kNR;
  const Index depth = 300;
  const RowMatrix<S> b = random_matrix<S>(depth, NR, 8);
  for (Index mr = 1; mr <= F::kMR; ++mr) {
    const RowMatrix<S> a = random_matrix<S>(1, mr * depth, 9);
    RowMatrix<S> by_avx2(mr, NR), by_avx512(mr, NR);
    const auto i = static_cast<std::size_t>(mr - 1);
    F::kernels(moe::Isa::avx2).micro[i](depth, a.data(), b.data(), by_avx2.data(), NR, false, {});
    F::kernels(moe::Isa::avx512).micro[i](depth, a.data(), b.data(), by_avx512.data(), NR, false, {});
    EXPECT_EQ(by_avx2, by_avx512) << "mr " << mr;
  }
}

}  // namespace
