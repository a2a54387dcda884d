// expect_throw_naming<E>(call, text): call() throws E whose message contains text.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <string_view>

namespace moe::test {

template <class E, class Call>
void expect_throw_naming(Call&& call, std::string_view text) {
  try {
    call();
    ADD_FAILURE() << "no exception; expected one naming \"" << text << "\"";
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

}  // namespace moe::test
