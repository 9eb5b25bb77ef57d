// modelcast-agent --config node.yaml: the node agent. Runs until SIGINT or SIGTERM; prints
// "fabric at ADDRESS:PORT" and "listening on ADDRESS:PORT" once it serves.
#include "../daemon/daemon_main.h"
#include "modelcast/agent/agent.h"

int main(int argc, char** argv) {
  using namespace modelcast;
  return tools::DaemonMain(
      argc, argv, "modelcast-agent",
      "The node agent: joins the coordinator, keeps the node's tiered store, runs plan fragments with the fabric. "
      "Reads the node YAML (node, address, port, coordinator, fabric, store, security, metrics).",
      [](const ConfigNode& root, const std::function<bool()>&) -> Result<tools::Started> {
        MC_ASSIGN_OR_RETURN(auto config, agent::AgentConfig::FromConfig(root));
        MC_ASSIGN_OR_RETURN(std::shared_ptr<agent::AgentDaemon> daemon, agent::AgentDaemon::Start(config));
        std::string banner;
        if (daemon->metrics_port() > 0) {
          banner += "metrics on " + config.metrics.address + ":" + std::to_string(daemon->metrics_port()) + "\n";
        }
        banner += "fabric at " + daemon->fabric_address() + "\n";
        banner += "serving fabric at " + daemon->serving_address() + "\n";
        banner += "listening on " + config.address + ":" + std::to_string(daemon->port()) + "\n";
        return tools::Started{daemon, banner};
      });
}
