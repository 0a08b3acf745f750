// tvmsplit-worker: the native stage worker. Same options as `tvmsplit worker` (launch.py's
// worker_parser); exit 0 on SIGTERM/SIGINT/shutdown/parent gone, 2 on a start-up failure (one
// line on stderr).
#include <csignal>
#include <cstdio>
#include <exception>
#include <memory>

#include "args.hpp"
#include "worker.hpp"

namespace {
volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }
}  // namespace

int main(int argc, char** argv) {
  tvmsplit::Args args = tvmsplit::parse_args(argc, argv);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  std::unique_ptr<tvmsplit::StageWorker> worker_ptr;
  try {
    worker_ptr = std::make_unique<tvmsplit::StageWorker>(args);
    tvmsplit::StageWorker& worker = *worker_ptr;
    std::vector<std::string> exposed;
    auto ep = worker.endpoints();
    for (const char* k : {"data", "control", "out"})
      if (ep[k].is_string() && !tvmsplit::is_loopback(ep[k].get<std::string>()))
        exposed.push_back(ep[k].get<std::string>());
    for (const auto& n : args.next)
      if (!tvmsplit::is_loopback(n)) exposed.push_back(n);
    if (!worker.secure() && !exposed.empty()) {
      std::string list;
      for (size_t i = 0; i < exposed.size(); ++i) list += (i ? ", " : "") + exposed[i];
      std::fprintf(stderr,
                   "tvmsplit worker: warning: --secure is off on non-loopback address(es) %s: "
                   "anyone who can reach them can send requests or shut this worker down, and "
                   "data travels unencrypted; use --secure KEYS_DIR\n", list.c_str());
    }
    if (args.ready_file) tvmsplit::write_ready_file(*args.ready_file, ep);
  } catch (const tvmsplit::StartError& exc) {
    std::fprintf(stderr, "tvmsplit worker: %s\n", exc.what());
    return 2;
  } catch (const std::exception& exc) {
    std::fprintf(stderr, "tvmsplit worker: stage %d failed to start: %s\n", args.stage, exc.what());
    return 2;
  }
  try {
    worker_ptr->serve(&g_stop);
  } catch (const std::exception& exc) {  // a fault of the loop itself (no message causes one)
    std::fprintf(stderr, "tvmsplit worker: stage %d stopped: %s\n", args.stage, exc.what());
    return 1;
  }
  return 0;
}
