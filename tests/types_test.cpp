#include <moe/detail/aligned_allocator.hpp>
#include <moe/types.hpp>

#include <gtest/gtest.h>

#include <cstdint>

namespace MOE_TEST_FILE_ID {

static_assert(moe::RowMajorTokens<moe::RowMatrix<float>>);
static_assert(moe::RowMajorTokens<decltype(std::declval<moe::RowMatrix<float>&>().middleRows(0, 1))>);
static_assert(moe::RowMajorTokens<Eigen::Map<moe::RowMatrix<double>>>);
static_assert(!moe::RowMajorTokens<Eigen::MatrixXf>);

TEST(Types, RowBlocksBindToRefsWithoutACopy) {
  moe::RowMatrix<float> x = moe::RowMatrix<float>::Zero(6, 3);
  const moe::ConstMatrixRef<float> block = x.middleRows(2, 3);
  EXPECT_EQ(block.data(), x.data() + 2 * 3);
  moe::MatrixRef<float> out = x.middleRows(1, 2);
  out.setOnes();
  EXPECT_EQ(x.sum(), 6.0f);
  EXPECT_EQ(x(0, 0), 0.0f);
  EXPECT_EQ(x(1, 0), 1.0f);
}

TEST(Types, AlignedVectorIsAlignedToACacheLine) {
  for (std::size_t n : {1u, 3u, 17u, 1000u}) {
    moe::detail::AlignedVector<float> v(n);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(v.data()) % 64, 0u) << n;
  }
}

}  // namespace
