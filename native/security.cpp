#include "security.hpp"

#include <dirent.h>
#include <sys/stat.h>

#include <fstream>
#include <regex>

#include "manifest.hpp"

namespace tvmsplit {
namespace {

const std::regex kName("[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}");

std::string hint(const std::string& dir) { return "create them with `tvmsplit keys " + dir + "`"; }

// The z85 value of `field` ("public-key" / "secret-key") in a ZeroMQ certificate file.
std::string cert_field(const std::string& text, const std::string& field) {
  std::regex re("^\\s*" + field + "\\s*=\\s*\"(.*)\"\\s*$");
  std::smatch m;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (std::regex_match(line, m, re)) return m[1];
  return "";
}

bool decode_key(const std::string& z85, Key* out) {
  if (z85.size() != 40) return false;
  unsigned char raw[32];
  if (!zmq_z85_decode(raw, z85.c_str())) return false;
  out->assign(reinterpret_cast<char*>(raw), 32);
  return true;
}

std::string read_file(const std::string& path, bool* ok) {
  std::ifstream in(path);
  *ok = static_cast<bool>(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Key load_public(const std::string& path, const std::string& dir) {
  bool ok;
  std::string text = read_file(path, &ok);
  if (!ok)
    throw StartError("public key file " + path + " is missing; copy it from the machine that "
                     "holds it, or " + hint(dir));
  Key key;
  if (!decode_key(cert_field(text, "public-key"), &key))
    throw StartError("public key file " + path + " is corrupt (public-key is not a 40-character "
                     "Z85 CURVE key); replace it, or " + hint(dir) + " --force");
  return key;
}

}  // namespace

std::string stage_identity(const std::string& dir, int stage) {
  struct stat st;
  std::string name = "stage" + std::to_string(stage);
  return stat((dir + "/" + name + ".key").c_str(), &st) == 0 ? name : "worker";
}

SecureConfig::SecureConfig(const std::string& dir, const std::string& name) : dir_(dir) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw StartError("keys directory " + dir + " does not exist; " + hint(dir));
  std::string secret_path = dir + "/" + name + ".key_secret";
  if (stat(secret_path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    throw StartError("secret key file " + secret_path + " is missing; " + hint(dir) +
                     " (or copy it there from where the keys were made)");
  if (st.st_mode & 077) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", st.st_mode & 07777);
    throw StartError("secret key file " + secret_path + " is readable by others (mode " + mode +
                     "); run `chmod 600 " + secret_path + "`");
  }
  bool ok;
  std::string text = read_file(secret_path, &ok);
  Key pub, sec;
  bool valid = ok && decode_key(cert_field(text, "public-key"), &pub) &&
               decode_key(cert_field(text, "secret-key"), &sec);
  if (valid) {
    char derived[41], z85_secret[41];
    zmq_z85_encode(z85_secret, reinterpret_cast<const uint8_t*>(sec.data()), 32);
    Key d;
    valid = zmq_curve_public(derived, z85_secret) == 0 && decode_key(derived, &d) && d == pub;
  }
  if (!valid)
    throw StartError("secret key file " + secret_path + " is corrupt (its secret-key is not a "
                     "valid Z85 CURVE key or does not match its public-key); " + hint(dir) +
                     " --force");
  public_key = pub;
  secret_key = sec;
  DIR* d = opendir(dir.c_str());
  std::set<std::string> files;
  for (dirent* e; d && (e = readdir(d));) {
    std::string f = e->d_name;
    if (f.size() > 4 && f.compare(f.size() - 4, 4, ".key") == 0) files.insert(f);
  }
  if (d) closedir(d);
  for (const auto& f : files)
    (f.rfind("client", 0) == 0 ? client_keys : worker_keys).insert(load_public(dir + "/" + f, dir));
  if (client_keys.empty() && worker_keys.empty())
    throw StartError("keys directory " + dir + " has no public key (*.key) files, so no peer "
                     "could connect; " + hint(dir));
}

Key SecureConfig::peer_key(const std::string& peer) const {
  bool is_name = std::regex_match(peer, kName) &&
                 !(peer.size() >= 4 && peer.compare(peer.size() - 4, 4, ".key") == 0);
  return load_public(is_name ? dir_ + "/" + peer + ".key" : peer, dir_);
}

Key SecureConfig::stage_key(int stage) const { return peer_key(stage_identity(dir_, stage)); }

void SecureConfig::server(zmq::socket_t& s, const std::string& domain) const {
  s.set(zmq::sockopt::zap_domain, domain);
  s.set(zmq::sockopt::curve_secretkey, zmq::const_buffer(secret_key.data(), 32));
  s.set(zmq::sockopt::curve_publickey, zmq::const_buffer(public_key.data(), 32));
  s.set(zmq::sockopt::curve_server, 1);
}

void SecureConfig::client(zmq::socket_t& s, const Key& server_key) const {
  s.set(zmq::sockopt::curve_secretkey, zmq::const_buffer(secret_key.data(), 32));
  s.set(zmq::sockopt::curve_publickey, zmq::const_buffer(public_key.data(), 32));
  s.set(zmq::sockopt::curve_serverkey, zmq::const_buffer(server_key.data(), 32));
}

Authenticator::Authenticator(zmq::context_t& ctx, std::map<std::string, std::set<Key>> domains)
    : sock_(ctx, zmq::socket_type::rep), domains_(std::move(domains)) {
  sock_.set(zmq::sockopt::linger, 0);
  sock_.bind("inproc://zeromq.zap.01");
  thread_ = std::thread([this] { loop(); });
}

Authenticator::~Authenticator() { stop(); }

void Authenticator::stop() {
  if (stopped_) return;
  stopped_ = true;
  if (thread_.joinable()) thread_.join();
  sock_.close();
}

void Authenticator::loop() {
  // ZAP 1.0 (RFC 27): version, request id, domain, address, identity, mechanism, credentials...
  while (!stopped_) {
    zmq::pollitem_t item{sock_.handle(), 0, ZMQ_POLLIN, 0};
    try {
      if (zmq::poll(&item, 1, std::chrono::milliseconds(100)) <= 0) continue;
      std::vector<zmq::message_t> req;
      while (true) {
        zmq::message_t m;
        if (!sock_.recv(m)) break;
        bool more = m.more();
        req.push_back(std::move(m));
        if (!more) break;
      }
      bool ok = false;
      if (req.size() >= 7 && req[0].to_string() == "1.0" && req[5].to_string() == "CURVE" &&
          req[6].size() == 32) {
        auto d = domains_.find(req[2].to_string());
        ok = d != domains_.end() && d->second.count(req[6].to_string()) > 0;
      }
      std::string rid = req.size() > 1 ? req[1].to_string() : "";
      const std::string parts[] = {"1.0", rid, ok ? "200" : "400", ok ? "OK" : "not authorized",
                                   "", ""};
      for (int i = 0; i < 6; ++i)
        sock_.send(zmq::buffer(parts[i]), i < 5 ? zmq::send_flags::sndmore : zmq::send_flags::none);
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) return;
    } catch (...) {  // a malformed handshake request must not end the process
    }
  }
}

}  // namespace tvmsplit
