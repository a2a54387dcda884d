#include <moe/io/detail/json.hpp>

#include <gtest/gtest.h>

#include <string>

namespace MOE_TEST_FILE_ID {

using moe::io::json::parse;
using moe::io::json::Value;

// The io_error message of parsing `text`, or "" if it parsed.
std::string error_of(const std::string& text) {
  try {
    parse(text, "t.json");
  } catch (const moe::io_error& e) {
    return e.what();
  }
  return "";
}

TEST(Json, ParsesAllKinds) {
  const Value v = parse(R"( {"b": true, "a": [1, -2.5e3, "x", null, false, {}], "c": {"d": []}} )",
                        "t.json");
  ASSERT_TRUE(v.is_object());
  ASSERT_EQ(v.members.size(), 3u);
  EXPECT_EQ(v.members[0].key, "a");  // sorted
  const Value* a = v.find("a");
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->items.size(), 6u);
  EXPECT_EQ(a->items[0].as_uint(), 1u);
  EXPECT_EQ(a->items[1].as_double(), -2500.0);
  EXPECT_FALSE(a->items[1].as_uint().has_value());
  EXPECT_EQ(a->items[2].text, "x");
  EXPECT_EQ(a->items[3].kind, Value::Kind::null);
  EXPECT_EQ(a->items[4].kind, Value::Kind::boolean);
  EXPECT_FALSE(a->items[4].boolean);
  EXPECT_TRUE(v.find("b")->boolean);
  EXPECT_TRUE(v.find("c")->find("d")->is_array());
  EXPECT_EQ(v.find("zzz"), nullptr);
}

TEST(Json, UnsignedIntegersUpTo64Bits) {
  EXPECT_EQ(parse("18446744073709551615", "t").as_uint(), 18446744073709551615u);
  EXPECT_FALSE(parse("18446744073709551616", "t").as_uint().has_value());
  EXPECT_FALSE(parse("-1", "t").as_uint().has_value());
  EXPECT_FALSE(parse("1.0", "t").as_uint().has_value());
  EXPECT_FALSE(parse("1e2", "t").as_uint().has_value());
  EXPECT_EQ(parse("0", "t").as_uint(), 0u);
  EXPECT_FALSE(parse("1e400", "t").as_double().has_value());
}

TEST(Json, StringEscapesAndUnicode) {
  EXPECT_EQ(parse(R"("a\"b\\c\/d\b\f\n\r\t")", "t").text, "a\"b\\c/d\b\f\n\r\t");
  EXPECT_EQ(parse(R"("\u00e9\u20AC")", "t").text, "\xc3\xa9\xe2\x82\xac");
  EXPECT_EQ(parse(R"("\ud83d\ude00")", "t").text, "\xf0\x9f\x98\x80");  // surrogate pair
  EXPECT_EQ(parse(R"("\u0000")", "t").text, std::string(1, '\0'));
  EXPECT_EQ(parse("\"caf\xc3\xa9 \xf0\x9f\x98\x80\"", "t").text, "caf\xc3\xa9 \xf0\x9f\x98\x80");
}

TEST(Json, QuoteRoundTrips) {
  const std::string text = std::string("k\"e\\y\n\x01 \xc3\xa9") + '\0';
  EXPECT_EQ(moe::io::json::quote("a\"b"), R"("a\"b")");
  EXPECT_EQ(parse(moe::io::json::quote(text), "t").text, text);
}

TEST(Json, RejectsWhatTheGrammarDoesNot) {
  for (const char* bad : {
           "", " ", "{", "[1,]", "{\"a\":1,}", "[1 2]", "{\"a\" 1}", "{1:2}", "'x'", "01", "-",
           "1.", ".5", "+1", "1e", "1e+", "NaN", "Infinity", "tru", "nul", "[1]x", "{} {}",
           "\"abc", "\"a\\x\"", "\"\\u12\"", "\"\\u12g4\"", "\"\x01\"", "\"\xff\"",
           "\"\xc0\xaf\"",          // overlong '/'
           "\"\xed\xa0\x80\"",      // a UTF-16 surrogate encoded in UTF-8
           "\"\xf4\x90\x80\x80\"",  // past U+10FFFF
           "\"\xe2\x82\"",          // truncated sequence
           "\"\\ud83d\"", "\"\\ud83dx\"", "\"\\ude00\"", "\"\\ud83d\\u0041\"", "// c\n1",
       }) {
    EXPECT_NE(error_of(bad), "") << "accepted: " << bad;
  }
}

TEST(Json, ErrorsNameOriginAndOffset) {
  EXPECT_EQ(error_of("[1, 2 x"), "t.json: JSON at byte 6: expected ',' or ']' in an array but found 'x'");
  EXPECT_EQ(error_of("{\"a\": 1, \"a\": 2}"),
            "t.json: JSON at byte 9: key \"a\" appears twice");
  EXPECT_NE(error_of("\"\x01\"").find("byte 1"), std::string::npos);
}

TEST(Json, DepthIsLimited) {
  const auto nested = [](int depth) { return std::string(depth, '[') + std::string(depth, ']'); };
  EXPECT_EQ(error_of(nested(64)), "");
  EXPECT_NE(error_of(nested(65)).find("nesting depth <= 64"), std::string::npos);
  // Far deeper than any stack: still an error, not a crash.
  EXPECT_NE(error_of(std::string(1'000'000, '[')), "");
  EXPECT_NE(error_of(std::string(1'000'000, '{')), "");
  EXPECT_NO_THROW(parse(nested(3), "t", 3));
  EXPECT_THROW(parse(nested(4), "t", 3), moe::io_error);
}

TEST(Json, WhitespaceIsOnlyTheFourJsonCharacters) {
  EXPECT_NO_THROW(parse(" \t\r\n[ 1 ,\n2 ]\n ", "t"));
  EXPECT_THROW(parse("\v[1]", "t"), moe::io_error);
  EXPECT_THROW(parse("[1]\f", "t"), moe::io_error);
}

}  // namespace
