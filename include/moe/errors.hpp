// Errors thrown at the library's public boundary (docs/architecture.md §9).
//
// Every message names its origin, the offending quantity and both numbers:
//   "SparseMoE::forward: x.cols() = 512 but d_model = 1024"
// MOE_THROW and MOE_ASSERT can be overridden by defining them before the first include.
#pragma once

#include <Eigen/Core>

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace moe {

// A tensor has the wrong shape for the call it was passed to.
struct shape_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// A configuration value is out of its valid range.
struct config_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// An argument is in the wrong state for the call: a cache that no training forward filled.
struct state_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// A file could not be read or written as expected.
struct io_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace moe

// The one place that knows what a build without exceptions does with an error: it prints the
// message and aborts (-fno-exceptions). Define MOE_THROW yourself to route errors elsewhere.
#ifndef MOE_THROW
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#define MOE_THROW(exception) throw exception
#else
#define MOE_THROW(exception) ::moe::detail::terminate_with(exception)
#endif
#endif

#ifndef MOE_ASSERT
#ifdef NDEBUG
#define MOE_ASSERT(condition) ((void)0)
#else
#include <cassert>
#define MOE_ASSERT(condition) assert(condition)
#endif
#endif

namespace moe::detail {

// Prints the error and aborts: MOE_THROW without exceptions, and raise() when a user's MOE_THROW
// returns.
template <class E>
[[noreturn]] void terminate_with(const E& error) noexcept {
  std::fprintf(stderr, "moe: %s\n", error.what());
  std::abort();
}

// MOE_THROW(error) for functions that must not return ([[noreturn]] helpers that build messages).
template <class E>
[[noreturn]] void raise(const E& error) {
  MOE_THROW(error);
  terminate_with(error);
}

template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

// Throws shape_error "where: what = got but expected_name = expected" unless got == expected.
inline void check_dim(std::string_view where, std::string_view what, Eigen::Index got,
                      std::string_view expected_name, Eigen::Index expected) {
  if (got != expected)
    MOE_THROW(shape_error(
        concat(where, ": ", what, " = ", got, " but ", expected_name, " = ", expected)));
}

// Throws config_error "where: message" unless ok.
template <class... Parts>
void check_config(bool ok, std::string_view where, const Parts&... message) {
  if (!ok) MOE_THROW(config_error(concat(where, ": ", message...)));
}

}  // namespace moe::detail
