// What a worker reads from a bundle's manifest.json (schema 2, see tvmsplit/bundle.py): its
// stage's tensors, routes and library, and who sends to it (Plan.senders).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace tvmsplit {

constexpr int kClientEnd = -1;  // the end of a route that is not a stage

struct TensorSpec {
  std::string name, dtype;
  std::vector<int64_t> shape;
  uint64_t nbytes() const;
  std::string describe() const;  // float32[1, 3]
};

struct Route {
  int to = 0;
  std::vector<std::string> tensors;
};

struct Stage {
  int index = 0;
  std::vector<TensorSpec> inputs, outputs, library_inputs, library_outputs;
  std::vector<Route> sends;
  std::string library;  // absolute path
  std::string sha256;
  uint64_t library_bytes = 0;
  std::string target_name, target_arch, target_kind;
  bool runs_on_host() const;
};

struct Sender {
  int source;  // a stage, or kClientEnd
  Route route;
};

struct Manifest {
  std::string path;
  std::vector<Stage> stages;
  std::vector<Sender> senders_of(int stage) const;
 private:
  std::vector<Route> entry_;
  friend Manifest load_manifest(const std::string&, int, bool);
};

// A start-up failure: one line for stderr.
struct StartError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Read and check the manifest; with check_library, stage `stage`'s library is present and
// matches its sha256 (as Bundle.load(path, stages=[stage]) does).
Manifest load_manifest(const std::string& bundle_dir, int stage, bool check_library);

std::string sha256_hex(const void* data, size_t size);
std::string file_sha256(const std::string& path);  // throws StartError when unreadable
std::string host_arch();

}  // namespace tvmsplit
