// The shared `main` of modelcast's daemons: `--config FILE`, the YAML loaded with errors that
// name file, line and key, the daemon started with SIGINT/SIGTERM blocked (so every thread it
// starts leaves them to the main thread), its banner printed ("metrics on ...", then
// "listening on ADDRESS:PORT", which scripts and tests wait for), then a wait for one of them.
#pragma once

#include <csignal>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "modelcast/common/args.h"
#include "modelcast/common/config.h"
#include "modelcast/common/logging.h"

namespace modelcast::tools {

struct Started {
  std::shared_ptr<void> daemon;  // kept alive until the stop signal, destroyed after
  std::string banner;            // printed to stdout once it serves
};

inline int DaemonMain(int argc, char** argv, const char* name, const char* summary,
                      const std::function<Result<Started>(const ConfigNode& root)>& start) {
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
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  auto started = start(*root);
  if (!started.ok()) return fail(started.status(), 1);
  std::fputs(started->banner.c_str(), stdout);
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  std::fprintf(stderr, "%s: stopping on signal %d\n", name, sig);
  return 0;
}

}  // namespace modelcast::tools
