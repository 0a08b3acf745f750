// Wire format v1 (the spec is the docstring of tvmsplit/runtime/wire.py): decode with every check
// in the spec's order and the same error codes; encode in the canonical form.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "json_util.hpp"

namespace tvmsplit::wire {

constexpr size_t kMaxHeaderBytes = 1 << 20;
constexpr size_t kMaxDepth = 32;
constexpr size_t kMaxRank = 8;
constexpr size_t kMaxNameChars = 256;
constexpr size_t kMaxErrorMessageChars = 4000;
constexpr uint64_t kDefaultMaxBytes = 256ull << 20;

struct WireError {
  std::string code, message;
};

struct TensorMeta {
  std::string name, dtype;
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;
};

struct Message {
  std::string kind;
  uint64_t id = 0;
  int64_t stage = 0;
  std::vector<TensorMeta> tensors;  // frame i + 1 holds tensors[i]'s bytes
  json trace = json::array();
  std::string error_code, error_message;
};

// 0 when the dtype is not one the wire carries.
size_t itemsize(const std::string& dtype);

// Checks 1-12 of the spec on received frames; throws WireError.
Message decode(const std::vector<zmq::message_t>& frames, uint64_t max_bytes = kDefaultMaxBytes);

// The request id of a header that failed validation (what Python's json.loads reads), else 0.
uint64_t peek_id(const std::vector<zmq::message_t>& frames);

// The canonical header of a request/reply carrying these tensors; throws WireError (too_large,
// bad_dtype) when a receiver would reject it.
std::string header(const std::string& kind, uint64_t id, int64_t stage,
                   const std::vector<TensorMeta>& tensors, const json& trace);

// The one frame of an error message; always fits (message cut, trace dropped if too large).
std::string error_header(uint64_t id, int64_t stage, const std::string& code,
                         const std::string& message, const json& trace);

// Python's list repr of names: ['a', 'b'].
std::string names_repr(const std::vector<std::string>& names);

}  // namespace tvmsplit::wire
