// The stage worker: sockets, one loaded stage, the data path and the control socket, behaving as
// tvmsplit/runtime/worker.py does (its module docstring is the behaviour spec).
#pragma once

#include <csignal>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "args.hpp"
#include "control.hpp"
#include "gather.hpp"
#include "manifest.hpp"
#include "security.hpp"
#include "vm.hpp"
#include "wire.hpp"

namespace tvmsplit {

class StageWorker {
 public:
  explicit StageWorker(const Args& args);  // throws StartError
  ~StageWorker();
  json endpoints() const;  // the ready file: data, control, out, pid, stage
  // Serves until *stop is set, a shutdown request arrives or the parent process is gone.
  void serve(const volatile std::sig_atomic_t* stop);
  bool secure() const { return secure_ != nullptr; }

 private:
  struct Outgoing {
    size_t route;
    std::vector<zmq::message_t> frames;
  };
  using Sends = std::vector<Outgoing>;

  Sends handle(std::vector<zmq::message_t>& frames);
  Sends handle_checked(std::vector<zmq::message_t>& frames);
  Sends run(uint64_t rid, std::vector<Part>& parts);
  Sends error(uint64_t rid, const std::string& code, const std::string& message,
              const json& trace = json::array());
  Sends send(Sends messages);
  bool control_request();  // true: stop
  std::string deploy(const zmq::message_t& library);
  zmq::socket_t& make_socket(zmq::socket_type kind, const std::string& server_domain,
                             const Key* server_key);

  Args args_;
  Manifest manifest_;
  const Stage* stage_ = nullptr;
  int index_ = 0;
  std::string host_;
  uint64_t served_ = 0, errors_ = 0;
  int single_source_ = kClientEnd;
  std::vector<std::string> input_names_;
  std::unique_ptr<Gather> gather_;
  std::unique_ptr<StageRunner> runner_;
  std::unique_ptr<SecureConfig> secure_;
  zmq::context_t ctx_;
  std::unique_ptr<Authenticator> auth_;
  std::vector<std::unique_ptr<zmq::socket_t>> sockets_;
  zmq::socket_t* data_in_ = nullptr;
  zmq::socket_t* control_ = nullptr;
  std::vector<zmq::socket_t*> outs_;  // one per route, in the order of sends
  bool out_bound_ = false;
};

bool is_loopback(const std::string& addr);
void write_ready_file(const std::string& path, const json& info);  // atomically; throws

}  // namespace tvmsplit
