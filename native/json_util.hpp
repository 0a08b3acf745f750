// JSON as the protocols need it: strict parsing (wire spec check 3, control check 2), the lenient
// parse Python's json.loads does (reading a request id from a header that failed), the canonical
// form (keys sorted, "," ":" separators, non-ASCII raw), and Python-style repr for messages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace tvmsplit {

using json = nlohmann::json;

struct ParseOptions {
  size_t max_depth = 32;         // arrays/objects; the top-level value is depth 1
  bool reject_duplicates = true;  // a repeated key in one object
  bool reject_non_finite = true;  // numbers that overflow a double (1e999)
};

// Strict parse of a whole buffer: valid UTF-8, no BOM, no NaN/Infinity literals, within the
// options. nullopt on any failure (the caller decides the code).
// `why` (optional) gets the reason of a failure, in the words of Python's json module where it
// has them (duplicate key 'k', NaN is not valid JSON, number 1e999 is out of range).
std::optional<json> parse_strict(const char* data, size_t size, const ParseOptions& opts,
                                 std::string* why = nullptr);

// What Python's plain json.loads(bytes) accepts: a UTF-8 BOM, NaN/Infinity literals, duplicate
// keys (last wins), nesting up to about the interpreter's recursion limit.
std::optional<json> parse_lenient(const char* data, size_t size);

bool valid_utf8(const char* data, size_t size);
std::string utf8_error(const char* data, size_t size);  // "" when valid
size_t utf8_length(const std::string& s);                  // code points
std::string utf8_prefix(const std::string& s, size_t n);   // the first n code points

// The canonical form (json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)).
std::string canonical(const json& j);

// Python's repr() of a parsed JSON value (for error messages that quote a value).
std::string pyrepr(const json& j);
std::string pyrepr(const std::string& s);

// An int in [lo, hi) that is not a bool (Python's isinstance(x, int) and not bool).
bool is_int_in(const json& j, int64_t lo, uint64_t hi);

}  // namespace tvmsplit
