// kernels/blocking.hpp: the register and cache blocking the kernels are written for, and the packet
// operations of simd:: checked element by element — load_transposed transposes (and reads missing
// rows as zeros), store_streaming stores a packet whether or not it may bypass the caches.
#include <moe/detail/aligned_allocator.hpp>
#include <moe/kernels/blocking.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;
using moe::kernels::Blocking;
using moe::test::random_matrix;

template <class S>
class BlockingTest : public ::testing::Test {};
TYPED_TEST_SUITE(BlockingTest, moe::test::Scalars);

// A tile is kMR × 128 bytes, whatever the packets (the packed layout does not depend on the ISA); a block of a B panel is 32 KB; num_panels rounds up.
TYPED_TEST(BlockingTest, TilesAndBlocksHaveTheirDocumentedSizes) {
  using S = TypeParam;
  using B = Blocking<S>;
  static_assert(B::kPacket * sizeof(S) == sizeof(typename B::Packet));
  static_assert(B::kNR * sizeof(S) == 128 && B::kNR % B::kPacket == 0);
  static_assert(B::kMR == 12);
  static_assert(B::kKC * B::kNR * Index(sizeof(S)) == 32768);
  EXPECT_EQ(moe::kernels::num_panels<S>(0), 0);
  EXPECT_EQ(moe::kernels::num_panels<S>(1), 1);
  EXPECT_EQ(moe::kernels::num_panels<S>(B::kNR), 1);
  EXPECT_EQ(moe::kernels::num_panels<S>(B::kNR + 1), 2);
  EXPECT_EQ(moe::kernels::num_panels<S>(5 * B::kNR - 3), 5);
}

// A packet's elements, in order.
template <class S>
std::vector<S> elements(const moe::kernels::detail::simd::Packet<S>& p) {
  std::vector<S> out(static_cast<std::size_t>(Blocking<S>::kPacket));
  moe::kernels::detail::simd::store<S>(out.data(), p);
  return out;
}

// load, store, broadcast and multiply_add(a, b, c) = a·b + c, on small integers (exact whether the
// multiply-add is fused or not), from and to addresses that are not packet-aligned.
TYPED_TEST(BlockingTest, PacketOperationsActElementByElement) {
  using S = TypeParam;
  namespace simd = moe::kernels::detail::simd;
  constexpr Index P = Blocking<S>::kPacket;
  std::vector<S> a(P + 1), b(P + 1);
  for (Index i = 0; i <= P; ++i) {
    a[static_cast<std::size_t>(i)] = S(i - 3);
    b[static_cast<std::size_t>(i)] = S(2 * i + 1);
  }
  const auto pa = simd::load<S>(a.data() + 1), pb = simd::load<S>(b.data() + 1), pc = simd::broadcast<S>(S(5));
  const std::vector<S> sum = elements<S>(simd::multiply_add<S>(pa, pb, pc));
  for (Index i = 0; i < P; ++i) {
    const auto at = static_cast<std::size_t>(i);
    EXPECT_EQ(sum[at], a[at + 1] * b[at + 1] + S(5)) << i;
    EXPECT_EQ(elements<S>(pc)[at], S(5)) << i;
  }
  std::vector<S> to(P + 2, S(-1));
  simd::store<S>(to.data() + 1, pa);
  EXPECT_EQ(to.front(), S(-1));
  EXPECT_EQ(to.back(), S(-1));
  EXPECT_TRUE(std::equal(a.begin() + 1, a.end(), to.begin() + 1));
}

// load_transposed(from, stride, rows): .packet[j] is column j of the P × P block at from, rows
// `stride` apart; rows from `rows` on read as zeros (and are not read: the matrix ends there).
TYPED_TEST(BlockingTest, LoadTransposedTransposesTheBlock) {
  using S = TypeParam;
  constexpr Index P = Blocking<S>::kPacket, stride = P + 3;
  for (Index rows = P; rows >= 1; --rows) {
    SCOPED_TRACE(testing::Message() << "rows " << rows);
    const RowMatrix<S> m = random_matrix<S>(rows, stride, 1);  // exactly `rows` rows
    const auto block = moe::kernels::detail::simd::load_transposed<S>(m.data() + 1, stride, rows);
    for (Index j = 0; j < P; ++j) {
      const std::vector<S> column = elements<S>(block.packet[j]);
      for (Index i = 0; i < P; ++i)
        EXPECT_EQ(column[static_cast<std::size_t>(i)], i < rows ? m(i, j + 1) : S(0)) << "row " << i << ", column " << j;
    }
  }
}

// store_streaming stores the packet: non-temporal into a packet-aligned address when told it is
// aligned, plain otherwise (a misaligned address must never be told it is aligned); its neighbours
// keep their values once stream_fence has ordered the stores.
TYPED_TEST(BlockingTest, StoreStreamingStoresThePacket) {
  using S = TypeParam;
  namespace simd = moe::kernels::detail::simd;
  constexpr Index P = Blocking<S>::kPacket;
  const RowMatrix<S> values = random_matrix<S>(1, P, 2);
  const auto packet = simd::load<S>(values.data());
  for (const auto& [offset, aligned] : {std::pair<Index, bool>{P, true}, {P, false}, {1, false}}) {
    SCOPED_TRACE(testing::Message() << "offset " << offset << (aligned ? ", aligned" : ""));
    moe::detail::AlignedVector<S> to(static_cast<std::size_t>(3 * P), S(-6));
    ASSERT_EQ(reinterpret_cast<std::uintptr_t>(to.data() + offset) % sizeof(simd::Packet<S>) == 0, offset == P);
    simd::store_streaming<S>(to.data() + offset, packet, aligned);
    simd::stream_fence();
    for (Index i = 0; i < 3 * P; ++i) {
      const bool written = i >= offset && i < offset + P;
      EXPECT_EQ(to[static_cast<std::size_t>(i)], written ? values(0, i - offset) : S(-6)) << "at " << i;
    }
  }
}

}  // namespace
