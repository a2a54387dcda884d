// moe — sparse Mixture-of-Experts layers on Eigen.
// The one place the version lives; CMakeLists.txt parses these three lines.
#pragma once

#define MOE_VERSION_MAJOR 0
#define MOE_VERSION_MINOR 1
#define MOE_VERSION_PATCH 0

#define MOE_VERSION_STRING_IMPL(a, b, c) #a "." #b "." #c
#define MOE_VERSION_STRING_EXPAND(a, b, c) MOE_VERSION_STRING_IMPL(a, b, c)
#define MOE_VERSION_STRING \
  MOE_VERSION_STRING_EXPAND(MOE_VERSION_MAJOR, MOE_VERSION_MINOR, MOE_VERSION_PATCH)
