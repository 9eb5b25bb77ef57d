// modelcast-agent --config node.yaml: the node agent. Runs until SIGINT or SIGTERM; prints
// "listening on ADDRESS:PORT" once it serves.
#include <csignal>
#include <cstdio>

#include <glog/logging.h>

#include "modelcast/agent/agent.h"
#include "modelcast/common/args.h"
#include "modelcast/common/logging.h"

int main(int argc, char** argv) {
  using namespace modelcast;
  InitLogging(argv[0]);
  std::string config_path;
  ArgParser p("modelcast-agent",
              "The node agent: joins the coordinator, keeps the node's tiered store, runs plan fragments with the "
              "fabric. Reads the node YAML (node, address, port, coordinator, fabric, store, security).");
  p.Flag("config", &config_path, "the node YAML (required)");
  if (Status st = p.Parse(argc, argv); !st.ok()) {
    std::fprintf(stderr, "modelcast-agent: %s\n", st.message().c_str());
    return 2;
  }
  if (p.help_requested()) {
    std::fputs(p.Usage().c_str(), stdout);
    return 0;
  }
  auto fail = [](const Status& st) {
    std::fprintf(stderr, "modelcast-agent: %s\n", st.message().c_str());
    return 1;
  };
  if (config_path.empty()) return fail(InvalidArgument("--config is required"));
  auto root = ConfigNode::ParseFile(config_path);
  if (!root.ok()) return fail(root.status());
  auto config = agent::AgentConfig::FromConfig(*root);
  if (!config.ok()) return fail(config.status());
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  auto daemon = agent::AgentDaemon::Start(*config);
  if (!daemon.ok()) return fail(daemon.status());
  if ((*daemon)->metrics_port() > 0) {
    std::printf("metrics on %s:%d\n", config->metrics.address.c_str(), (*daemon)->metrics_port());
  }
  std::printf("listening on %s:%d\n", config->address.c_str(), (*daemon)->port());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  LOG(INFO) << "agent " << config->node << ": stopping on signal " << sig;
  return 0;
}
