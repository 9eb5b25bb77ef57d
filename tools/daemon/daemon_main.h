// The shared `main` of modelcast's daemons: `--config FILE`, the YAML loaded with errors that
// name file, line and key, the daemon started with SIGINT/SIGTERM blocked (so every thread it
// starts leaves them to the main thread), its banner printed ("metrics on ...", then
// "listening on ADDRESS:PORT", which scripts and tests wait for), then a wait for one of them.
// The main thread waits for them from the start, so a daemon that takes long to start (a
// standby coordinator waiting to lead) still stops when asked.
#pragma once

#include <atomic>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "modelcast/common/args.h"
#include "modelcast/common/config.h"
#include "modelcast/common/logging.h"

namespace modelcast::tools {

struct Started {
  std::shared_ptr<void> daemon;  // kept alive until the stop signal, destroyed after
  std::string banner;            // printed to stdout once it serves
};

// A stop signal delivered to a thread that existed before main blocked them (a library's pool,
// started by a static constructor): kept here for the main thread to see.
inline std::atomic<int> g_stop_signal{0};
inline void NoteStopSignal(int sig) { g_stop_signal = sig; }

// `start` runs on a thread of its own while the main thread waits for a stop signal; it may
// poll `stop_requested` if it waits long (a standby coordinator does) and give up then.
inline int DaemonMain(int argc, char** argv, const char* name, const char* summary,
                      const std::function<Result<Started>(const ConfigNode& root,
                                                          const std::function<bool()>& stop_requested)>& start) {
  InitLogging(argv[0]);
  std::string config_path;
  ArgParser p(name, summary);
  p.Flag("config", &config_path, "the YAML config (required)");
  auto fail = [name](const Status& st, int code) {
    std::fprintf(stderr, "%s: %s\n", name, st.message().c_str());
    return code;
  };
  if (Status st = p.Parse(argc, argv); !st.ok()) return fail(st, 2);
  if (p.help_requested()) {
    std::fputs(p.Usage().c_str(), stdout);
    return 0;
  }
  if (config_path.empty()) return fail(InvalidArgument("--config is required"), 2);
  auto root = ConfigNode::ParseFile(config_path);
  if (!root.ok()) return fail(root.status(), 1);
  // SIGINT and SIGTERM: blocked here, so every thread started from now on leaves them to this
  // one; a thread that existed before gets them through a handler that only notes them.
  struct sigaction note {};
  note.sa_handler = NoteStopSignal;
  note.sa_flags = SA_RESTART;
  sigemptyset(&note.sa_mask);
  sigaction(SIGINT, &note, nullptr);
  sigaction(SIGTERM, &note, nullptr);
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  std::mutex mu;
  std::optional<Result<Started>> started;
  std::thread starter([&] {
    auto r = start(*root, [] { return g_stop_signal.load() != 0; });
    std::lock_guard<std::mutex> lock(mu);
    started = std::move(r);
  });
  bool announced = false;
  int code = 0;
  while (g_stop_signal == 0) {
    const timespec tick{0, 50 * 1000 * 1000};
    if (int sig = sigtimedwait(&stop, nullptr, &tick); sig > 0) {
      g_stop_signal = sig;
      break;
    }
    std::lock_guard<std::mutex> lock(mu);
    if (!started || announced) continue;
    if (!started->ok()) {
      code = fail(started->status(), 1);
      break;
    }
    std::fputs((*started)->banner.c_str(), stdout);
    std::fflush(stdout);
    announced = true;
  }
  starter.join();
  if (g_stop_signal != 0) std::fprintf(stderr, "%s: stopping on signal %d\n", name, g_stop_signal.load());
  // The daemon (if it started) is destroyed here, after the signal.
  started.reset();
  return code;
}

}  // namespace modelcast::tools
