// Experts with bf16 weights (SwiGluExpert<float, Bf16>, GeGluExpert, FfnExpert): the packed path
// from prepacked panels and from panels packed as they are used gives the same bits, and stays
// within bf16's rounding of forward() (fp32 from the master weights) — on every ISA path.
#include <moe/moe.hpp>

#include "support/compare.hpp"
#include "support/expert_checks.hpp"

#include <gtest/gtest.h>

namespace MOE_TEST_FILE_ID {

using moe::Index;

// bf16 keeps 8 significant bits: each product is off by up to 2⁻⁸ relatively, randomly, so the
// outputs are off by a few 2⁻⁹ (normalised_error is squared: 1e-4 is 1 %).
constexpr double kBf16Tolerance = 1e-4;

TEST(Bf16Experts, PackedPathsAreConsistentAndWithinBf16OfForward) {
  const moe::ExpertConfig gated{.num_experts = 2, .d_model = 40, .d_ff = 70, .seed = 9};
  moe::ExpertConfig ffn = gated;
  ffn.bias = true;
  ffn.d_model = 41;  // odd: the depth of the up projection is padded
  for (const moe::Isa isa : moe::kernels::isa_paths<moe::Bf16>()) {
    SCOPED_TRACE(moe::isa_name(isa));
    const moe::ScopedIsaCap cap(isa);
    moe::SwiGluExpert<float, moe::Bf16> swiglu(gated);
    moe::GeGluExpert<float, moe::Bf16> geglu(gated);
    moe::ReluExpert<float, moe::Bf16> relu(ffn);
    for (const Index n : {Index(1), Index(3), Index(moe::Bf16::kMR + 3)}) {
      moe::test::check_packed_path(swiglu, 1, n, kBf16Tolerance);
      moe::test::check_packed_path(geglu, 0, n, kBf16Tolerance);
      moe::test::check_packed_path(relu, 1, n, kBf16Tolerance);
    }
  }
}

TEST(Bf16Experts, NameTheirKernels) {
  const moe::ScopedIsaCap cap(moe::Isa::generic);
  using Expert = moe::SwiGluExpert<float, moe::Bf16>;
  EXPECT_EQ(moe::kernel_description<Expert>(), "bf16 weights on generic kernels");
}

}  // namespace MOE_TEST_FILE_ID
