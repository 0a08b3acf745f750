// CurveZMQ with the key files of tvmsplit/runtime/security.py (its docstring is the scheme):
// KEYS_DIR/<name>.key (public) and <name>.key_secret (secret, mode 0600), roles by file name
// (client*.key: clients; other *.key: workers), and a ZAP handler admitting per domain.
#pragma once

#include <map>
#include <set>
#include <string>
#include <thread>

#include <zmq.hpp>

namespace tvmsplit {

using Key = std::string;  // 32 raw bytes

class SecureConfig {
 public:
  // Loads <name>.key_secret as our keypair and every *.key as authorized; throws StartError.
  SecureConfig(const std::string& keys_dir, const std::string& name);
  const std::string& dir() const { return dir_; }
  Key peer_key(const std::string& name_or_path) const;  // a name in dir, or a .key path
  Key stage_key(int stage) const;
  std::set<Key> client_keys, worker_keys;
  Key public_key, secret_key;

  void server(zmq::socket_t& s, const std::string& domain) const;  // before bind
  void client(zmq::socket_t& s, const Key& server_key) const;      // before connect

 private:
  std::string dir_;
};

std::string stage_identity(const std::string& keys_dir, int stage);

// The ZAP handler thread on a context: admits, per domain, exactly the given keys. Start it
// before binding a server socket; stop() before the context is closed.
class Authenticator {
 public:
  Authenticator(zmq::context_t& ctx, std::map<std::string, std::set<Key>> domains);
  ~Authenticator();
  void stop();

 private:
  void loop();
  zmq::socket_t sock_;
  std::map<std::string, std::set<Key>> domains_;
  std::thread thread_;
  bool stopped_ = false;
};

}  // namespace tvmsplit
