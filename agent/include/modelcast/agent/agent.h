// The node agent (`modelcast-agent --config node.yaml`): the node's tiered store and fabric
// transport behind the Agent Thrift service. It joins the coordinator, heartbeats with its
// inventory, runs plan fragments (slices received straight into the store's host pool, sent
// from it, written behind to SSD) and reports their progress.
//
//   node: node-1
//   address: 127.0.0.1          # the Agent service binds here
//   port: 7401
//   coordinator: {address: 127.0.0.1, port: 7300}
//                               # or {endpoints: [10.0.0.1:7300, 10.0.0.2:7300]}: every coordinator
//   fabric: {listen: 127.0.0.1:7501, serving_listen: 127.0.0.1:7502, transport: auto, tls: tcp,
//            net_devices: eth0}
//                               # fault: "delay=50ms" wraps it in the fault injector (tests)
//   store: {...}                # cluster-configs/node-store.yaml
//   security: {...}             # as the coordinator's
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "modelcast/common/config.h"
#include "modelcast/fabric/transport.h"
#include "modelcast/fabric/ucx_transport.h"
#include "modelcast/rpc/metrics.h"
#include "modelcast/rpc/security.h"
#include "modelcast/rpc/server.h"
#include "modelcast/tiers/store.h"
#include "modelcast_types.h"

namespace modelcast::agent {

// The fabric's threads (transport progress, channel dispatch, checksums, fragment runs) run at
// this nice value unless fabric.nice says otherwise: a node that serves while it sends keeps
// the CPU for its requests (a nice-10 thread gets about 5 % of a core next to two busy nice-0
// ones) and the fabric has every cycle serving leaves idle. fabric.cpus puts them on CPUs of
// their own, which also takes the kernel's TCP send work (softirq, which no nice value bounds)
// off the serving's CPUs (bench/serving_share.py).
inline constexpr int kDefaultFabricNice = 10;

struct AgentConfig {
  std::string node;
  std::string address = "127.0.0.1";
  int port = 0;
  // coordinator: {address, port}, or {endpoints: [host:port, ...]} for a head of several
  // coordinators (the agent talks to whichever listens: the leader).
  std::vector<rpc::Endpoint> coordinators;
  std::string transport = "auto";
  std::string fault;  // fabric.fault: the fault injector's spec (tests), e.g. "delay=50ms"
  fabric::UcxOptions fabric;  // fabric.thread: where every fabric thread runs (fabric.nice, fabric.cpus)
  double max_send_rate = 0;   // fabric.max_send_rate in bytes/s: the multicast's share of the uplink (0: all)
  size_t pieces = 2;  // fabric.pieces: slices move, and relays forward them, in this many pieces each (1: whole)
  std::string serving_listen;  // fabric.serving_listen: the serving transport's ip:port (default: listen's ip, any port)
  tiers::StoreOptions store;
  rpc::SecurityConfig security;
  rpc::MetricsConfig metrics;  // `metrics: {address, port}`; off when absent

  static Result<AgentConfig> FromConfig(const ConfigNode& root);
};

// The store's inventory as the RPC describes it (slice runs per tier).
rpc::NodeInventory ToRpcInventory(const tiers::Inventory& inventory);

class AgentDaemon {
 public:
  static Result<std::unique_ptr<AgentDaemon>> Start(const AgentConfig& config);
  ~AgentDaemon();

  int port() const { return server_->port(); }
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }
  // Where peers reach this node's transport ("ip:port"): plan fragments and pipeline stages.
  std::string fabric_address() const;
  // Where pipeline drivers and stages reach this node's serving transport.
  std::string serving_address() const;
  // Prometheus text: tier occupancy, SSD bytes, evictions, fallbacks, fragments, slices and bytes moved.
  std::string RenderMetrics() const;
  tiers::Store& store() { return *store_; }

  struct Impl;  // the daemon's parts (agent.cc)

 private:
  AgentDaemon() = default;
  std::shared_ptr<Impl> impl_;
  std::unique_ptr<tiers::Store> store_;
  std::unique_ptr<rpc::RpcServer> server_;
  std::unique_ptr<rpc::MetricsServer> metrics_;
};

}  // namespace modelcast::agent
