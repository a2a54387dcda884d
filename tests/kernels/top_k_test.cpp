// top_k: the k largest values, best first, ties to the lower index, against a reference built
// on std::stable_sort.
#include <moe/kernels/top_k.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using Ids = std::vector<std::int32_t>;

// Indices sorted by value descending; stable, so equal values keep ascending index order.
template <class S>
Ids reference_top_k(const std::vector<S>& values, Index k) {
  Ids order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) { return values[a] > values[b]; });
  order.resize(static_cast<std::size_t>(k));
  return order;
}

// Runs the kernel into a buffer one longer than k whose last entry must survive.
template <class S>
Ids top_k(const std::vector<S>& values, Index k) {
  constexpr std::int32_t canary = 12345;
  Ids ids(static_cast<std::size_t>(k + 1), -7);
  ids.back() = canary;
  moe::kernels::top_k(values.data(), static_cast<Index>(values.size()), k, ids.data());
  EXPECT_EQ(ids.back(), canary) << "top_k wrote past ids[k - 1]";
  ids.pop_back();
  return ids;
}

template <class S>
class TopKTest : public ::testing::Test {};
TYPED_TEST_SUITE(TopKTest, moe::test::Scalars);

TYPED_TEST(TopKTest, TiesGoToTheLowerIndex) {
  using S = TypeParam;
  const std::vector<S> values = {S(1), S(3), S(3), S(2), S(3)};
  EXPECT_EQ(top_k(values, 1), (Ids{1}));
  EXPECT_EQ(top_k(values, 2), (Ids{1, 2}));
  EXPECT_EQ(top_k(values, 3), (Ids{1, 2, 4}));
  EXPECT_EQ(top_k(values, 4), (Ids{1, 2, 4, 3}));
  EXPECT_EQ(top_k(values, 5), (Ids{1, 2, 4, 3, 0}));

  const std::vector<S> equal(6, S(0.25));
  EXPECT_EQ(top_k(equal, 3), (Ids{0, 1, 2}));
  EXPECT_EQ(top_k(equal, 6), (Ids{0, 1, 2, 3, 4, 5}));

  // A later, equal value must not displace an earlier one once the list is full.
  const std::vector<S> late = {S(5), S(4), S(4), S(4)};
  EXPECT_EQ(top_k(late, 2), (Ids{0, 1}));
}

TYPED_TEST(TopKTest, KEqualsOneIsTheFirstArgmax) {
  using S = TypeParam;
  EXPECT_EQ(top_k(std::vector<S>{S(-2), S(7), S(-1), S(7)}, 1), (Ids{1}));
  EXPECT_EQ(top_k(std::vector<S>{S(9), S(1), S(2)}, 1), (Ids{0}));
  EXPECT_EQ(top_k(std::vector<S>{S(1), S(2), S(9)}, 1), (Ids{2}));
  EXPECT_EQ(top_k(std::vector<S>{S(4)}, 1), (Ids{0}));
}

TYPED_TEST(TopKTest, KEqualsNIsAFullStableSort) {
  using S = TypeParam;
  const std::vector<S> values = {S(0.5), S(-1), S(2), S(0.5), S(3), S(-1), S(0)};
  EXPECT_EQ(top_k(values, 7), (Ids{4, 2, 0, 3, 6, 1, 5}));
}

TYPED_TEST(TopKTest, InfiniteValues) {
  using S = TypeParam;
  const S inf = std::numeric_limits<S>::infinity();
  // Masked entries (-inf) come last, in index order, and only when k forces them in.
  const std::vector<S> masked = {-inf, S(2), -inf, S(1), -inf};
  EXPECT_EQ(top_k(masked, 2), (Ids{1, 3}));
  EXPECT_EQ(top_k(masked, 3), (Ids{1, 3, 0}));
  EXPECT_EQ(top_k(masked, 5), (Ids{1, 3, 0, 2, 4}));
  const std::vector<S> all_masked(4, -inf);
  EXPECT_EQ(top_k(all_masked, 2), (Ids{0, 1}));
  EXPECT_EQ(top_k(all_masked, 4), (Ids{0, 1, 2, 3}));
  const std::vector<S> plus = {S(1), inf, -inf, inf, std::numeric_limits<S>::lowest()};
  EXPECT_EQ(top_k(plus, 4), (Ids{1, 3, 0, 4}));
}

TYPED_TEST(TopKTest, MatchesStableSortReferenceOnRandomData) {
  using S = TypeParam;
  constexpr Index kRows = 50;
  for (Index n : {Index(1), Index(4), Index(7), Index(16)}) {
    // Continuous values (no ties) and values rounded to a few levels (many ties).
    const moe::RowMatrix<S> random = moe::test::random_matrix<S>(kRows, n, 100 + static_cast<std::uint64_t>(n));
    for (bool rounded : {false, true})
      for (Index row = 0; row < kRows; ++row) {
        std::vector<S> values(static_cast<std::size_t>(n));
        for (Index i = 0; i < n; ++i)
          values[static_cast<std::size_t>(i)] = rounded ? std::round(random(row, i) * S(2)) : random(row, i);
        for (Index k = 1; k <= n; ++k)
          ASSERT_EQ(top_k(values, k), reference_top_k(values, k))
              << "n = " << n << ", k = " << k << ", row " << row << (rounded ? " (rounded)" : "");
      }
  }
}

TYPED_TEST(TopKTest, ReadsOnlyTheFirstNValues) {
  using S = TypeParam;
  const std::vector<S> values = {S(1), S(2), S(3), S(100)};
  Ids ids(2);
  moe::kernels::top_k(values.data(), 3, 2, ids.data());
  EXPECT_EQ(ids, (Ids{2, 1}));
}

}  // namespace
