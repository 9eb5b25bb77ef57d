// modelcast-coordinator --config cluster.yaml: the coordinator daemon on the cluster head.
// Runs until SIGINT or SIGTERM; prints "listening on ADDRESS:PORT" once it serves.
#include <csignal>
#include <cstdio>

#include <glog/logging.h>

#include "modelcast/common/args.h"
#include "modelcast/common/logging.h"
#include "modelcast/coord/daemon.h"

int main(int argc, char** argv) {
  using namespace modelcast;
  InitLogging(argv[0]);
  std::string config_path;
  ArgParser p("modelcast-coordinator",
              "The coordinator daemon: registers models, tracks node agents, serves autoscalers over Thrift. "
              "Reads the cluster YAML, whose `coordinator` section sets its address, port, state_dir and security.");
  p.Flag("config", &config_path, "the cluster YAML (required)");
  if (Status st = p.Parse(argc, argv); !st.ok()) {
    std::fprintf(stderr, "modelcast-coordinator: %s\n", st.message().c_str());
    return 2;
  }
  if (p.help_requested()) {
    std::fputs(p.Usage().c_str(), stdout);
    return 0;
  }
  auto fail = [](const Status& st) {
    std::fprintf(stderr, "modelcast-coordinator: %s\n", st.message().c_str());
    return 1;
  };
  if (config_path.empty()) return fail(InvalidArgument("--config is required"));
  auto root = ConfigNode::ParseFile(config_path);
  if (!root.ok()) return fail(root.status());
  auto cluster = coord::ClusterConfig::Parse(*root);
  if (!cluster.ok()) return fail(cluster.status());
  auto section = root->Child("coordinator");
  if (!section.ok()) return fail(section.status());
  auto config = coord::CoordinatorConfig::FromConfig(*section);
  if (!config.ok()) return fail(config.status());

  // Block the stop signals before any thread starts, then wait for one.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  auto daemon = coord::CoordinatorDaemon::Start(*cluster, *config);
  if (!daemon.ok()) return fail(daemon.status());
  if ((*daemon)->metrics_port() > 0) {
    std::printf("metrics on %s:%d\n", config->metrics.address.c_str(), (*daemon)->metrics_port());
  }
  std::printf("listening on %s:%d\n", config->address.c_str(), (*daemon)->port());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  LOG(INFO) << "coordinator: stopping on signal " << sig;
  return 0;
}
