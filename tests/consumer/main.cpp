// A program outside the moe tree: it sees moe only the way a user's project does.
#include <moe/moe.hpp>

#include <cstdio>
#include <cstring>

int main() {
  std::printf("moe %s\n", MOE_VERSION_STRING);
  // The build passes the version it expects, so picking up a stale or foreign moe fails here.
  return std::strcmp(MOE_VERSION_STRING, MOE_EXPECTED_VERSION) == 0 ? 0 : 1;
}
