// detail/all_finite.hpp: every non-finite value is found, in every position, in float and double;
// the largest finite values, denormals and signed zeros are finite.
#include <moe/detail/all_finite.hpp>

#include <gtest/gtest.h>

#include <limits>
#include <vector>

namespace MOE_TEST_FILE_ID {

template <class S>
void expect_all_finite_finds_every_bad_value() {
  using L = std::numeric_limits<S>;
  std::vector<S> v = {L::max(), -L::max(), L::denorm_min(), -L::min(), S(0), -S(0), S(1), S(-3.5), L::epsilon()};
  EXPECT_TRUE(moe::detail::all_finite(v.data(), moe::Index(v.size())));
  EXPECT_TRUE(moe::detail::all_finite(v.data(), 0));
  for (const S bad : {L::infinity(), -L::infinity(), L::quiet_NaN(), -L::quiet_NaN(), L::signaling_NaN()})
    for (std::size_t at = 0; at < v.size(); ++at) {
      std::vector<S> w = v;
      w[at] = bad;
      EXPECT_FALSE(moe::detail::all_finite(w.data(), moe::Index(w.size()))) << bad << " at " << at;
      EXPECT_EQ(moe::detail::all_finite(w.data(), moe::Index(at)), true) << "only the first n are read";
    }
}

TEST(AllFinite, Float) { expect_all_finite_finds_every_bad_value<float>(); }
TEST(AllFinite, Double) { expect_all_finite_finds_every_bad_value<double>(); }

}  // namespace MOE_TEST_FILE_ID
