// kernels/packed_product.hpp with moe::kernels::NativeFormat<S> as the format: the weights-stationary
// products against a plain triple loop in double and against each other (panel ranges, decode's
// streams, a bank packed ahead or panels packed as they are used: the same bits), the packed
// weight panels, the bank of packed experts, and the output store.
#include <moe/detail/aligned_allocator.hpp>
#include <moe/kernels/format.hpp>
#include <moe/kernels/packed_product.hpp>
#include <moe/kernels/packing.hpp>

#include "support/compare.hpp"
#include "support/reference_products.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
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
class PackedProductTest : public ::testing::Test {};
TYPED_TEST_SUITE(PackedProductTest, moe::test::Scalars);

// A and B packed once; multiply(p_begin, p_end, c) writes those panels of A·B into c through
// multiply_packed's store.
template <class S>
class PackedProduct {
 public:
  PackedProduct(const RowMatrix<S>& a, const RowMatrix<S>& b)
      : m_(a.rows()), n_(b.cols()), depth_(a.cols()), pa_(static_cast<std::size_t>(m_ * depth_)),
        pb_(static_cast<std::size_t>(panels() * depth_ * kNR)), tiles_(static_cast<std::size_t>(m_ * kNR)) {
    moe::kernels::detail::pack_a<S>(moe::kernels::strided<S>(a), m_, depth_, pa_.data());
    moe::kernels::detail::pack_b<S>(moe::kernels::strided<S>(b), depth_, n_, pb_.data());
  }
  Index panels() const { return moe::kernels::num_panels<S>(n_); }
  void multiply(Index p_begin, Index p_end, RowMatrix<S>& c) {
    moe::kernels::detail::multiply_packed<Native<S>>(m_, depth_, pa_.data(), pb_.data(), p_begin, p_end, tiles_.data(),
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
TYPED_TEST(PackedProductTest, PanelRangesGiveTheSameBitsAsTheWholeProduct) {
  using S = TypeParam;
  constexpr Index NR = Blocking<S>::kNR;
  const Index m = 29, n = 5 * NR - 3, depth = Blocking<S>::kKC + 17;
  const RowMatrix<S> a = random_matrix<S>(m, depth, 5), b = random_matrix<S>(depth, n, 6);
  PackedProduct<S> product_ab(a, b);
  RowMatrix<S> whole = RowMatrix<S>::Zero(m, n), pieces = RowMatrix<S>::Zero(m, n);
  product_ab.multiply(0, product_ab.panels(), whole);
  product_ab.multiply(3, product_ab.panels(), pieces);
  EXPECT_EQ(pieces.leftCols(3 * NR), RowMatrix<S>::Zero(m, 3 * NR)) << "panels outside the range are not written";
  product_ab.multiply(0, 1, pieces);
  product_ab.multiply(1, 3, pieces);
  EXPECT_EQ(pieces, whole);
  MOE_EXPECT_CLOSE(S, whole, product(a, b));
}

// With few rows (decode), multiply_packed reads stream_width panels at a time; a panel range too
// short for that takes the main kernel. Both sum each element over the whole depth in the same
// order, so the bits agree for every row count, and with the reference — on every ISA path.
TYPED_TEST(PackedProductTest, DecodeStreamsGiveTheSameBitsAsOnePanelAtATime) {
  using S = TypeParam;
  constexpr Index NR = Blocking<S>::kNR, MR = Blocking<S>::kMR;
  const Index n = 9 * NR - 5, depth = Blocking<S>::kKC + 17;  // 9 panels: two groups of 4 and one left
  for (const moe::Isa isa : moe::kernels::isa_paths<Native<S>>()) {
    const moe::ScopedIsaCap cap(isa);
    for (Index m = 1; m <= MR; ++m) {
      SCOPED_TRACE(testing::Message() << moe::isa_name(isa) << ", m " << m);
      const RowMatrix<S> a = random_matrix<S>(m, depth, 7), b = random_matrix<S>(depth, n, 8);
      PackedProduct<S> product_ab(a, b);
      RowMatrix<S> whole = RowMatrix<S>::Zero(m, n), one_by_one = RowMatrix<S>::Zero(m, n);
      product_ab.multiply(0, product_ab.panels(), whole);
      for (Index p = 0; p < product_ab.panels(); ++p) product_ab.multiply(p, p + 1, one_by_one);
      EXPECT_EQ(whole, one_by_one);
      MOE_EXPECT_CLOSE(S, whole, product(a, b));
    }
  }
}

// No rows: nothing to store, whatever the panels (the decode kernel takes from one row, not zero).
TYPED_TEST(PackedProductTest, NoRowsStoresNothing) {
  using S = TypeParam;
  const Index panels = 8, depth = 5;
  const std::vector<S> pb(static_cast<std::size_t>(panels * depth * Blocking<S>::kNR), S(1));
  std::vector<S> tiles(1);
  int stores = 0;
  moe::kernels::detail::multiply_packed<Native<S>>(0, depth, nullptr, pb.data(), 0, panels, tiles.data(),
                                           [&](Index, Index, Index, const S*) { ++stores; });
  EXPECT_EQ(stores, 0);
}

// pack_weight_panel(w, p): the outputs [p·kNR, p·kNR + kNR) of x·wᵀ as columns, [in][kNR], zeros past
// the last output (a panel full of other values beforehand), from a w whose rows are further apart
// than its width; weight_panel_source(w, p) names exactly the rows it reads.
TYPED_TEST(PackedProductTest, WeightPanelsHoldOutputsAsColumns) {
  using S = TypeParam;
  constexpr Index NR = Blocking<S>::kNR;
  const Index out = 2 * NR + 3, in = 41;
  const RowMatrix<S> wide = random_matrix<S>(out, in + 5, 9);
  const moe::ConstMatrixRef<S> w = wide.leftCols(in);
  for (Index p = 0; p < moe::kernels::num_panels<S>(out); ++p) {
    SCOPED_TRACE(testing::Message() << "panel " << p);
    std::vector<S> panel(static_cast<std::size_t>(in * NR), S(-4));
    moe::kernels::pack_weight_panel<Native<S>>(w, p, panel.data());
    for (Index k = 0; k < in; ++k)
      for (Index c = 0; c < NR; ++c)
        EXPECT_EQ(panel[static_cast<std::size_t>(k * NR + c)], p * NR + c < out ? w(p * NR + c, k) : S(0))
            << "input " << k << ", output " << p * NR + c;
    const moe::kernels::Ahead source = moe::kernels::weight_panel_source<Native<S>>(w, p);
    const Index rows = std::min(NR, out - p * NR);
    EXPECT_EQ(source.data[0], reinterpret_cast<const char*>(wide.data() + p * NR * wide.outerStride()));
    EXPECT_EQ(source.bytes[0], rows * w.outerStride() * Index(sizeof(S)));
    EXPECT_EQ(source.data[1], nullptr);
    EXPECT_EQ(source.bytes[1], 0);
  }
}

// PackedBank: an expert is packed on its first ensure() only, into `size` weights; experts never
// ensured are never packed; clear() makes the next ensure() pack again.
TYPED_TEST(PackedProductTest, BankPacksEachExpertOnceUntilCleared) {
  using S = TypeParam;
  moe::kernels::PackedBank<Native<S>> bank(3);
  int packs = 0;
  const auto pack_with = [&](S value) {
    return [&packs, value](S* out) {
      ++packs;
      std::fill_n(out, 5, value);
    };
  };
  for (Index e = 0; e < 3; ++e) EXPECT_FALSE(bank.packed(e));
  bank.ensure(1, 5, pack_with(S(1)));
  bank.ensure(1, 5, pack_with(S(2)));
  EXPECT_EQ(packs, 1);
  EXPECT_TRUE(bank.packed(1));
  EXPECT_FALSE(bank.packed(0));
  EXPECT_FALSE(bank.packed(2));
  EXPECT_TRUE(std::all_of(bank[1], bank[1] + 5, [](S v) { return v == S(1); }));
  bank.clear();
  EXPECT_FALSE(bank.packed(1));
  bank.ensure(1, 5, pack_with(S(3)));
  EXPECT_EQ(packs, 2);
  EXPECT_TRUE(std::all_of(bank[1], bank[1] + 5, [](S v) { return v == S(3); }));
}

// multiply_bank: x·w_eᵀ for the panels asked for, from a bank where expert e is packed, or (not
// packed: training) with each panel packed by pack(p, ·) as it is used — the same bits either way,
// close to the reference, in exactly bank_work_size(m, depth) scalars of work (NaN beforehand, a
// guard after it). Unpacked, each panel of the range is packed once, and no source is asked for a
// panel outside it. Decode (m = 1) and several row tiles (m = 29); several depth blocks.
TYPED_TEST(PackedProductTest, BankGivesTheSameBitsPackedOrPackedAsUsed) {
  using S = TypeParam;
  using F = Native<S>;
  constexpr Index NR = Blocking<S>::kNR, E = 3, e = 2;
  const Index out = 5 * NR - 3, depth = Blocking<S>::kKC + 17, panels = moe::kernels::num_panels<S>(out);
  std::vector<RowMatrix<S>> w;
  for (Index i = 0; i < E; ++i) w.push_back(random_matrix<S>(out, depth, 20 + std::uint64_t(i)));
  moe::kernels::PackedBank<F> packed_bank(E), empty_bank(E);
  packed_bank.ensure(e, panels * depth * NR, [&](S* to) {
    for (Index p = 0; p < panels; ++p) moe::kernels::pack_weight_panel<F>(w[e], p, to + p * depth * NR);
  });
  for (const Index m : {Index{1}, Index{29}}) {
    SCOPED_TRACE(testing::Message() << "m " << m);
    const RowMatrix<S> x = random_matrix<S>(m, depth, 10);
    std::vector<S> packed_x(static_cast<std::size_t>(F::input_size(m, depth)));
    F::pack_input(moe::kernels::strided<S>(x), m, depth, packed_x.data());
    const auto work_size = static_cast<std::size_t>(moe::kernels::bank_work_size<F>(m, depth));
    const auto run = [&](const moe::kernels::PackedBank<F>& bank, Index p_begin, Index p_end, RowMatrix<S>& y) {
      std::vector<S> work(work_size + 16, std::numeric_limits<S>::quiet_NaN());
      std::fill(work.begin() + static_cast<std::ptrdiff_t>(work_size), work.end(), S(5));
      std::vector<int> packs(static_cast<std::size_t>(panels), 0);
      moe::kernels::multiply_bank<F>(
          bank, e, m, depth, packed_x.data(), p_begin, p_end, work.data(),
          [&](Index p, S* panel) {
            ++packs[static_cast<std::size_t>(p)];
            moe::kernels::pack_weight_panel<F>(w[e], p, panel);
          },
          [&](Index p) {
            EXPECT_GT(p, p_begin);
            EXPECT_LT(p, p_end);
            return moe::kernels::weight_panel_source<F>(w[e], p);
          },
          [&](Index i0, Index mr, Index p, const S* tile) {
            moe::MatrixRef<S> to = y;
            moe::kernels::store_output_tile<F>(to, i0, mr, p, tile, nullptr, nullptr);
          });
      EXPECT_TRUE(std::all_of(work.begin() + static_cast<std::ptrdiff_t>(work_size), work.end(),
                              [](S v) { return v == S(5); }));
      for (Index p = 0; p < panels; ++p)
        EXPECT_EQ(packs[static_cast<std::size_t>(p)], bank.packed(e) || p < p_begin || p >= p_end ? 0 : 1) << "panel " << p;
    };
    RowMatrix<S> from_packed = RowMatrix<S>::Zero(m, out), as_used = RowMatrix<S>::Zero(m, out);
    run(packed_bank, 0, panels, from_packed);
    run(empty_bank, 0, 2, as_used);
    run(empty_bank, 2, panels, as_used);
    EXPECT_EQ(as_used, from_packed);
    MOE_EXPECT_CLOSE(S, from_packed, product(x, w[e].transpose()));
  }
}

// store_output_tile(y, i0, mr, p, tile, scale, bias): rows [i0, i0 + mr) of y, columns of panel p
// that y has, = scale[row] · (tile + bias) — each of scale and bias optional — and nothing else of y.
TYPED_TEST(PackedProductTest, OutputStoreWritesScaledTilePlusBiasAndNothingElse) {
  using S = TypeParam;
  constexpr Index NR = Blocking<S>::kNR;
  const Index m = 7, n = 2 * NR + 3, i0 = 2, mr = 3;
  const RowMatrix<S> tile = random_matrix<S>(mr, NR, 11), scale = random_matrix<S>(1, m, 12),
                     bias = random_matrix<S>(1, n, 13);
  for (const Index p : {Index{1}, Index{2}})  // a whole panel, and the last one, 3 columns wide
    for (const bool scaled : {false, true})
      for (const bool biased : {false, true}) {
        SCOPED_TRACE(testing::Message() << "panel " << p << (scaled ? ", scaled" : "") << (biased ? ", bias" : ""));
        RowMatrix<S> y = RowMatrix<S>::Constant(m, n, S(-9));
        moe::MatrixRef<S> to = y;
        moe::kernels::store_output_tile<Native<S>>(to, i0, mr, p, tile.data(), scaled ? scale.data() : nullptr,
                                                   biased ? bias.data() : nullptr);
        const Index j0 = p * NR, cols = std::min(NR, n - j0);
        RowMatrix<double> expected(mr, cols);
        for (Index i = 0; i < mr; ++i)
          for (Index j = 0; j < cols; ++j)
            expected(i, j) = (scaled ? double(scale(0, i0 + i)) : 1.0) *
                             (double(tile(i, j)) + (biased ? double(bias(0, j0 + j)) : 0.0));
        MOE_EXPECT_CLOSE(S, y.block(i0, j0, mr, cols), expected);
        y.block(i0, j0, mr, cols).setConstant(S(-9));
        EXPECT_EQ(y, RowMatrix<S>::Constant(m, n, S(-9))) << "only the tile's region is written";
      }
}

}  // namespace
