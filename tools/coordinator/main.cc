// modelcast-coordinator --config cluster.yaml: the coordinator daemon on the cluster head.
// Runs until SIGINT or SIGTERM; prints "listening on ADDRESS:PORT" once it serves.
#include "../daemon/daemon_main.h"
#include "modelcast/coordinator/daemon.h"
#include "modelcast/coordinator/serving.h"

int main(int argc, char** argv) {
  using namespace modelcast;
  return tools::DaemonMain(
      argc, argv, "modelcast-coordinator",
      "The coordinator daemon: registers models, tracks node agents, runs scale-outs, serves autoscalers over "
      "Thrift, and (with a `serving` section) routes generation requests to instances and pipelines. Reads the "
      "cluster YAML, whose `coordinator` section sets its address, port, state_dir, security, metrics and serving.",
      [](const ConfigNode& root, const std::function<bool()>& stop_requested) -> Result<tools::Started> {
        MC_ASSIGN_OR_RETURN(auto cluster, planner::ClusterConfig::Parse(root));
        MC_ASSIGN_OR_RETURN(ConfigNode section, root.Child("coordinator"));
        MC_ASSIGN_OR_RETURN(auto config, coordinator::CoordinatorConfig::FromConfig(section));
        // A standby (state in etcd, another coordinator leading) waits in Start until it leads
        // or is asked to stop.
        auto started = coordinator::CoordinatorDaemon::Start(cluster, config, stop_requested);
        if (!started.ok() && started.status().code() == StatusCode::kCancelled && stop_requested()) {
          return tools::Started{nullptr, ""};  // stopped while standing by
        }
        MC_RETURN_IF_ERROR(started.status());
        std::shared_ptr<coordinator::CoordinatorDaemon> daemon = std::move(*started);
        std::string banner;
        if (daemon->metrics_port() > 0) {
          banner += "metrics on " + config.metrics.address + ":" + std::to_string(daemon->metrics_port()) + "\n";
        }
        if (auto* serving = daemon->serving()) {
          banner += "router fabric at " + serving->fabric_address() + "\n";
          if (serving->http_port() > 0) {
            banner += "serving http on " + config.serving.http_address + ":" + std::to_string(serving->http_port()) + "\n";
          }
        }
        banner += "listening on " + config.address + ":" + std::to_string(daemon->port()) + "\n";
        return tools::Started{daemon, banner};
      });
}
