// Control protocol v1 (the spec is the docstring of tvmsplit/runtime/control.py): parse a
// request with the spec's checks in order, build replies, and the live load health reports.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <zmq.hpp>

#include "json_util.hpp"

namespace tvmsplit::control {

constexpr size_t kMaxHeaderBytes = 64 << 10;

struct ControlError {
  std::string code, message;
};

struct Request {
  std::string cmd;  // health | shutdown | deploy
};

Request parse_request(const std::vector<zmq::message_t>& frames);  // throws ControlError
std::string ok_reply(json fields = json::object());
std::string error_reply(const std::string& code, const std::string& message);

// System-wide CPU % since the previous call (psutil.cpu_percent(None)) from /proc/stat.
double cpu_percent();
// MemAvailable from /proc/meminfo, in bytes.
uint64_t mem_available_bytes();
std::pair<uint64_t, uint64_t> memory_use();  // (VmRSS, VmHWM) in bytes; 0 where unknown

}  // namespace tvmsplit::control
