#include "args.hpp"

#include <cstdio>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace tvmsplit {
namespace {

const char* kProg = "tvmsplit-worker";
const char* kUsage =
    "usage: tvmsplit-worker [-h] --bundle BUNDLE --stage STAGE [--bind BIND] [--next ADDR]\n"
    "                       [--out ADDR] [--control ADDR] [--ready-file PATH] [--await-library]\n"
    "                       [--parent-pid PID] [--secure KEYS_DIR] [--next-key NAME|FILE]\n";

const char* kHelp =
    "\nRun one stage of a tvmsplit bundle as a pipeline worker (native C++, TVM runtime only).\n"
    "\noptions:\n"
    "  -h, --help            show this help message and exit\n"
    "  --bundle BUNDLE       bundle directory (manifest.json + this stage's library)\n"
    "  --stage STAGE         index of the stage to run\n"
    "  --bind BIND           data input address to bind (PULL); port 0 picks a free port\n"
    "                        (default: tcp://127.0.0.1:0)\n"
    "  --next ADDR           address to send results to (PUSH connect); once per route of the\n"
    "                        stage, in the order of the manifest's 'sends'; ADDR,ADDR,... names\n"
    "                        the replicas of that stage\n"
    "  --out ADDR            when the last route (to the client) has no --next: address to bind\n"
    "                        it on (default: port 0 on the --bind host)\n"
    "  --control ADDR        control address to bind (REP: health, shutdown, deploy); '' disables\n"
    "                        it (default: tcp://127.0.0.1:0)\n"
    "  --ready-file PATH     write the bound endpoints here as JSON once ready (atomically)\n"
    "  --await-library       start without this stage's library and wait for 'deploy'\n"
    "  --parent-pid PID      exit when this process (the launcher) is no longer the parent\n"
    "  --secure KEYS_DIR     CurveZMQ on every socket: own keypair KEYS_DIR/<stage<i>|worker>\n"
    "                        .key_secret, accepted peers = public keys KEYS_DIR/*.key\n"
    "  --next-key NAME|FILE  with --secure: the public key of the --next server; once for all\n"
    "                        --next or once per --next\n";

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "%s%s: error: %s\n", kUsage, kProg, message.c_str());
  std::exit(2);
}

long parse_int(const std::string& flag, const std::string& value) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(value.c_str(), &end, 10);
  size_t lead = value.find_first_not_of(" \t");
  if (value.empty() || lead == std::string::npos || *end != '\0' || errno)
    usage_error("argument " + flag + ": invalid int value: '" + value + "'");
  return v;
}

}  // namespace

Args parse_args(int argc, char** argv) {
  Args a;
  bool have_bundle = false, have_stage = false;
  const char* with_value[] = {"--bundle", "--stage", "--bind", "--next", "--out", "--control",
                              "--ready-file", "--parent-pid", "--secure", "--next-key"};
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i], value;
    if (arg == "-h" || arg == "--help") {
      std::printf("%s%s", kUsage, kHelp);
      std::exit(0);
    }
    if (arg == "--await-library") {
      a.await_library = true;
      continue;
    }
    size_t eq = arg.find('=');
    std::string flag = arg.substr(0, eq);
    bool known = false;
    for (const char* f : with_value) known = known || flag == f;
    if (!known) usage_error("unrecognized arguments: " + arg);
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
    } else {
      if (i + 1 >= argc || (argv[i + 1][0] == '-' && argv[i + 1][1] == '-'))
        usage_error("argument " + flag + ": expected one argument");
      value = argv[++i];
    }
    if (flag == "--bundle") {
      a.bundle = value;
      have_bundle = true;
    } else if (flag == "--stage") {
      a.stage = static_cast<int>(parse_int(flag, value));
      have_stage = true;
    } else if (flag == "--bind") {
      a.bind = value;
    } else if (flag == "--next") {
      a.next.push_back(value);
    } else if (flag == "--out") {
      a.out = value;
    } else if (flag == "--control") {
      a.control = value;
    } else if (flag == "--ready-file") {
      a.ready_file = value;
    } else if (flag == "--parent-pid") {
      a.parent_pid = parse_int(flag, value);
    } else if (flag == "--secure") {
      a.secure = value;
    } else if (flag == "--next-key") {
      a.next_key.push_back(value);
    }
  }
  if (!have_bundle || !have_stage) {
    std::string missing = !have_bundle && !have_stage ? "--bundle, --stage"
                          : !have_bundle             ? "--bundle"
                                                     : "--stage";
    usage_error("the following arguments are required: " + missing);
  }
  return a;
}

}  // namespace tvmsplit
