// Gathering one request's parts from several senders (the fan-in of a stage DAG), as
// tvmsplit/runtime/gather.py: parts held by request id until every sender's part is there, at
// most kMaxWaiting requests waiting (the oldest beyond that is given up), finished ids remembered
// so a late part is dropped and an error reaching us along two branches is passed on once.
#pragma once

#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

#include <zmq.hpp>

#include "json_util.hpp"
#include "manifest.hpp"
#include "wire.hpp"

namespace tvmsplit {

constexpr size_t kMaxWaiting = 256;

struct Part {
  int source = kClientEnd;
  wire::Message msg;
  std::vector<std::shared_ptr<zmq::message_t>> frames;  // [0] header, then one per tensor
  double recv_ts = 0;
  uint64_t nbytes = 0;
};

struct GatherError {
  std::string code, message;
};

class Gather {
 public:
  Gather(const std::vector<Sender>& senders, std::string who, size_t max_open = kMaxWaiting,
         size_t remember = 4096);
  size_t expected() const { return sources_.size(); }
  int source_of(const std::vector<std::string>& names) const;  // throws GatherError bad_route
  // Stores the part; all parts in source order once complete, else empty (also for a part of a
  // request that already finished). Throws GatherError duplicate_part.
  std::vector<Part> add(uint64_t rid, Part part);
  bool fail(uint64_t rid);  // true the first time: pass the error on
  std::vector<uint64_t> overflow();
  size_t max_open() const { return max_open_; }

 private:
  void close(uint64_t rid);
  std::string who_;
  std::map<std::set<std::string>, int> sources_;
  size_t max_open_, remember_;
  std::list<uint64_t> open_order_;
  std::map<uint64_t, std::map<int, Part>> open_;
  std::deque<uint64_t> closed_order_;
  std::unordered_set<uint64_t> closed_;
};

// One trace from the parts' traces: an entry per stage once, in stage order (gather.merge_traces).
json merge_traces(const std::vector<Part>& parts);

std::string end_name(int index);

}  // namespace tvmsplit
