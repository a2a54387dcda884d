// A small strict JSON (RFC 8259) parser for file headers (safetensors) and configs, so the library
// stays dependency-free. Hardened for untrusted input (it is fuzzed with the safetensors reader):
//   - nesting deeper than max_depth (64) is an error, so recursion is bounded;
//   - strict grammar: no comments, trailing commas, leading zeros, '+' signs, NaN, single quotes;
//   - strings must be valid UTF-8 (no overlong forms, surrogates or code points past U+10FFFF), with
//     control characters escaped; \uXXXX escapes decode to UTF-8, surrogate pairs must be paired;
//   - duplicate object keys are an error;
//   - memory is proportional to the text (no length field is trusted): ~100 bytes per value.
// Errors are moe::io_error "<origin>: JSON at byte <offset>: <what was expected>".
#pragma once

#include "moe/io/detail/utf8.hpp"
#include "moe/errors.hpp"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moe::io::json {

struct Member;

struct Value {
  enum class Kind { null, boolean, number, string, array, object };

  Kind kind = Kind::null;
  bool boolean = false;
  std::string text;             // string: decoded UTF-8; number: the literal as written
  std::vector<Value> items;     // array elements in order
  std::vector<Member> members;  // object members, sorted by key (keys are unique)
  std::size_t offset = 0;       // where it starts in the text (an object member: its key)

  bool is_string() const { return kind == Kind::string; }
  bool is_number() const { return kind == Kind::number; }
  bool is_array() const { return kind == Kind::array; }
  bool is_object() const { return kind == Kind::object; }

  // The member named `key` of an object, or nullptr (also when this is not an object).
  const Value* find(std::string_view key) const;

  // A number written as a plain non-negative integer (no '-', fraction or exponent) that fits.
  std::optional<std::uint64_t> as_uint() const {
    std::uint64_t v = 0;
    if (!is_number() || text.find_first_not_of("0123456789") != std::string::npos) return {};
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (error != std::errc() || end != text.data() + text.size()) return {};
    return v;
  }
  // A number as the nearest double; nullopt when it overflows a double.
  std::optional<double> as_double() const {
    double v = 0;
    if (!is_number()) return {};
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (error != std::errc() || end != text.data() + text.size()) return {};
    return v;
  }
};

struct Member {
  std::string key;
  Value value;
};

inline const Value* Value::find(std::string_view key) const {
  const auto it = std::lower_bound(members.begin(), members.end(), key,
                                   [](const Member& m, std::string_view k) { return m.key < k; });
  return it != members.end() && it->key == key ? &it->value : nullptr;
}

// The JSON string literal for UTF-8 text: quotes, backslashes and control characters escaped.
inline std::string quote(std::string_view utf8) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out = "\"";
  for (const char ch : utf8) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      out += "\\u00";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

}  // namespace moe::io::json

namespace moe::detail {

class JsonParser {
 public:
  JsonParser(std::string_view text, std::string_view origin, std::size_t max_depth)
      : s_(text), origin_(origin), max_depth_(max_depth) {}

  io::json::Value parse_document() {
    skip_space();
    io::json::Value v = parse_value(0);
    skip_space();
    if (pos_ != s_.size()) fail("expected the end of the text after the top-level value");
    return v;
  }

 private:
  // "<origin>: JSON at byte <pos>: <expected> but found <what is there>"
  [[noreturn]] void fail(std::string_view expected) const {
    std::string found = "the end of the text";
    if (pos_ < s_.size()) {
      const auto c = static_cast<unsigned char>(s_[pos_]);
      found = c >= 0x20 && c < 0x7f ? concat("'", static_cast<char>(c), "'")
                                    : concat("byte ", static_cast<unsigned>(c));
    }
    fail_here(concat(expected, " but found ", found));
  }
  [[noreturn]] void fail_here(std::string_view what) const {
    moe::detail::raise(io_error(concat(origin_, ": JSON at byte ", pos_, ": ", what)));
  }

  bool at(char c) const { return pos_ < s_.size() && s_[pos_] == c; }
  void expect(char c, std::string_view what) {
    if (!at(c)) fail(what);
    ++pos_;
  }
  void skip_space() { pos_ = std::min(s_.size(), s_.find_first_not_of(" \t\n\r", pos_)); }

  io::json::Value parse_value(std::size_t depth) {
    io::json::Value v;
    v.offset = pos_;
    if (pos_ >= s_.size()) fail("expected a value");
    const char c = s_[pos_];
    if (c == '{' || c == '[') {
      if (depth >= max_depth_) fail(concat("expected nesting depth <= ", max_depth_));
      if (c == '{') parse_object(v, depth + 1);
      else parse_array(v, depth + 1);
    } else if (c == '"') {
      v.kind = io::json::Value::Kind::string;
      v.text = parse_string();
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      v.kind = io::json::Value::Kind::number;
      v.text = std::string(parse_number());
    } else if (s_.substr(pos_, 4) == "true" || s_.substr(pos_, 5) == "false") {
      v.kind = io::json::Value::Kind::boolean;
      v.boolean = c == 't';
      pos_ += v.boolean ? 4 : 5;
    } else if (s_.substr(pos_, 4) == "null") {
      pos_ += 4;
    } else {
      fail("expected a value");
    }
    return v;
  }

  void parse_object(io::json::Value& v, std::size_t depth) {
    v.kind = io::json::Value::Kind::object;
    ++pos_;
    skip_space();
    if (at('}')) return void(++pos_);
    while (true) {
      skip_space();
      if (!at('"')) fail("expected a string key");
      const std::size_t key_offset = pos_;
      std::string key = parse_string();
      skip_space();
      expect(':', "expected ':' after an object key");
      skip_space();
      v.members.push_back({std::move(key), parse_value(depth)});
      v.members.back().value.offset = key_offset;
      skip_space();
      if (at('}')) break;
      expect(',', "expected ',' or '}' in an object");
    }
    ++pos_;
    std::stable_sort(v.members.begin(), v.members.end(),
                     [](const io::json::Member& a, const io::json::Member& b) { return a.key < b.key; });
    for (std::size_t i = 1; i < v.members.size(); ++i)
      if (v.members[i].key == v.members[i - 1].key) {
        pos_ = v.members[i].value.offset;
        fail_here(concat("key ", io::json::quote(v.members[i].key), " appears twice"));
      }
  }

  void parse_array(io::json::Value& v, std::size_t depth) {
    v.kind = io::json::Value::Kind::array;
    ++pos_;
    skip_space();
    if (at(']')) return void(++pos_);
    while (true) {
      skip_space();
      v.items.push_back(parse_value(depth));
      skip_space();
      if (at(']')) break;
      expect(',', "expected ',' or ']' in an array");
    }
    ++pos_;
  }

  std::string_view parse_number() {
    const std::size_t begin = pos_;
    const auto digits = [&] {
      const std::size_t start = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      return pos_ - start;
    };
    if (at('-')) ++pos_;
    if (at('0')) ++pos_;
    else if (digits() == 0) fail("expected a digit");
    if (at('.')) {
      ++pos_;
      if (digits() == 0) fail("expected a digit after '.'");
    }
    if (at('e') || at('E')) {
      ++pos_;
      if (at('+') || at('-')) ++pos_;
      if (digits() == 0) fail("expected a digit in the exponent");
    }
    return s_.substr(begin, pos_ - begin);
  }

  std::uint32_t parse_hex4() {
    std::uint32_t cp = 0;
    for (int k = 0; k < 4; ++k, ++pos_) {
      if (pos_ >= s_.size()) fail("expected 4 hex digits after \\u");
      const char h = s_[pos_];
      const int d = h >= '0' && h <= '9' ? h - '0'
                    : h >= 'a' && h <= 'f' ? h - 'a' + 10
                    : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
      if (d < 0) fail("expected 4 hex digits after \\u");
      cp = cp * 16 + static_cast<std::uint32_t>(d);
    }
    return cp;
  }

  std::string parse_string() {
    ++pos_;  // the opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("expected '\"' to close the string");
      const auto c = static_cast<unsigned char>(s_[pos_]);
      if (c == '"') break;
      if (c < 0x20) fail("expected no control characters in a string (escape them)");
      if (c != '\\') {
        const std::size_t n = utf8_sequence(s_, pos_);
        if (n == 0) fail("expected valid UTF-8");
        out.append(s_.substr(pos_, n));
        pos_ += n;
        continue;
      }
      ++pos_;
      if (pos_ >= s_.size()) fail("expected an escape character after '\\'");
      static constexpr std::string_view escaped = "\"\\/bfnrt", meaning = "\"\\/\b\f\n\r\t";
      const char e = s_[pos_++];
      if (const auto i = escaped.find(e); i != std::string_view::npos) {
        out += meaning[i];
        continue;
      }
      if (e != 'u') {
        --pos_;
        fail("expected one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u");
      }
      std::uint32_t cp = parse_hex4();
      if (cp >= 0xdc00 && cp <= 0xdfff) fail("expected a high surrogate before a low one");
      if (cp >= 0xd800 && cp <= 0xdbff) {
        if (s_.substr(pos_, 2) != "\\u") fail("expected \\u and a low surrogate");
        pos_ += 2;
        const std::uint32_t low = parse_hex4();
        if (low < 0xdc00 || low > 0xdfff) fail("expected a low surrogate (\\uDC00-\\uDFFF)");
        cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
      }
      append_utf8(out, cp);
    }
    ++pos_;  // the closing quote
    return out;
  }

  std::string_view s_;
  std::string_view origin_;
  std::size_t max_depth_;
  std::size_t pos_ = 0;
};

}  // namespace moe::detail

namespace moe::io::json {

// Parses a whole JSON text; origin names the source in errors ("model.safetensors: header").
inline Value parse(std::string_view text, std::string_view origin, std::size_t max_depth = 64) {
  return moe::detail::JsonParser(text, origin, max_depth).parse_document();
}

}  // namespace moe::io::json
