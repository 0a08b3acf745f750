#include "manifest.hpp"

#include <sodium.h>
#include <sys/utsname.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "json_util.hpp"
#include "wire.hpp"

namespace tvmsplit {
namespace {

std::string hex(const unsigned char* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out += digits[p[i] >> 4];
    out += digits[p[i] & 15];
  }
  return out;
}

std::vector<TensorSpec> specs(const json& list) {
  std::vector<TensorSpec> out;
  for (const auto& t : list)
    out.push_back({t.at("name").get<std::string>(), t.at("dtype").get<std::string>(),
                   t.at("shape").get<std::vector<int64_t>>()});
  return out;
}

std::vector<Route> routes(const json& list) {
  std::vector<Route> out;
  for (const auto& r : list)
    out.push_back({r.at("to").get<int>(), r.at("tensors").get<std::vector<std::string>>()});
  return out;
}

}  // namespace

uint64_t TensorSpec::nbytes() const {
  uint64_t n = wire::itemsize(dtype);
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

std::string TensorSpec::describe() const {
  std::string out = dtype + "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

std::string host_arch() {
  struct utsname u;
  if (uname(&u) != 0) return "";
  std::string m = u.machine;
  for (auto& c : m) c = static_cast<char>(std::tolower(c));
  if (m == "amd64") return "x86_64";
  if (m == "arm64") return "aarch64";
  return m;
}

bool Stage::runs_on_host() const { return target_kind == "llvm" && target_arch == host_arch(); }

std::vector<Sender> Manifest::senders_of(int index) const {
  std::vector<Sender> out;
  for (const auto& r : entry_)
    if (r.to == index) out.push_back({kClientEnd, r});
  for (const auto& s : stages)
    for (const auto& r : s.sends)
      if (r.to == index) out.push_back({s.index, r});
  return out;
}

std::string sha256_hex(const void* data, size_t size) {
  unsigned char out[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(out, static_cast<const unsigned char*>(data), size);
  return hex(out, sizeof out);
}

std::string file_sha256(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw StartError("cannot read " + path);
  crypto_hash_sha256_state st;
  crypto_hash_sha256_init(&st);
  std::vector<unsigned char> buf(1 << 20);
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) crypto_hash_sha256_update(&st, buf.data(), n);
  std::fclose(f);
  unsigned char out[crypto_hash_sha256_BYTES];
  crypto_hash_sha256_final(&st, out);
  return hex(out, sizeof out);
}

Manifest load_manifest(const std::string& dir, int stage, bool check_library) {
  std::string path = dir + "/manifest.json";
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw StartError("'" + dir + "' is not a bundle (no manifest.json); build one with "
                     "`tvmsplit build`");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  json m = json::parse(text, nullptr, false);
  if (m.is_discarded()) throw StartError(path + " is corrupt (not JSON); rebuild the bundle");
  // version 3 = version 2 + sequential (HyPS) stages, whose segments this worker cannot load
  if (m.is_object() && m.contains("schema_version") && m["schema_version"] == 3)
    throw StartError(path + ": schema version 3 (sequential stages: segments with weights "
                     "files), which the native worker cannot run; use the Python worker "
                     "(run --worker python)");
  // version 4 = version 3 + fallback stages: ONNX sub-models run under onnxruntime
  if (m.is_object() && m.contains("schema_version") && m["schema_version"] == 4)
    throw StartError(path + ": schema version 4 (onnxruntime fallback stages: .onnx libraries), "
                     "which the native worker cannot run; use the Python worker "
                     "(run --worker python)");
  // version 5 = version 4 + encoded inputs (a JPEG on the wire), which this worker cannot decode
  if (m.is_object() && m.contains("schema_version") && m["schema_version"] == 5)
    throw StartError(path + ": schema version 5 (encoded inputs: JPEG bytes to decode), "
                     "which the native worker cannot run; use the Python worker "
                     "(run --worker python)");
  if (!m.is_object() || !m.contains("schema_version") || m["schema_version"] != 2)
    throw StartError(path + ": schema version " +
                     (m.is_object() && m.contains("schema_version") ? m["schema_version"].dump()
                                                                   : std::string("None")) +
                     ", this tvmsplit reads 2; rebuild the bundle");
  Manifest out;
  out.path = dir;
  try {
    const json& plan = m.at("plan");
    out.entry_ = routes(plan.value("entry", json::array()));
    for (const auto& s : m.at("stages")) {
      Stage st;
      st.index = s.at("index").get<int>();
      st.inputs = specs(s.at("inputs"));
      st.outputs = specs(s.at("outputs"));
      st.library_inputs = specs(s.at("library_inputs"));
      st.library_outputs = specs(s.at("library_outputs"));
      st.sends = routes(s.value("sends", json::array()));
      st.library = dir + "/" + s.at("library").get<std::string>();
      st.sha256 = s.at("sha256").get<std::string>();
      st.library_bytes = s.at("library_bytes").get<uint64_t>();
      const json& t = s.at("target");
      st.target_name = t.at("name").get<std::string>();
      st.target_arch = t.at("arch").get<std::string>();
      st.target_kind = t.at("target").at("kind").get<std::string>();
      out.stages.push_back(std::move(st));
    }
  } catch (const json::exception& exc) {
    throw StartError(path + " is malformed (bad or missing field: " + exc.what() +
                     "); rebuild the bundle");
  }
  // a plan saved before routes existed is the chain it always was (plan.chain_routes)
  bool any_sends = false;
  for (const auto& s : out.stages) any_sends = any_sends || !s.sends.empty();
  if (out.entry_.empty() && !any_sends && !out.stages.empty()) {
    out.entry_ = {{0, {}}};
    for (const auto& t : out.stages[0].inputs) out.entry_[0].tensors.push_back(t.name);
    for (size_t i = 0; i < out.stages.size(); ++i) {
      Route r{i + 1 < out.stages.size() ? static_cast<int>(i + 1) : kClientEnd, {}};
      for (const auto& t : out.stages[i].outputs) r.tensors.push_back(t.name);
      out.stages[i].sends = {r};
    }
  }
  for (size_t i = 0; i < out.stages.size(); ++i)
    if (out.stages[i].index != static_cast<int>(i) || out.stages.empty())
      throw StartError(path + ": stages must be numbered 0..k-1; rebuild the bundle");
  int last = static_cast<int>(out.stages.size()) - 1;
  if (stage > last)
    throw StartError("bundle '" + dir + "' has stages 0.." + std::to_string(last) +
                     "; no stage " + std::to_string(stage));
  if (check_library && stage >= 0) {
    const Stage& s = out.stages[stage];
    std::string name = s.library.substr(dir.size() + 1);
    std::ifstream lib(s.library);
    if (!lib)
      throw StartError("bundle '" + dir + "': library " + name + " of stage " +
                       std::to_string(stage) + " is missing; rebuild the bundle");
    if (file_sha256(s.library) != s.sha256)
      throw StartError("bundle '" + dir + "': library " + name + " of stage " +
                       std::to_string(stage) +
                       " fails its checksum (corrupt or modified); rebuild the bundle");
  }
  return out;
}

}  // namespace tvmsplit
