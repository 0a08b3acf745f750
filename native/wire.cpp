#include "wire.hpp"

#include <regex>
#include <set>

namespace tvmsplit::wire {
namespace {

const char* const kFields[] = {"v", "kind", "id", "stage", "tensors", "trace", "error"};
const std::set<std::string> kKinds = {"request", "reply", "error"};

[[noreturn]] void fail(const std::string& code, const std::string& message) {
  throw WireError{code, message};
}

void need(bool cond, const char* code, const std::string& message) {
  if (!cond) fail(code, message);
}

bool error_code_ok(const std::string& code) {
  if (code.empty() || code.size() > 64 || !(code[0] >= 'a' && code[0] <= 'z')) return false;
  for (char c : code)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  return true;
}

std::string py_type(const json& j) {  // Python's type(x).__name__ of a parsed value
  if (j.is_boolean()) return "bool";
  if (j.is_number_integer()) return "int";
  if (j.is_number_float()) return "float";
  if (j.is_string()) return "str";
  if (j.is_array()) return "list";
  if (j.is_null()) return "NoneType";
  return "dict";
}

std::string sorted_repr(const std::set<std::string>& names) {
  return names_repr(std::vector<std::string>(names.begin(), names.end()));
}

// Checks 2-10: the header object and its tensor metadata.
Message parse_header(const char* raw, size_t size, bool check_max, uint64_t max_bytes) {
  need(size <= kMaxHeaderBytes, "too_large",
       "header is " + std::to_string(size) + " bytes; the limit is " +
           std::to_string(kMaxHeaderBytes));
  ParseOptions opts;
  opts.max_depth = kMaxDepth;
  std::string why;
  auto parsed = parse_strict(raw, size, opts, &why);
  if (!parsed) {
    if (why.rfind("nested deeper", 0) == 0) fail("bad_header", "header is " + why);
    if (why.rfind("not valid UTF-8", 0) == 0) fail("bad_header", "header frame is " + why);
    fail("bad_header", "header frame is not valid JSON: " + why);
  }
  const json& h = *parsed;
  need(h.is_object(), "bad_header", "header must be a JSON object, got " + py_type(h));
  need(h.contains("v"), "missing_field", "header has no 'v' (format version)");
  need(is_int_in(h["v"], 1, 2), "bad_version",
       "received wire format version " + pyrepr(h["v"]) + "; this build supports version 1");
  std::set<std::string> unknown;
  for (auto it = h.begin(); it != h.end(); ++it) {
    bool known = false;
    for (const char* f : kFields) known = known || it.key() == f;
    if (!known) unknown.insert(it.key());
  }
  need(unknown.empty(), "unknown_field",
       "header has unknown field(s) " + sorted_repr(unknown) +
           "; v1 allows ['v', 'kind', 'id', 'stage', 'tensors', 'trace', 'error']");
  for (const char* key : {"kind", "id", "stage", "tensors", "trace"}) {
    need(h.contains(key), "missing_field", std::string("header has no '") + key + "'");
    const json& v = h[key];
    std::string k = key;
    if (k == "kind") {
      need(v.is_string() && kKinds.count(v.get<std::string>()), "bad_field",
           "'kind' must be one of ['request', 'reply', 'error'], got " + pyrepr(v));
    } else if (k == "id") {
      need(is_int_in(v, 0, 1ull << 63), "bad_field",
           "'id' must be an int in [0, 9223372036854775808), got " + pyrepr(v));
    } else if (k == "stage") {
      need(is_int_in(v, 0, 1ull << 31), "bad_field",
           "'stage' must be an int in [0, 2147483648), got " + pyrepr(v));
    } else {
      need(v.is_array(), "bad_field", "'" + k + "' must be a list");
    }
  }
  for (const auto& e : h["trace"])
    need(e.is_object(), "bad_field", "'trace' entries must be JSON objects");
  Message msg;
  msg.kind = h["kind"].get<std::string>();
  bool is_err = msg.kind == "error";
  if (is_err) {
    need(h.contains("error"), "missing_field", "kind 'error' needs an 'error' field");
  } else {
    need(!h.contains("error"), "bad_field",
         "'error' field is only allowed with kind 'error', not " + pyrepr(h["kind"]));
  }
  if (is_err) {
    const json& e = h["error"];
    bool ok = e.is_object() && e.size() == 2 && e.contains("code") && e.contains("message") &&
              e["code"].is_string() && error_code_ok(e["code"].get<std::string>()) &&
              e["message"].is_string();
    need(ok, "bad_field",
         "'error' must be {'code': [a-z][a-z0-9_]{0,63}, 'message': str}, got " + pyrepr(e));
    need(h["tensors"].empty(), "bad_field", "an error message carries no tensors");
    msg.error_code = e["code"].get<std::string>();
    msg.error_message = e["message"].get<std::string>();
  }
  std::set<std::string> seen;
  unsigned __int128 total = 0;
  size_t i = 0;
  for (const auto& t : h["tensors"]) {
    bool keys = t.is_object() && t.size() == 3 && t.contains("name") && t.contains("dtype") &&
                t.contains("shape");
    need(keys, "bad_field", "tensor entry " + std::to_string(i) +
                                " must be an object with exactly 'name', 'dtype', 'shape'");
    const json &name = t["name"], &dtype = t["dtype"], &shape = t["shape"];
    need(name.is_string() && utf8_length(name.get<std::string>()) >= 1 &&
             utf8_length(name.get<std::string>()) <= kMaxNameChars,
         "bad_field", "tensor entry " + std::to_string(i) + ": name must be a str of 1..256 " +
                          "chars, got " + pyrepr(name));
    std::string nm = name.get<std::string>();
    need(dtype.is_string() && itemsize(dtype.get<std::string>()) > 0, "bad_dtype",
         "tensor " + pyrepr(nm) + ": dtype " + pyrepr(dtype) +
             " is not one of ['bool', 'float16', 'float32', 'float64', 'int16', 'int32', "
             "'int64', 'int8', 'uint8']");
    bool shape_ok = shape.is_array() && shape.size() <= kMaxRank;
    if (shape_ok)
      for (const auto& d : shape) shape_ok = shape_ok && is_int_in(d, 0, 1ull << 63);
    need(shape_ok, "bad_shape", "tensor " + pyrepr(nm) + ": shape must be a list of at most 8 " +
                                    "ints in [0, 2**63), got " + pyrepr(shape));
    size_t item = itemsize(dtype.get<std::string>());
    unsigned __int128 prod_nonzero = item, prod = item;
    bool overflow = false;
    TensorMeta meta{nm, dtype.get<std::string>(), {}, 0};
    for (const auto& d : shape) {
      uint64_t v = d.get<uint64_t>();
      meta.shape.push_back(static_cast<int64_t>(v));
      if (v) {
        prod_nonzero *= v;
        if (prod_nonzero >= (static_cast<unsigned __int128>(1) << 63)) overflow = true;
      }
      if (overflow) break;
    }
    need(!overflow, "bad_shape", "tensor " + pyrepr(nm) + ": shape " + pyrepr(shape) +
                                     " has more elements than any array can hold");
    for (int64_t v : meta.shape) prod *= static_cast<uint64_t>(v);
    need(seen.insert(nm).second, "duplicate_tensor",
         "tensor name " + pyrepr(nm) + " appears twice");
    meta.nbytes = static_cast<uint64_t>(prod);
    total += prod;
    msg.tensors.push_back(std::move(meta));
    ++i;
  }
  if (check_max)
    need(total <= max_bytes, "too_large",
         "tensors total " + std::to_string(static_cast<uint64_t>(total)) +
             " bytes; the receiver's limit is " + std::to_string(max_bytes));
  msg.id = h["id"].get<uint64_t>();
  msg.stage = h["stage"].get<int64_t>();
  msg.trace = h["trace"];
  return msg;
}

std::string dims_repr(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

}  // namespace

size_t itemsize(const std::string& d) {
  if (d == "bool" || d == "int8" || d == "uint8") return 1;
  if (d == "float16" || d == "int16") return 2;
  if (d == "float32" || d == "int32") return 4;
  if (d == "float64" || d == "int64") return 8;
  return 0;
}

std::string names_repr(const std::vector<std::string>& names) {
  std::string out = "[";
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + pyrepr(names[i]);
  return out + "]";
}

Message decode(const std::vector<zmq::message_t>& frames, uint64_t max_bytes) {
  need(!frames.empty(), "missing_frames", "message has no frames (a header is required)");
  const auto& head = frames[0];
  need(head.size() <= kMaxHeaderBytes, "too_large",
       "header is " + std::to_string(head.size()) + " bytes; the limit is " +
           std::to_string(kMaxHeaderBytes));
  Message msg = parse_header(static_cast<const char*>(head.data()), head.size(), true, max_bytes);
  size_t got = frames.size() - 1, want = msg.tensors.size();
  std::string counts = "header lists " + std::to_string(want) + " tensor(s) but " +
                       std::to_string(got) + " data frame(s) arrived";
  need(got >= want, "missing_frames", counts);
  need(got <= want, "extra_frames", counts);
  for (size_t i = 0; i < want; ++i) {
    const auto& meta = msg.tensors[i];
    const auto& f = frames[i + 1];
    need(f.size() == meta.nbytes, "bad_size",
         "tensor " + pyrepr(meta.name) + " (" + meta.dtype + dims_repr(meta.shape) +
             "): expected " + std::to_string(meta.nbytes) + " bytes, got " +
             std::to_string(f.size()));
    if (meta.dtype == "bool") {
      const auto* p = static_cast<const unsigned char*>(f.data());
      for (size_t k = 0; k < f.size(); ++k)
        need(p[k] <= 1, "bad_data",
             "tensor " + pyrepr(meta.name) + ": bool bytes must be 0x00 or 0x01");
    }
  }
  return msg;
}

uint64_t peek_id(const std::vector<zmq::message_t>& frames) {
  try {
    if (frames.empty() || frames[0].size() > kMaxHeaderBytes) return 0;
    auto h = parse_lenient(static_cast<const char*>(frames[0].data()), frames[0].size());
    if (!h || !h->is_object() || !h->contains("id")) return 0;
    const json& id = (*h)["id"];
    return is_int_in(id, 0, 1ull << 63) ? id.get<uint64_t>() : 0;
  } catch (...) {
    return 0;
  }
}

std::string header(const std::string& kind, uint64_t id, int64_t stage,
                   const std::vector<TensorMeta>& tensors, const json& trace) {
  json h = {{"v", 1}, {"kind", kind}, {"id", id}, {"stage", stage}, {"trace", trace}};
  json ts = json::array();
  for (const auto& t : tensors) {
    if (!itemsize(t.dtype))
      fail("bad_dtype", "tensor " + pyrepr(t.name) + " has dtype " + t.dtype +
                            "; the wire carries only bool, float16, float32, float64, int16, "
                            "int32, int64, int8, uint8. Cast it first.");
    ts.push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}});
  }
  h["tensors"] = ts;
  std::string out = canonical(h);
  // never send what a receiver would reject
  parse_header(out.data(), out.size(), false, 0);
  return out;
}

std::string error_header(uint64_t id, int64_t stage, const std::string& code,
                         const std::string& message, const json& trace) {
  std::string text = message;
  if (utf8_length(text) > kMaxErrorMessageChars)
    text = utf8_prefix(text, kMaxErrorMessageChars - 3) + "...";
  json h = {{"v", 1},         {"kind", "error"},           {"id", id},
            {"stage", stage}, {"tensors", json::array()},  {"trace", trace},
            {"error", {{"code", code}, {"message", text}}}};
  std::string out = canonical(h);
  bool fits = true;
  try {
    parse_header(out.data(), out.size(), false, 0);
  } catch (const WireError&) {
    fits = false;
  }
  if (!fits) {
    h["trace"] = json::array();
    out = canonical(h);
  }
  return out;
}

}  // namespace tvmsplit::wire
