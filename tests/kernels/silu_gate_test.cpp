// The SwiGLU epilogue's kernel (TileKernels::silu_gate, kernels/tile_kernels.inc: out = silu(h1) ·
// h3 with its own e^x) on every ISA path that has one: within a few float roundings of the double
// result over the whole range, NaN kept, the same bits on every x86 path and wherever an element
// sits in its row.
#include <moe/kernels/format.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using F = moe::kernels::NativeFormat<float>;

double silu_gate(double a1, double a3) { return a1 / (1 + std::exp(-a1)) * a3; }

// h1 over [−100, 100] (and the edges), h3 random; n not a multiple of any width.
struct Rows {
  std::vector<float> h1, h3;
  explicit Rows(Index n) : h1(std::size_t(n)), h3(std::size_t(n)) {
    const moe::RowMatrix<float> r = moe::test::random_matrix<float>(2, n, 5);
    for (Index i = 0; i < n; ++i) {
      h1[std::size_t(i)] = 100.0f * r(0, i) * std::abs(r(0, i));  // dense near 0, reaching ±100
      h3[std::size_t(i)] = r(1, i);
    }
    const float edges[] = {0.0f, -0.0f, 88.0f, -88.0f, 1e-30f, -1e-30f, 3e38f, -3e38f, 20.0f, -20.0f};
    for (std::size_t i = 0; i < std::size(edges); ++i) h1[i] = edges[i], h3[i] = 1.0f;
  }
};

TEST(SiluGate, IsWithinAFewRoundingsOfTheDoubleResultOnEveryPath) {
  const Index n = 1037;
  const Rows rows(n);
  std::vector<std::vector<float>> by_isa;
  for (const moe::Isa isa : moe::kernels::isa_paths<F>()) {
    const auto kernel = F::kernels(isa).silu_gate;
    if (!kernel) continue;  // the generic path keeps Eigen's
    SCOPED_TRACE(moe::isa_name(isa));
    std::vector<float> out(static_cast<std::size_t>(n));
    kernel(n, rows.h1.data(), rows.h3.data(), out.data());
    double worst = 0;
    for (Index i = 0; i < n; ++i) {
      const double want = silu_gate(rows.h1[std::size_t(i)], rows.h3[std::size_t(i)]);
      const double error = std::abs(out[std::size_t(i)] - want) / std::max(std::abs(want), 1e-30);
      worst = std::max(worst, error);
      EXPECT_LE(error, 1e-6) << "h1 = " << rows.h1[std::size_t(i)];
    }
    std::printf("silu gate on %s: max relative error %.2e\n", moe::isa_name(isa).data(), worst);
    by_isa.push_back(out);
  }
  for (std::size_t i = 1; i < by_isa.size(); ++i) EXPECT_EQ(by_isa[i], by_isa[0]) << "every x86 path alike";
}

TEST(SiluGate, KeepsNaNAndGivesTheSameBitsAtAnyOffset) {
  for (const moe::Isa isa : moe::kernels::isa_paths<F>()) {
    const auto kernel = F::kernels(isa).silu_gate;
    if (!kernel) continue;
    SCOPED_TRACE(moe::isa_name(isa));
    const Rows rows(64);
    std::vector<float> whole(64), shifted(64);
    kernel(64, rows.h1.data(), rows.h3.data(), whole.data());
    for (const Index offset : {Index(1), Index(5), Index(17)}) {
      kernel(64 - offset, rows.h1.data() + offset, rows.h3.data() + offset, shifted.data());
      for (Index i = offset; i < 64; ++i) EXPECT_EQ(shifted[std::size_t(i - offset)], whole[std::size_t(i)]) << i;
    }
    const float nan = std::numeric_limits<float>::quiet_NaN(), one = 1.0f;
    float out = 0;
    kernel(1, &nan, &one, &out);
    EXPECT_TRUE(std::isnan(out));
  }
}

}  // namespace MOE_TEST_FILE_ID
