#include "json_util.hpp"

#include <algorithm>
#include <charconv>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <set>
#include <vector>

namespace tvmsplit {
namespace {

constexpr size_t kLenientDepth = 900;  // Python's json.loads fails near its recursion limit (1000)

// nlohmann's DOM builder with the protocol's extra rules; returning false stops the parse.
class CheckedSax {
 public:
  CheckedSax(json& out, const ParseOptions& opts) : dom_(out, false), opts_(opts) {}
  std::string why;  // set when the parse stops

  bool null() { return dom_.null(); }
  bool boolean(bool v) { return dom_.boolean(v); }
  bool number_integer(json::number_integer_t v) { return dom_.number_integer(v); }
  bool number_unsigned(json::number_unsigned_t v) { return dom_.number_unsigned(v); }
  bool number_float(json::number_float_t v, const json::string_t& raw) {
    if (opts_.reject_non_finite && !std::isfinite(v)) {
      // Python reads an integer literal of any length as an int (up to 4300 digits)
      bool integral = raw.find_first_of(".eE") == json::string_t::npos;
      if (!integral || raw.size() > 4300) {
        why = "number " + raw + " is out of range";
        return false;
      }
    }
    return dom_.number_float(v, raw);
  }
  bool string(json::string_t& v) { return dom_.string(v); }
  bool binary(json::binary_t& v) { return dom_.binary(v); }
  // Python checks as it goes only its recursion limit (about kLenientDepth); the protocol's
  // depth limit after the parse (deepest()), and duplicate keys when an object ends.
  bool start_object(std::size_t n) {
    if (!deeper()) return false;
    keys_.emplace_back();
    duplicate_.emplace_back();
    return dom_.start_object(n);
  }
  bool key(json::string_t& k) {
    if (opts_.reject_duplicates && !keys_.back().insert(k).second && duplicate_.back().empty())
      duplicate_.back() = "duplicate key " + pyrepr(k);
    return dom_.key(k);
  }
  bool end_object() {
    --depth_;
    keys_.pop_back();
    if (!duplicate_.back().empty()) {
      why = duplicate_.back();
      return false;
    }
    duplicate_.pop_back();
    return dom_.end_object();
  }
  bool start_array(std::size_t n) {
    if (!deeper()) return false;
    return dom_.start_array(n);
  }
  size_t deepest() const { return deepest_; }
  bool end_array() {
    --depth_;
    return dom_.end_array();
  }
  template <class E>
  bool parse_error(std::size_t, const std::string&, const E& exc) {
    why = exc.what();
    size_t cut = why.find("] ");  // nlohmann's "[json.exception.parse_error.101] "
    if (cut != std::string::npos) why = why.substr(cut + 2);
    return false;
  }
  bool deeper() {
    deepest_ = std::max(deepest_, ++depth_);
    if (depth_ <= kLenientDepth) return true;
    why = "nested deeper than " + std::to_string(opts_.max_depth);
    return false;
  }

 private:
  nlohmann::detail::json_sax_dom_parser<json> dom_;
  ParseOptions opts_;
  size_t depth_ = 0, deepest_ = 0;
  std::vector<std::set<std::string>> keys_;
  std::vector<std::string> duplicate_;
};

bool has_bom(const char* data, size_t size) {
  return size >= 3 && static_cast<unsigned char>(data[0]) == 0xEF &&
         static_cast<unsigned char>(data[1]) == 0xBB && static_cast<unsigned char>(data[2]) == 0xBF;
}

std::optional<json> run_sax(const char* data, size_t size, const ParseOptions& opts,
                            std::string* why) {
  json out;
  CheckedSax sax(out, opts);
  bool ok = false;
  try {
    ok = json::sax_parse(data, data + size, &sax, nlohmann::detail::input_format_t::json, true);
  } catch (const std::exception& exc) {
    sax.why = exc.what();
    ok = false;
  }
  if (ok && sax.deepest() > opts.max_depth) {
    ok = false;
    sax.why = "nested deeper than " + std::to_string(opts.max_depth);
  }
  if (!ok) {
    if (why) *why = sax.why.empty() ? "not valid JSON" : sax.why;
    return std::nullopt;
  }
  return out;
}

// Rewrites the tokens nlohmann reads differently from Python's json module, outside strings:
// NaN / Infinity / -Infinity (Python reads them; with `constants` they become null), and numbers
// that overflow a double (nlohmann refuses them; Python reads an integer literal of up to 4300
// digits as an int, which becomes +-1e308 here: out of every int range, as it is in Python; a
// float literal is inf in Python, rejected with `reject_inf`, else null). False: reject.
bool rewrite_tokens(const char* data, size_t size, bool constants, bool reject_inf,
                    std::string* out, std::string* why) {
  out->clear();
  out->reserve(size);
  bool in_string = false;
  for (size_t i = 0; i < size; ++i) {
    char c = data[i];
    if (in_string) {
      *out += c;
      if (c == '\\' && i + 1 < size) {
        *out += data[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
      *out += c;
      continue;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
      size_t j = i + 1;
      while (j < size && (std::isdigit(static_cast<unsigned char>(data[j])) || data[j] == '.' ||
                          data[j] == 'e' || data[j] == 'E' || data[j] == '+' || data[j] == '-'))
        ++j;
      std::string token(data + i, j - i);
      double v = std::strtod(token.c_str(), nullptr);
      if (std::isinf(v)) {
        bool integral = token.find_first_of(".eE") == std::string::npos;
        size_t digits = token.size() - (token[0] == '-');
        if (integral) {
          if (digits > 4300) {  // Python: "Exceeds the limit (4300 digits) ..."
            *why = "an integer of " + std::to_string(digits) + " digits (the limit is 4300)";
            return false;
          }
          token = token[0] == '-' ? "-1e308" : "1e308";
        } else {
          if (reject_inf) {
            *why = "number " + token + " is out of range";
            return false;
          }
          token = "null";
        }
      }
      *out += token;
      i = j - 1;
      continue;
    }
    auto at = [&](const char* word) {
      size_t n = std::char_traits<char>::length(word);
      return i + n <= size && std::equal(word, word + n, data + i) ? n : 0;
    };
    size_t n = at("-Infinity");
    if (!n) n = at("Infinity");
    if (!n) n = at("NaN");
    if (n && !constants) {  // strict: Python's parse_constant hook refuses them
      *why = std::string(data + i, n) + " is not valid JSON";
      return false;
    }
    if (n) {
      *out += "null";
      i += n - 1;
    } else {
      *out += c;
    }
  }
  return true;
}

}  // namespace

std::string utf8_error(const char* data, size_t size) {
  // Python's strict UTF-8 decoder: the first bad byte, in its words
  const auto* s = reinterpret_cast<const unsigned char*>(data);
  auto say = [&](size_t at, const char* why) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "'utf-8' codec can't decode byte 0x%02x in position %zu: %s",
                  s[at], at, why);
    return std::string(buf);
  };
  size_t i = 0;
  while (i < size) {
    unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t n;
    if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
    } else {
      return say(i, "invalid start byte");
    }
    // the second byte's range excludes overlong forms, surrogates and code points > U+10FFFF
    unsigned char lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
    unsigned char hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
    for (size_t k = 1; k <= n; ++k) {
      if (i + k >= size) return say(i, "unexpected end of data");
      unsigned char b = s[i + k];
      if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF))
        return say(i, "invalid continuation byte");
    }
    i += n + 1;
  }
  return "";
}

bool valid_utf8(const char* data, size_t size) { return utf8_error(data, size).empty(); }

size_t utf8_length(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string utf8_prefix(const std::string& s, size_t n) {
  size_t seen = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) {
      if (seen == n) return s.substr(0, i);
      ++seen;
    }
  }
  return s;
}

std::optional<json> parse_strict(const char* data, size_t size, const ParseOptions& opts,
                                 std::string* why) {
  std::string reason;
  why = why ? why : &reason;
  std::string bad = utf8_error(data, size);
  if (!bad.empty()) {
    *why = "not valid UTF-8: " + bad;
    return std::nullopt;
  }
  if (has_bom(data, size)) {
    *why = "Unexpected UTF-8 BOM";
    return std::nullopt;
  }
  std::string text;
  if (!rewrite_tokens(data, size, false, opts.reject_non_finite, &text, why)) return std::nullopt;
  return run_sax(text.data(), text.size(), opts, why);
}

std::optional<json> parse_lenient(const char* data, size_t size) {
  if (has_bom(data, size)) {
    data += 3;
    size -= 3;
  }
  if (!valid_utf8(data, size)) return std::nullopt;
  std::string text, why;
  if (!rewrite_tokens(data, size, true, false, &text, &why)) return std::nullopt;
  ParseOptions opts;
  opts.max_depth = kLenientDepth;
  opts.reject_duplicates = false;
  opts.reject_non_finite = false;
  return run_sax(text.data(), text.size(), opts, nullptr);
}

namespace {

// A double as Python's repr() writes it (json.dumps uses float.__repr__): the shortest digits
// that read back to the same double (std::to_chars), in fixed notation when the decimal
// exponent is in [-4, 16), else d.ddde+XX.
void write_double(double v, std::string* out) {
  if (!std::isfinite(v)) {  // never sent: parsing refuses them and our own numbers are finite
    *out += "null";
    return;
  }
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  bool negative = sci[0] == '-';
  if (negative) sci.erase(0, 1);
  size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  int exp = std::atoi(sci.c_str() + e + 1);
  if (negative) *out += '-';
  if (exp >= -4 && exp < 16) {
    if (exp >= 0) {
      std::string whole = digits.substr(0, std::min(digits.size(), static_cast<size_t>(exp) + 1));
      whole.append(static_cast<size_t>(exp) + 1 - whole.size(), '0');
      std::string frac = digits.size() > static_cast<size_t>(exp) + 1 ? digits.substr(exp + 1) : "0";
      *out += whole + "." + frac;
    } else {
      *out += "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    }
    return;
  }
  *out += digits.substr(0, 1);
  if (digits.size() > 1) *out += "." + digits.substr(1);
  char ebuf[16];
  std::snprintf(ebuf, sizeof ebuf, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
  *out += ebuf;
}

// A string as json.dumps(ensure_ascii=False) writes it.
void write_string(const std::string& s, std::string* out) {
  *out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      case '\b': *out += "\\b"; break;
      case '\f': *out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          *out += buf;
        } else {
          *out += static_cast<char>(c);
        }
    }
  }
  *out += '"';
}

void write_canonical(const json& j, std::string* out) {
  switch (j.type()) {
    case json::value_t::object: {  // std::map: keys in byte order = code point order (UTF-8)
      *out += '{';
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (!first) *out += ',';
        first = false;
        write_string(it.key(), out);
        *out += ':';
        write_canonical(it.value(), out);
      }
      *out += '}';
      break;
    }
    case json::value_t::array: {
      *out += '[';
      for (size_t i = 0; i < j.size(); ++i) {
        if (i) *out += ',';
        write_canonical(j[i], out);
      }
      *out += ']';
      break;
    }
    case json::value_t::string: write_string(j.get_ref<const std::string&>(), out); break;
    case json::value_t::boolean: *out += j.get<bool>() ? "true" : "false"; break;
    case json::value_t::number_integer: *out += std::to_string(j.get<int64_t>()); break;
    case json::value_t::number_unsigned: *out += std::to_string(j.get<uint64_t>()); break;
    case json::value_t::number_float: write_double(j.get<double>(), out); break;
    default: *out += "null"; break;
  }
}

}  // namespace

std::string canonical(const json& j) {
  std::string out;
  write_canonical(j, &out);
  return out;
}

bool is_int_in(const json& j, int64_t lo, uint64_t hi) {
  if (j.is_number_unsigned()) {
    auto v = j.get<uint64_t>();
    return (lo <= 0 || v >= static_cast<uint64_t>(lo)) && v < hi;
  }
  if (j.is_number_integer()) {
    auto v = j.get<int64_t>();
    return v >= lo && (v < 0 || static_cast<uint64_t>(v) < hi);
  }
  return false;
}

std::string pyrepr(const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos;
  bool has_double = s.find('"') != std::string::npos;
  char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == static_cast<unsigned char>(quote)) {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += quote;
  return out;
}

std::string pyrepr(const json& j) {
  switch (j.type()) {
    case json::value_t::null:
      return "None";
    case json::value_t::boolean:
      return j.get<bool>() ? "True" : "False";
    case json::value_t::string:
      return pyrepr(j.get<std::string>());
    case json::value_t::number_float: {
      double v = j.get<double>();
      if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
      if (std::isnan(v)) return "nan";
      return j.dump();
    }
    case json::value_t::array: {
      std::string out = "[";
      for (size_t i = 0; i < j.size(); ++i) out += (i ? ", " : "") + pyrepr(j[i]);
      return out + "]";
    }
    case json::value_t::object: {
      std::string out = "{";
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        out += (first ? "" : ", ") + pyrepr(it.key()) + ": " + pyrepr(it.value());
        first = false;
      }
      return out + "}";
    }
    default:
      return j.dump();
  }
}

}  // namespace tvmsplit
