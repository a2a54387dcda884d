// The version macros agree with the version CMake parsed from include/moe/version.hpp.
#include <moe/moe.hpp>

#include <gtest/gtest.h>

#include <string>

TEST(Version, StringMatchesProjectVersion) {
  EXPECT_STREQ(MOE_VERSION_STRING, MOE_PROJECT_VERSION);
}

TEST(Version, StringIsMajorDotMinorDotPatch) {
  const std::string expected = std::to_string(MOE_VERSION_MAJOR) + "." +
                               std::to_string(MOE_VERSION_MINOR) + "." +
                               std::to_string(MOE_VERSION_PATCH);
  EXPECT_EQ(MOE_VERSION_STRING, expected);
}
