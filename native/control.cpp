#include "control.hpp"

#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

namespace tvmsplit::control {
namespace {

const std::map<std::string, size_t> kCommands = {{"health", 0}, {"shutdown", 0}, {"deploy", 1}};

[[noreturn]] void fail(const std::string& code, const std::string& message) {
  throw ControlError{code, message};
}

}  // namespace

Request parse_request(const std::vector<zmq::message_t>& frames) {
  size_t size = frames.empty() ? 0 : frames[0].size();
  if (size > kMaxHeaderBytes)
    fail("too_large", "the request is " + std::to_string(size) + " bytes; at most " +
                          std::to_string(kMaxHeaderBytes));
  ParseOptions opts;
  opts.max_depth = 900;            // Python's json.loads: up to its recursion limit
  opts.reject_non_finite = false;  // control requests read 1e999 as inf (no parse_float hook)
  auto req = frames.empty() ? std::nullopt
                            : parse_strict(static_cast<const char*>(frames[0].data()), size, opts);
  if (!req || !req->is_object())
    fail("bad_request", "control requests are JSON objects like {\"cmd\": \"health\"}");
  json version = req->contains("v") ? (*req)["v"] : json(1);
  // Python: version != 1 or isinstance(version, bool); 1.0 == 1 in Python
  bool v_ok = !version.is_boolean() && version.is_number() && version.get<double>() == 1.0;
  if (!v_ok)
    fail("bad_version", "control protocol version " + pyrepr(version) + "; this worker speaks 1");
  json cmd = req->contains("cmd") ? (*req)["cmd"] : json();
  if (!cmd.is_string() || !kCommands.count(cmd.get<std::string>()))
    fail("unknown_cmd", "unknown cmd " + pyrepr(cmd) + "; known: health, shutdown, deploy");
  std::string name = cmd.get<std::string>();
  size_t want = kCommands.at(name), got = frames.size() - 1;
  if (got != want)
    fail("bad_frames", "'" + name + "' takes " + std::to_string(want) +
                           " frame(s) after the JSON (" +
                           (name == "deploy" ? "the library" : "nothing") + "), got " +
                           std::to_string(got));
  return Request{name};
}

std::string ok_reply(json fields) {
  fields["ok"] = true;
  return canonical(fields);
}

std::string error_reply(const std::string& code, const std::string& message) {
  return canonical({{"ok", false}, {"code", code}, {"error", message}});
}

double cpu_percent() {
  static uint64_t last_total = 0, last_busy = 0;
  std::ifstream in("/proc/stat");
  std::string cpu;
  in >> cpu;
  std::vector<uint64_t> v;
  uint64_t x;
  for (int i = 0; i < 10 && in >> x; ++i) v.push_back(x);
  if (cpu != "cpu" || v.size() < 4) return 0.0;
  while (v.size() < 10) v.push_back(0);
  // psutil: guest time is already in user/nice; busy = total - idle - iowait
  uint64_t total = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
  uint64_t busy = total - v[3] - v[4];
  double pct = 0.0;
  if (total > last_total && last_total != 0) {
    double dt = static_cast<double>(total - last_total);
    double db = busy >= last_busy ? static_cast<double>(busy - last_busy) : 0.0;
    pct = std::round(db / dt * 1000.0) / 10.0;
  }
  last_total = total;
  last_busy = busy;
  return pct;
}

uint64_t mem_available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  uint64_t value;
  while (in >> key >> value) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return value * 1024;
  }
  return 0;
}

std::pair<uint64_t, uint64_t> memory_use() {
  // VmRSS and VmHWM of /proc/self/status (kB): resident memory now and its peak since start
  std::ifstream in("/proc/self/status");
  std::string line;
  uint64_t rss = 0, peak = 0;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key;
    uint64_t value = 0;
    if (!(fields >> key >> value)) continue;
    if (key == "VmRSS:") rss = value * 1024;
    if (key == "VmHWM:") peak = value * 1024;
  }
  return {rss, peak};
}

}  // namespace tvmsplit::control
