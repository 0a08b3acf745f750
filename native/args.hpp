// The worker's command line: the options of tvmsplit/runtime/launch.py's worker_parser (the one
// definition; this mirrors it, and tests/test_worker_conformance.py checks that both agree).
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace tvmsplit {

struct Args {
  std::string bundle;
  int stage = 0;
  std::string bind = "tcp://127.0.0.1:0";
  std::vector<std::string> next;
  std::optional<std::string> out;
  std::string control = "tcp://127.0.0.1:0";  // "" disables it
  std::optional<std::string> ready_file;
  bool await_library = false;
  std::optional<long> parent_pid;
  std::optional<std::string> secure;
  std::vector<std::string> next_key;
};

// Parses argv like argparse: prints usage and exits 2 on a bad option, 0 after --help.
Args parse_args(int argc, char** argv);

}  // namespace tvmsplit
