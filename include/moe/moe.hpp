// moe — the one entry header. Include this; everything public is reachable from here
// (moe/testing/ is not included: it is for tests of user code).
#pragma once

#include "moe/version.hpp"
