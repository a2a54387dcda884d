#include <moe/errors.hpp>

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <type_traits>

namespace MOE_TEST_FILE_ID {

static_assert(std::is_base_of_v<std::invalid_argument, moe::shape_error>);
static_assert(std::is_base_of_v<std::invalid_argument, moe::config_error>);
static_assert(std::is_base_of_v<std::runtime_error, moe::io_error>);

TEST(Errors, CheckDimNamesFunctionDimensionAndBothNumbers) {
  EXPECT_NO_THROW(moe::detail::check_dim("SparseMoE::forward", "x.cols()", 1024, "d_model", 1024));
  try {
    moe::detail::check_dim("SparseMoE::forward", "x.cols()", 512, "d_model", 1024);
    FAIL() << "no exception";
  } catch (const moe::shape_error& e) {
    EXPECT_EQ(std::string(e.what()), "SparseMoE::forward: x.cols() = 512 but d_model = 1024");
  }
}

TEST(Errors, CheckConfigJoinsTheMessage) {
  EXPECT_NO_THROW(moe::detail::check_config(true, "TopKGate", "never shown"));
  try {
    moe::detail::check_config(false, "TopKGate", "top_k = ", 0, " but must be >= ", 1);
    FAIL() << "no exception";
  } catch (const moe::config_error& e) {
    EXPECT_EQ(std::string(e.what()), "TopKGate: top_k = 0 but must be >= 1");
  }
}

}  // namespace
