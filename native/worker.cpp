#include "worker.hpp"

#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <set>

namespace tvmsplit {
namespace {

constexpr int kPollMs = 200;  // how often the loop wakes up to check the stop flag and the parent
constexpr int kHeartbeatIvlMs = 250, kHeartbeatTimeoutMs = 1000;  // as launch.connect_replicas
const char* kDataDomain = "data";

double unix_now() {
  struct timeval tv;
  gettimeofday(&tv, nullptr);
  return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) * 1e-6;
}

std::string ephemeral_like(const std::string& bind) {
  if (bind.rfind("tcp://", 0) == 0 && bind.find(':', 6) != std::string::npos)
    return bind.substr(0, bind.rfind(':')) + ":0";
  return "tcp://127.0.0.1:0";
}

std::vector<std::string> split_replicas(const std::string& addresses) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= addresses.size()) {
    size_t comma = addresses.find(',', start);
    std::string a = addresses.substr(start, comma == std::string::npos ? std::string::npos
                                                                       : comma - start);
    a.erase(0, a.find_first_not_of(" \t"));
    a.erase(a.find_last_not_of(" \t") + 1);
    if (!a.empty()) out.push_back(a);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::vector<zmq::message_t> recv_all(zmq::socket_t& s) {
  std::vector<zmq::message_t> frames;
  while (true) {
    zmq::message_t m;
    if (!s.recv(m, zmq::recv_flags::dontwait)) break;
    bool more = m.more();
    frames.push_back(std::move(m));
    if (!more) break;
  }
  return frames;
}

std::string last_endpoint(zmq::socket_t* s) { return s->get(zmq::sockopt::last_endpoint); }

std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + names[i];
  return out;
}

}  // namespace

bool is_loopback(const std::string& addr) {
  if (addr.empty() || addr.rfind("tcp://", 0) != 0) return true;
  std::string host = addr.substr(6, addr.rfind(':') - 6);
  if (!host.empty() && host.front() == '[') host = host.substr(1, host.size() - 2);
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

void write_ready_file(const std::string& path, const json& info) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  std::string tmp = dir + "." + name + "." + std::to_string(getpid()) + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << info.dump();
    if (!out) throw StartError("cannot write --ready-file: " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw StartError("cannot write --ready-file: " + path);
  }
}

// -------------------------------------------------------------------------------- start-up
StageWorker::StageWorker(const Args& a) : args_(a), index_(a.stage) {
  const int stage = a.stage;
  // keys first: a missing key fails fast, before the stage library is loaded
  if (a.secure)
    secure_ = std::make_unique<SecureConfig>(*a.secure, stage_identity(*a.secure, stage));
  std::vector<std::string> next_keys = a.next_key;
  if (secure_ && !next_keys.empty() && next_keys.size() != 1 && next_keys.size() != a.next.size())
    throw StartError(std::to_string(next_keys.size()) + " --next-key for " +
                     std::to_string(a.next.size()) + " --next; give one for all or one per --next");
  if (next_keys.size() == 1) next_keys.assign(a.next.size(), next_keys[0]);
  std::vector<Key> explicit_keys;
  if (secure_)
    for (const auto& k : next_keys) explicit_keys.push_back(secure_->peer_key(k));
  manifest_ = load_manifest(a.bundle, stage, !a.await_library && stage >= 0);
  int n = static_cast<int>(manifest_.stages.size());
  if (stage < 0 || stage >= n)
    throw StartError("stage " + std::to_string(stage) + " is out of range: bundle '" + a.bundle +
                     "' has stages 0.." + std::to_string(n - 1));
  stage_ = &manifest_.stages[stage];
  const auto& routes = stage_->sends;
  bool bind_last = a.next.size() + 1 == routes.size() && routes.back().to == kClientEnd;
  if (a.next.size() != routes.size() && !bind_last) {
    std::string dests;
    for (size_t i = 0; i < routes.size(); ++i) dests += (i ? ", " : "") + end_name(routes[i].to);
    throw StartError("stage " + std::to_string(stage) + " sends to " + dests +
                     ": give one --next per destination in that order (a last route to the "
                     "client may be left out to bind it on --out); got " +
                     std::to_string(a.next.size()) + " --next");
  }
  if (!stage_->runs_on_host())
    throw StartError("stage " + std::to_string(stage) + " is built for " + stage_->target_name +
                     " (" + stage_->target_arch + ", " + stage_->target_kind +
                     "); run its worker on such a device");
  auto senders = manifest_.senders_of(stage);
  if (senders.size() > 1)
    gather_ = std::make_unique<Gather>(senders, "stage " + std::to_string(stage));
  single_source_ = senders.empty() ? kClientEnd : senders[0].source;
  for (const auto& t : stage_->inputs) input_names_.push_back(t.name);
  std::vector<Key> server_keys = explicit_keys;
  if (secure_ && server_keys.empty())
    for (size_t i = 0; i < a.next.size(); ++i)
      server_keys.push_back(routes[i].to == kClientEnd ? secure_->peer_key("client")
                                                       : secure_->stage_key(routes[i].to));
  char hostname[256] = {0};
  gethostname(hostname, sizeof hostname - 1);
  host_ = hostname;
  if (!a.await_library) {
    try {
      runner_ = std::make_unique<StageRunner>(stage_->library, *stage_);
    } catch (const std::exception& exc) {
      throw StartError("stage " + std::to_string(stage) + " failed to start: cannot load " +
                       stage_->library + ": " + exc.what());
    }
  }
  try {
    if (secure_) {  // the ZAP handler must run before anything is bound
      std::set<Key> data_keys, all;
      for (const auto& s : senders)
        if (s.source == kClientEnd)
          data_keys.insert(secure_->client_keys.begin(), secure_->client_keys.end());
        else
          data_keys.insert(secure_->stage_key(s.source));
      all.insert(secure_->client_keys.begin(), secure_->client_keys.end());
      all.insert(secure_->worker_keys.begin(), secure_->worker_keys.end());
      auth_ = std::make_unique<Authenticator>(
          ctx_, std::map<std::string, std::set<Key>>{{"clients", secure_->client_keys},
                                                     {"workers", secure_->worker_keys},
                                                     {"peers", all},
                                                     {kDataDomain, data_keys}});
    }
    data_in_ = &make_socket(zmq::socket_type::pull, kDataDomain, nullptr);
    uint64_t max_frame = wire::kMaxHeaderBytes;
    for (const auto& t : stage_->inputs) max_frame = std::max(max_frame, t.nbytes());
    data_in_->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(max_frame));
    data_in_->bind(a.bind);
    for (size_t i = 0; i < a.next.size(); ++i) {
      zmq::socket_t& s =
          make_socket(zmq::socket_type::push, "", secure_ ? &server_keys[i] : nullptr);
      auto replicas = split_replicas(a.next[i]);
      if (replicas.empty()) throw StartError("--next '" + a.next[i] + "' names no address");
      if (replicas.size() > 1) s.set(zmq::sockopt::immediate, 1);
      s.set(zmq::sockopt::heartbeat_ivl, kHeartbeatIvlMs);
      s.set(zmq::sockopt::heartbeat_timeout, kHeartbeatTimeoutMs);
      for (const auto& r : replicas) s.connect(r);
      outs_.push_back(&s);
    }
    out_bound_ = bind_last;
    if (bind_last) {
      zmq::socket_t& s = make_socket(zmq::socket_type::push, "clients", nullptr);
      s.bind(a.out ? *a.out : ephemeral_like(a.bind));
      outs_.push_back(&s);
    }
    if (!a.control.empty()) {
      control_ = &make_socket(zmq::socket_type::rep, "clients", nullptr);
      uint64_t max_control = std::max<uint64_t>(stage_->library_bytes, control::kMaxHeaderBytes);
      control_->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(max_control));
      control_->bind(a.control);
    }
  } catch (const zmq::error_t& exc) {
    throw StartError("stage " + std::to_string(stage) + ": cannot open sockets (" + exc.what() +
                     "); check --bind, --next, --control and --out");
  }
  control::cpu_percent();  // the first call only starts the measurement
}

StageWorker::~StageWorker() {
  for (auto& s : sockets_) s->close();
  sockets_.clear();
  if (auth_) auth_->stop();  // before the context is closed, which would wait for its socket
  auth_.reset();
  ctx_.close();
}

zmq::socket_t& StageWorker::make_socket(zmq::socket_type kind, const std::string& server_domain,
                                        const Key* server_key) {
  sockets_.push_back(std::make_unique<zmq::socket_t>(ctx_, kind));
  zmq::socket_t& s = *sockets_.back();
  s.set(zmq::sockopt::linger, 0);
  if (secure_) {
    if (!server_domain.empty())
      secure_->server(s, server_domain);
    else
      secure_->client(s, *server_key);
  }
  return s;
}

json StageWorker::endpoints() const {
  return {{"data", last_endpoint(data_in_)},
          {"control", control_ ? json(last_endpoint(control_)) : json()},
          {"out", out_bound_ ? json(last_endpoint(outs_.back())) : json()},
          {"pid", getpid()},
          {"stage", index_}};
}

// ----------------------------------------------------------------------------- one message
StageWorker::Sends StageWorker::handle(std::vector<zmq::message_t>& frames) {
  uint64_t rid = 0;
  try {
    return handle_checked(frames);
  } catch (const std::exception& exc) {
    rid = wire::peek_id(frames);
    return error(rid, "internal_error", "stage " + std::to_string(index_) + ": " + exc.what());
  } catch (...) {
    rid = wire::peek_id(frames);
    return error(rid, "internal_error", "stage " + std::to_string(index_) + ": unknown error");
  }
}

StageWorker::Sends StageWorker::handle_checked(std::vector<zmq::message_t>& frames) {
  const double recv_ts = unix_now();
  const std::string me = "stage " + std::to_string(index_);
  wire::Message msg;
  try {
    msg = wire::decode(frames);
  } catch (const wire::WireError& exc) {
    return error(wire::peek_id(frames), exc.code, exc.message);
  }
  if (msg.kind == "error") {  // someone upstream failed: pass it on, once per request
    if (gather_ && !gather_->fail(msg.id)) return {};
    Sends out;
    for (size_t r = 0; r < outs_.size(); ++r) {
      Outgoing o{r, {}};
      o.frames.emplace_back(frames[0].data(), frames[0].size());
      out.push_back(std::move(o));
    }
    return out;
  }
  if (msg.stage != index_)
    return error(msg.id, "wrong_stage", "message for stage " + std::to_string(msg.stage) +
                                            " arrived at " + me, msg.trace);
  if (msg.kind != "request")
    return error(msg.id, "unexpected_kind", me + " takes requests, got a " + pyrepr(msg.kind),
                 msg.trace);
  if (!runner_)
    return error(msg.id, "not_deployed", me + " has no library yet; push it with the control "
                 "command 'deploy'", msg.trace);
  std::vector<std::string> names;
  for (const auto& t : msg.tensors) names.push_back(t.name);
  uint64_t nbytes = 0;
  for (const auto& f : frames) nbytes += f.size();
  Part part;
  part.recv_ts = recv_ts;
  part.nbytes = nbytes;
  part.msg = msg;
  for (auto& f : frames) part.frames.push_back(std::make_shared<zmq::message_t>(std::move(f)));
  std::vector<std::string> expected(input_names_);
  std::sort(expected.begin(), expected.end());
  if (!gather_) {
    std::vector<std::string> extra, absent;
    for (const auto& n : names)
      if (std::find(input_names_.begin(), input_names_.end(), n) == input_names_.end())
        extra.push_back(n);
    if (!extra.empty())
      return error(msg.id, "unknown_tensor", "unexpected tensor(s) " + wire::names_repr(extra) +
                   "; " + me + " expects " + wire::names_repr(expected), msg.trace);
    for (const auto& n : expected)
      if (std::find(names.begin(), names.end(), n) == names.end()) absent.push_back(n);
    if (!absent.empty())
      return error(msg.id, "missing_tensor", "missing tensor(s) " + wire::names_repr(absent) +
                   "; " + me + " expects " + wire::names_repr(expected), msg.trace);
    part.source = single_source_;
    std::vector<Part> parts;
    parts.push_back(std::move(part));
    return run(msg.id, parts);
  }
  std::vector<Part> parts;
  try {
    part.source = gather_->source_of(names);
    parts = gather_->add(msg.id, std::move(part));
  } catch (const GatherError& exc) {
    return error(msg.id, exc.code, exc.message, msg.trace);
  }
  Sends out;
  for (uint64_t gone : gather_->overflow())
    for (auto& o : error(gone, "incomplete", me + " gave up request " + std::to_string(gone) +
                         ": more than " + std::to_string(gather_->max_open()) +
                         " requests were waiting for parts"))
      out.push_back(std::move(o));
  if (parts.empty()) return out;
  for (auto& o : run(msg.id, parts)) out.push_back(std::move(o));
  return out;
}

StageWorker::Sends StageWorker::run(uint64_t rid, std::vector<Part>& parts) {
  const std::string me = "stage " + std::to_string(index_);
  json trace = parts.size() > 1 ? merge_traces(parts) : parts[0].msg.trace;
  std::map<std::string, std::shared_ptr<zmq::message_t>> tensors;
  std::map<std::string, const wire::TensorMeta*> metas;
  for (const auto& p : parts)
    for (size_t i = 0; i < p.msg.tensors.size(); ++i) {
      tensors[p.msg.tensors[i].name] = p.frames[i + 1];
      metas[p.msg.tensors[i].name] = &p.msg.tensors[i];
    }
  // stage.check_tensors: every missing, extra or mis-shaped tensor
  std::vector<std::string> problems, extra;
  std::set<std::string> spec_names;
  for (const auto& spec : stage_->inputs) {
    spec_names.insert(spec.name);
    auto m = metas.find(spec.name);
    if (m == metas.end()) {
      problems.push_back("missing input " + pyrepr(spec.name));
      continue;
    }
    if (m->second->shape != spec.shape || m->second->dtype != spec.dtype) {
      TensorSpec got{spec.name, m->second->dtype, m->second->shape};
      problems.push_back("input " + pyrepr(spec.name) + " is " + got.describe() + ", expected " +
                         spec.describe());
    }
  }
  for (const auto& [name, _] : metas)
    if (!spec_names.count(name)) extra.push_back(name);
  if (!extra.empty()) problems.push_back("unexpected input(s) " + join_names(extra));
  if (!problems.empty()) {
    std::string text;
    for (size_t i = 0; i < problems.size(); ++i) text += (i ? "; " : "") + problems[i];
    return error(rid, "shape_mismatch", me + ": " + text, trace);
  }
  auto t0 = std::chrono::steady_clock::now();
  std::map<std::string, OutputTensor> outputs;
  try {
    outputs = runner_->run(tensors);
  } catch (const std::exception& exc) {
    return error(rid, "compute_failed", me + ": " + exc.what(), trace);
  }
  double compute_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  double last_recv = 0;
  uint64_t bytes_in = 0;
  json received = json::array();
  for (const auto& p : parts) {
    last_recv = std::max(last_recv, p.recv_ts);
    bytes_in += p.nbytes;
    received.push_back({{"from", p.source}, {"recv_ts", p.recv_ts}, {"bytes", p.nbytes}});
  }
  trace.push_back({{"stage", index_}, {"host", host_}, {"compute_ms", compute_ms},
                   {"recv_ts", last_recv}, {"bytes_in", bytes_in}, {"parts", received},
                   {"send_ts", unix_now()}});
  Sends sends;
  try {
    for (size_t r = 0; r < outs_.size() && r < stage_->sends.size(); ++r) {
      const Route& route = stage_->sends[r];
      std::vector<wire::TensorMeta> metas_out;
      Outgoing o{r, {}};
      o.frames.emplace_back();  // the header, below
      for (const auto& name : route.tensors) {
        const OutputTensor& t = outputs.at(name);
        metas_out.push_back({name, t.dtype, t.shape, t.nbytes});
        o.frames.push_back(t.frame());
      }
      bool to_client = route.to == kClientEnd;
      std::string head = wire::header(to_client ? "reply" : "request", rid,
                                      to_client ? index_ : route.to, metas_out, trace);
      o.frames[0] = zmq::message_t(head.data(), head.size());
      sends.push_back(std::move(o));
    }
  } catch (const wire::WireError& exc) {
    return error(rid, exc.code, me + " cannot encode its outputs: [" + exc.code + "] " +
                 exc.message, trace);
  }
  ++served_;
  return sends;
}

StageWorker::Sends StageWorker::error(uint64_t rid, const std::string& code,
                                      const std::string& message, const json& trace) {
  ++errors_;
  if (gather_) gather_->fail(rid);
  std::string head = wire::error_header(rid, index_, code, message, trace);
  Sends out;
  for (size_t r = 0; r < outs_.size(); ++r) {
    Outgoing o{r, {}};
    o.frames.emplace_back(head.data(), head.size());
    out.push_back(std::move(o));
  }
  return out;
}

// Sends without blocking; returns what a next hop cannot take yet (in order per socket).
StageWorker::Sends StageWorker::send(Sends messages) {
  Sends held;
  std::set<size_t> blocked;
  for (auto& m : messages) {
    if (!blocked.count(m.route)) {
      zmq::socket_t& s = *outs_[m.route];
      auto flags = m.frames.size() > 1 ? zmq::send_flags::dontwait | zmq::send_flags::sndmore
                                       : zmq::send_flags::dontwait;
      if (s.send(m.frames[0], flags)) {
        // a PUSH socket takes the rest of a multipart message once it took the first frame
        for (size_t i = 1; i < m.frames.size(); ++i)
          s.send(m.frames[i], i + 1 < m.frames.size() ? zmq::send_flags::sndmore
                                                      : zmq::send_flags::none);
        continue;
      }
      blocked.insert(m.route);
    }
    held.push_back(std::move(m));
  }
  return held;
}

// --------------------------------------------------------------------------------- control
bool StageWorker::control_request() {
  std::vector<zmq::message_t> frames = recv_all(*control_);
  if (frames.empty()) return false;  // nothing arrived: a REP socket must not answer
  bool stop = false;
  std::string answer;
  try {
    control::Request req = control::parse_request(frames);
    if (req.cmd == "health") {
      auto [rss, peak_rss] = control::memory_use();
      answer = control::ok_reply({{"stage", index_},
                                  {"pid", getpid()},
                                  {"host", host_},
                                  {"cpu_percent", control::cpu_percent()},
                                  {"mem_available_bytes", control::mem_available_bytes()},
                                  {"rss_bytes", rss},
                                  {"peak_rss_bytes", peak_rss},
                                  {"served", served_},
                                  {"errors", errors_},
                                  {"deployed", runner_ != nullptr}});
    } else if (req.cmd == "deploy") {
      answer = deploy(frames[1]);
    } else {
      answer = control::ok_reply();
      stop = true;
    }
  } catch (const control::ControlError& exc) {
    answer = control::error_reply(exc.code, exc.message);
  } catch (const std::exception& exc) {
    answer = control::error_reply("internal_error", std::string("stage ") +
                                  std::to_string(index_) + ": " + exc.what());
  }
  control_->send(zmq::buffer(answer));
  return stop;
}

std::string StageWorker::deploy(const zmq::message_t& data) {
  std::string digest = sha256_hex(data.data(), data.size());
  const std::string i = std::to_string(index_);
  if (data.size() != stage_->library_bytes || digest != stage_->sha256)
    return control::error_reply(
        "deploy_mismatch", "library for stage " + i + " does not match the manifest (got " +
                               std::to_string(data.size()) + " bytes, sha256 " +
                               digest.substr(0, 12) + "; expected " +
                               std::to_string(stage_->library_bytes) + ", " +
                               stage_->sha256.substr(0, 12) +
                               "); push the library of this bundle's stage " + i);
  const std::string& lib = stage_->library;
  size_t slash = lib.rfind('/');
  std::string tmp = lib.substr(0, slash + 1) + "." + lib.substr(slash + 1) + "." +
                    std::to_string(getpid()) + ".tmp";
  std::unique_ptr<StageRunner> runner;
  try {
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out.write(static_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
      out.close();
      if (!out) throw std::runtime_error("cannot write " + tmp);
    }
    if (std::rename(tmp.c_str(), lib.c_str()) != 0) throw std::runtime_error("cannot rename " + tmp);
    runner = std::make_unique<StageRunner>(lib, *stage_);
  } catch (const std::exception& exc) {
    std::remove(tmp.c_str());
    return control::error_reply("deploy_failed",
                                std::string("cannot install the library: Error: ") + exc.what());
  }
  runner_ = std::move(runner);
  return control::ok_reply({{"stage", index_}, {"sha256", digest}});
}

// ------------------------------------------------------------------------------------ loop
void StageWorker::serve(const volatile std::sig_atomic_t* stop) {
  Sends pending;
  while (!*stop) {
    std::vector<zmq::pollitem_t> items;
    std::set<size_t> waiting;
    for (const auto& m : pending) waiting.insert(m.route);
    if (control_) items.push_back({control_->handle(), 0, ZMQ_POLLIN, 0});
    size_t data_at = items.size();
    items.push_back({data_in_->handle(), 0, static_cast<short>(pending.empty() ? ZMQ_POLLIN : 0), 0});
    size_t outs_at = items.size();
    for (size_t r = 0; r < outs_.size(); ++r)
      items.push_back({outs_[r]->handle(), 0, static_cast<short>(waiting.count(r) ? ZMQ_POLLOUT : 0), 0});
    int n = zmq_poll(items.data(), static_cast<int>(items.size()), kPollMs);
    if (n < 0) {
      if (zmq_errno() == EINTR) continue;
      throw zmq::error_t();
    }
    if (control_ && (items[0].revents & ZMQ_POLLIN) && control_request()) {
      control_->set(zmq::sockopt::linger, 1000);  // let the shutdown answer leave first
      return;
    }
    if (!pending.empty()) {
      bool writable = false;
      for (size_t r : waiting) writable = writable || (items[outs_at + r].revents & ZMQ_POLLOUT);
      if (writable) pending = send(std::move(pending));
    } else if (items[data_at].revents & ZMQ_POLLIN) {
      std::vector<zmq::message_t> frames = recv_all(*data_in_);
      if (!frames.empty()) pending = send(handle(frames));
    }
    if (args_.parent_pid && getppid() != *args_.parent_pid) return;  // the client is gone
  }
}

}  // namespace tvmsplit
