// moe/isa.hpp: the ISA ladder, its names, detection (checked against the compiler's own cpuid
// reading), and the cap from set_isa_cap() and from MOE_ISA.
#include <moe/isa.hpp>
#include <moe/kernels/format.hpp>


#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

namespace MOE_TEST_FILE_ID {

using moe::Isa;

TEST(Isa, NamesRoundTripAndUnknownNamesAreRefused) {
  for (const Isa isa : {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512bf16, Isa::amx})
    EXPECT_EQ(moe::parse_isa(moe::isa_name(isa)), isa);
  try {
    moe::parse_isa("avx1024");
    FAIL() << "no exception";
  } catch (const moe::config_error& e) {
    EXPECT_NE(std::string(e.what()).find("'avx1024'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("avx512bf16"), std::string::npos) << e.what();
  }
}

#if MOE_X86_KERNELS && defined(__GNUC__)
// GCC's and Clang's __builtin_cpu_supports read cpuid on their own: the rung must agree with them.
TEST(Isa, DetectionAgreesWithTheCompilersCpuid) {
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const Isa detected = moe::detected_isa();
  EXPECT_EQ(detected >= Isa::avx2, avx2) << moe::isa_name(detected);
  EXPECT_EQ(detected >= Isa::avx512, avx2 && avx512) << moe::isa_name(detected);
}
#endif

TEST(Isa, TheCapLowersTheActiveRungAndNeverRaisesIt) {
  const moe::ScopedIsaCap restore(moe::isa_cap());
  moe::set_isa_cap(Isa::generic);
  EXPECT_EQ(moe::active_isa(), Isa::generic);
  moe::set_isa_cap(Isa::amx);
  EXPECT_EQ(moe::active_isa(), moe::detected_isa());
  for (const Isa isa : moe::kernels::isa_paths<moe::kernels::NativeFormat<float>>()) {
    moe::set_isa_cap(isa);
    EXPECT_EQ(moe::active_isa(), isa);
  }
}

// MOE_ISA is read when no cap has been set; a name that is not a rung is a config_error.
TEST(Isa, TheEnvironmentSetsTheCapUntilTheApiDoes) {
  const moe::ScopedIsaCap restore(moe::isa_cap());
  moe::detail::isa_cap_slot().store(-1);
  ASSERT_EQ(setenv("MOE_ISA", "generic", 1), 0);
  EXPECT_EQ(moe::isa_cap(), Isa::generic);
  EXPECT_EQ(moe::active_isa(), Isa::generic);
  moe::set_isa_cap(Isa::avx2);
  EXPECT_EQ(moe::isa_cap(), Isa::avx2);
  moe::detail::isa_cap_slot().store(-1);
  ASSERT_EQ(setenv("MOE_ISA", "fastest", 1), 0);
  EXPECT_THROW(moe::isa_cap(), moe::config_error);
  ASSERT_EQ(unsetenv("MOE_ISA"), 0);
  EXPECT_EQ(moe::isa_cap(), Isa::amx);
}

}  // namespace MOE_TEST_FILE_ID
