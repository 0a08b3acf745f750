#include "gather.hpp"

#include <algorithm>

namespace tvmsplit {

std::string end_name(int index) {
  return index == kClientEnd ? "the client" : "stage " + std::to_string(index);
}

Gather::Gather(const std::vector<Sender>& senders, std::string who, size_t max_open,
               size_t remember)
    : who_(std::move(who)), max_open_(max_open), remember_(remember) {
  for (const auto& s : senders)
    sources_[std::set<std::string>(s.route.tensors.begin(), s.route.tensors.end())] = s.source;
}

int Gather::source_of(const std::vector<std::string>& names) const {
  auto it = sources_.find(std::set<std::string>(names.begin(), names.end()));
  if (it != sources_.end()) return it->second;
  std::string routes;
  for (const auto& [keys, src] : sources_) {
    if (!routes.empty()) routes += "; ";
    routes += end_name(src) + ": " +
              wire::names_repr(std::vector<std::string>(keys.begin(), keys.end()));
  }
  std::vector<std::string> sorted(names);
  std::sort(sorted.begin(), sorted.end());
  throw GatherError{"bad_route", who_ + " got tensors " + wire::names_repr(sorted) +
                                     ", which match no sender's route (" + routes + ")"};
}

std::vector<Part> Gather::add(uint64_t rid, Part part) {
  if (closed_.count(rid)) return {};
  auto found = open_.find(rid);
  if (found == open_.end()) {
    found = open_.emplace(rid, std::map<int, Part>{}).first;
    open_order_.push_back(rid);
  }
  auto& parts = found->second;
  if (parts.count(part.source))
    throw GatherError{"duplicate_part", who_ + " got a second message for request " +
                                            std::to_string(rid) + " from " +
                                            end_name(part.source)};
  int source = part.source;
  parts.emplace(source, std::move(part));
  if (parts.size() < expected()) return {};
  std::vector<Part> out;
  for (auto& [src, p] : parts) out.push_back(std::move(p));  // std::map: source order
  open_.erase(found);
  open_order_.remove(rid);
  close(rid);
  return out;
}

bool Gather::fail(uint64_t rid) {
  if (open_.erase(rid)) open_order_.remove(rid);
  if (closed_.count(rid)) return false;
  close(rid);
  return true;
}

std::vector<uint64_t> Gather::overflow() {
  std::vector<uint64_t> out;
  while (open_.size() > max_open_) {
    uint64_t rid = open_order_.front();
    open_order_.pop_front();
    open_.erase(rid);
    close(rid);
    out.push_back(rid);
  }
  return out;
}

void Gather::close(uint64_t rid) {
  if (closed_.insert(rid).second) closed_order_.push_back(rid);
  while (closed_order_.size() > remember_) {
    closed_.erase(closed_order_.front());
    closed_order_.pop_front();
  }
}

json merge_traces(const std::vector<Part>& parts) {
  std::vector<std::pair<int64_t, json>> entries;  // (stage or -1, entry), first seen wins
  std::set<int64_t> seen;
  for (const auto& p : parts)
    for (const auto& e : p.msg.trace) {
      bool staged = e.contains("stage") && e["stage"].is_number_integer();
      if (staged) {
        int64_t s = e["stage"].get<int64_t>();
        if (!seen.insert(s).second) continue;
        entries.emplace_back(s, e);
      } else {
        entries.emplace_back(-1, e);
      }
    }
  std::stable_sort(entries.begin(), entries.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  json out = json::array();
  for (auto& [s, e] : entries) out.push_back(std::move(e));
  return out;
}

}  // namespace tvmsplit
