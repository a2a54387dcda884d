// kernels/bf16_format.hpp: Bf16Format — its packing (bf16 pairs in the panel, rounded to nearest
// even; activations rounded to bf16, odd depths padded with zeros) and its kernels on every ISA
// path the machine has, against a triple loop in double over the same bf16 values.
#include <moe/detail/float16.hpp>
#include <moe/kernels/bf16_format.hpp>
#include <moe/kernels/packed_product.hpp>

#include "support/bf16.hpp"
#include "support/compare.hpp"
#include "support/reference_products.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;
using moe::test::random_matrix;
using moe::test::reference::product;
using F = moe::kernels::Bf16Format;
constexpr Index NR = F::kNR;

using moe::test::to_bf16;

// B(k, c) of a packed panel: pair k/2, column c, lane k mod 2.
RowMatrix<float> unpacked_panel(const std::vector<F::Weight>& panel, Index depth) {
  RowMatrix<float> b(depth, NR);
  for (Index k = 0; k < depth; ++k)
    for (Index c = 0; c < NR; ++c)
      b(k, c) = moe::detail::bf16_to_float(panel[static_cast<std::size_t>(k / 2 * 2 * NR + 2 * c + k % 2)]);
  return b;
}

TEST(Bf16Format, PaddedDepthIsEvenAndSizesFollowIt) {
  EXPECT_EQ(F::packed_depth(6), 6);
  EXPECT_EQ(F::packed_depth(7), 8);
  EXPECT_EQ(F::input_size(5, 7), 40);
  EXPECT_EQ(F::kKC % 2, 0);
  EXPECT_EQ(std::string(F::name), "bf16");
}

// pack_weight_rows: row r of w at column `column + r` of the panel, every value rounded to nearest
// even, the odd depth's partner zero, the other columns left alone.
TEST(Bf16Format, PackWeightRowsWritesRoundedPairs) {
  const Index depth = 7, count = 5, column = 3;
  RowMatrix<float> w = random_matrix<float>(count, depth, 1);
  w(0, 0) = 1.0f + 0x1p-8f;              // a tie between 1 and 1 + 2⁻⁷: to the even one, 1
  w(0, 1) = 1.0f + 0x1p-8f + 0x1p-7f;    // a tie between 1 + 2⁻⁷ and 1 + 2⁻⁶: to 1 + 2⁻⁶
  std::vector<F::Weight> panel(static_cast<std::size_t>(F::packed_depth(depth) * NR), 0x7777);
  F::pack_weight_rows(w, panel.data(), column);
  const RowMatrix<float> b = unpacked_panel(panel, F::packed_depth(depth));
  EXPECT_EQ(b(0, column), 1.0f);
  EXPECT_EQ(b(1, column), 1.0f + 0x1p-6f);
  for (Index r = 0; r < count; ++r) {
    for (Index k = 0; k < depth; ++k) EXPECT_EQ(b(k, column + r), to_bf16(w(r, k))) << r << ", " << k;
    EXPECT_EQ(b(depth, column + r), 0.0f) << "padding of row " << r;
  }
  EXPECT_EQ(panel[0], 0x7777) << "column 0 is not one of the rows'";
}

// Depths over several of the packer's blocks, even and odd; from fp32 and from a BF16 tensor as a
// file holds it (little-endian bytes at an odd address, rows further apart than they are long):
// the same panel.
TEST(Bf16Format, PackWeightRowsFromFp32AndFromFileBytesAgree) {
  for (const Index depth : {Index(64), Index(77), Index(1)}) {
    const Index count = 9, column = 20, stride = depth + 3;
    const RowMatrix<float> w = random_matrix<float>(count, depth, 2);
    std::vector<std::byte> bytes(static_cast<std::size_t>(1 + 2 * count * stride), std::byte{0xee});
    for (Index r = 0; r < count; ++r)
      for (Index k = 0; k < depth; ++k) {
        const std::uint16_t v = moe::detail::float_to_bf16(w(r, k));
        bytes[static_cast<std::size_t>(1 + 2 * (r * stride + k))] = std::byte(v & 0xff);
        bytes[static_cast<std::size_t>(2 + 2 * (r * stride + k))] = std::byte(v >> 8);
      }
    const moe::kernels::Bf16Rows rows{bytes.data() + 1, count, depth, stride};
    std::vector<F::Weight> from_fp32(static_cast<std::size_t>(F::packed_depth(depth) * NR), 0x7777);
    std::vector<F::Weight> from_bytes = from_fp32;
    F::pack_weight_rows(w, from_fp32.data(), column);
    F::pack_weight_rows(rows, from_bytes.data(), column);
    EXPECT_EQ(from_bytes, from_fp32) << "depth " << depth;
    const RowMatrix<float> b = unpacked_panel(from_fp32, F::packed_depth(depth));
    for (Index r = 0; r < count; ++r)
      for (Index k = 0; k < depth; ++k) ASSERT_EQ(b(k, column + r), to_bf16(w(r, k))) << depth << ": " << r << ", " << k;
    EXPECT_EQ(from_fp32[0], 0x7777) << "columns before `column` left alone";
  }
}

// pack_input on every path: micro-panels [padded depth][mr] of bf16-rounded values, zeros at the
// padded depth — as floats, or as pairs of bf16 in the slot of the pair's first depth for the
// kernels that multiply pairs — and nothing written past input_size.
TEST(Bf16Format, PackInputRoundsToBf16AndPadsTheDepth) {
  const Index m = F::kMR + 5, depth = 9, padded = F::packed_depth(depth);
  const RowMatrix<float> x = random_matrix<float>(m, depth, 2);
  const auto bf16_at = [&](Index r, Index k) { return k < depth ? moe::detail::float_to_bf16(x(r, k)) : F::Weight(0); };
  for (const moe::Isa isa : moe::kernels::isa_paths<F>()) {
    SCOPED_TRACE(moe::isa_name(isa));
    const moe::ScopedIsaCap cap(isa);
    std::vector<float> packed(static_cast<std::size_t>(F::input_size(m, depth) + 4), -7.0f);
    F::pack_input(moe::kernels::strided<float>(x), m, depth, packed.data());
    for (Index q0 = 0; q0 < m; q0 += F::kMR) {
      const Index mr = std::min<Index>(F::kMR, m - q0);
      for (Index i = 0; i < mr; ++i)
        for (Index k = 0; k < padded; ++k) {
          const float slot = packed[static_cast<std::size_t>(q0 * padded + k * mr + i)];
          if (!F::kernels().a_pairs) {
            EXPECT_EQ(slot, moe::detail::bf16_to_float(bf16_at(q0 + i, k)));
          } else if (k % 2 == 0) {
            EXPECT_EQ(std::bit_cast<std::uint32_t>(slot), bf16_at(q0 + i, k) | std::uint32_t(bf16_at(q0 + i, k + 1)) << 16);
          } else {
            EXPECT_EQ(slot, 0.0f);
          }
        }
    }
    for (Index i = F::input_size(m, depth); i < Index(packed.size()); ++i) EXPECT_EQ(packed[static_cast<std::size_t>(i)], -7.0f);
  }
}

// The micro-kernels of every path against the triple loop over the same bf16 values, overwriting
// and accumulating; decode's stream kernels give the micro-kernel's bits; avx2 and avx512 agree
// (both widen and chain FMAs; avx512bf16's dot products round once per pair of depths).
TEST(Bf16Format, KernelsMatchAPlainLoopOnEveryIsa) {
  const Index depth = 38;  // even: the kernels run over packed_depth
  const RowMatrix<float> w = random_matrix<float>(NR, depth, 3);
  std::vector<F::Weight> panel(static_cast<std::size_t>(depth * NR));
  F::pack_weight_rows(w, panel.data(), 0);
  const RowMatrix<float> b = unpacked_panel(panel, depth);
  std::vector<RowMatrix<float>> by_isa;
  for (const moe::Isa isa : moe::kernels::isa_paths<F>()) {
    const moe::ScopedIsaCap cap(isa);  // pack_input packs for the active kernels
    const auto& kernels = F::kernels(isa);
    ASSERT_EQ(kernels.isa, isa);
    RowMatrix<float> all(F::kMR * F::kMR, NR);
    for (Index mr = 1; mr <= F::kMR; ++mr) {
      SCOPED_TRACE(testing::Message() << moe::isa_name(isa) << ", mr " << mr);
      const RowMatrix<float> x = moe::test::bf16_rounded(random_matrix<float>(mr, depth, 4 + std::uint64_t(mr)));
      std::vector<float> a(static_cast<std::size_t>(mr * depth));
      F::pack_input(moe::kernels::strided<float>(x), mr, depth, a.data());
      const RowMatrix<float> before = random_matrix<float>(mr, NR, 5);
      RowMatrix<float> tile(mr, NR), sum = before;
      kernels.micro[static_cast<std::size_t>(mr - 1)](depth, a.data(), panel.data(), tile.data(), NR, false, {});
      kernels.micro[static_cast<std::size_t>(mr - 1)](depth, a.data(), panel.data(), sum.data(), NR, true, {});
      MOE_EXPECT_CLOSE(float, tile, product(x, b));
      MOE_EXPECT_CLOSE(float, sum, (product(x, b) + before.cast<double>()).eval());
      all.middleRows((mr - 1) * F::kMR, mr) = tile;
      if (mr <= kernels.stream_rows) {
        std::vector<float> tiles(static_cast<std::size_t>(kernels.stream_width * mr * NR));
        std::vector<F::Weight> panels;
        for (int p = 0; p < kernels.stream_width; ++p) panels.insert(panels.end(), panel.begin(), panel.end());
        kernels.stream[static_cast<std::size_t>(mr - 1)](depth, a.data(), panels.data(), depth * NR, tiles.data());
        for (int p = 0; p < kernels.stream_width; ++p)
          EXPECT_EQ(RowMatrix<float>(Eigen::Map<const RowMatrix<float>>(tiles.data() + p * mr * NR, mr, NR)), tile);
      }
    }
    if (isa == moe::Isa::avx2 || isa == moe::Isa::avx512) by_isa.push_back(all);
  }
  for (std::size_t i = 1; i < by_isa.size(); ++i) EXPECT_EQ(by_isa[i], by_isa[0]) << "avx2 and avx512 sum alike";
}

// multiply_packed through pack_weight_panel, for an odd depth (padded), rows past a tile and
// decode's few rows, on every path: the product of the rounded operands.
TEST(Bf16Format, PackedProductsOfOddDepthMatchTheRoundedProduct) {
  const Index depth = 45, n = 2 * NR + 7, panels = moe::kernels::num_panels<float>(n);
  const RowMatrix<float> w = random_matrix<float>(n, depth, 6);
  std::vector<F::Weight> b(static_cast<std::size_t>(panels * F::packed_depth(depth) * NR));
  for (Index p = 0; p < panels; ++p)
    moe::kernels::pack_weight_panel<F>(w, p, b.data() + p * F::packed_depth(depth) * NR);
  for (const moe::Isa isa : moe::kernels::isa_paths<F>())
    for (const Index m : {Index(1), Index(3), Index(F::kMR + 4)}) {
      SCOPED_TRACE(testing::Message() << moe::isa_name(isa) << ", m " << m);
      const moe::ScopedIsaCap cap(isa);
      const RowMatrix<float> x = random_matrix<float>(m, depth, 7);
      std::vector<float> a(static_cast<std::size_t>(F::input_size(m, depth))), tiles(static_cast<std::size_t>(m * NR));
      F::pack_input(moe::kernels::strided<float>(x), m, depth, a.data());
      RowMatrix<float> y(m, n);
      moe::kernels::detail::multiply_packed<F>(m, depth, a.data(), b.data(), 0, panels, tiles.data(),
                                               [&](Index i0, Index mr, Index p, const float* tile) {
        moe::kernels::store_output_tile<F>(y, i0, mr, p, tile, nullptr, nullptr);
      });
      MOE_EXPECT_CLOSE(float, y, product(moe::test::bf16_rounded(x), RowMatrix<float>(moe::test::bf16_rounded(w).transpose())));
    }
}

}  // namespace MOE_TEST_FILE_ID
