// The coordinator daemon (`modelcast-coordinator --config cluster.yaml`): the cluster's state
// (nodes and their heartbeats, registered models), kept across restarts in an append-only
// journal, served over Thrift to autoscalers (Coordinator) and node agents (Membership).
//
// Operations run on the agents; the coordinator plans them, dispatches plan fragments, follows
// their progress and repairs them: when a node dies mid-operation (no heartbeat, or a peer's
// fragment fails naming it) the survivors' fragments are cancelled, what each holds is asked
// of its agent, and the rest is replanned (planner::Replan) in a new attempt, a spare node
// standing in for a lost target where there is one. After a restart, operations that were
// running are reconciled with the agents: fragments still running are followed again, finished
// ones are read from the agents' inventories, and whatever is missing is replanned.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "modelcast/common/config.h"
#include "modelcast/planner/cluster.h"
#include "modelcast/planner/plan.h"
#include "modelcast/fabric/ucx_transport.h"
#include "modelcast/rpc/metrics.h"
#include "modelcast/rpc/security.h"
#include "modelcast/rpc/server.h"
#include "modelcast_types.h"

namespace modelcast::coordinator {

// The planner's vocabulary, which the coordinator speaks (modelcast/planner).
using planner::ClusterConfig;
using planner::FragmentOf;
using planner::NodeConfig;
using planner::Plan;
using planner::PlanRequest;
using planner::Stage;

// The `coordinator.serving` section: the router that serves requests on the model's instances
// and, during a scale-out, on pipelines of the receivers (execute-while-load).
//   serving: {fabric: {listen: 10.0.0.1:7600, tls: tcp, net_devices: eth0},
//             http: {address: 10.0.0.1, port: 8000, threads: 256},  # POST /v1/completions
//             max_batch: 16, queue_timeout: 60s, max_stages: 4, step_timeout: 30s,
//             pipelines: true,                          # false: serve full copies only
//             emulate: {step: 40ms, token: 100us}}      # benchmarks only: an accelerator's step time
struct ServingConfig {
  bool enabled = false;
  fabric::UcxOptions fabric;
  std::string http_address = "127.0.0.1";
  int http_port = -1;  // -1: no HTTP endpoint; 0: any free port
  int http_threads = 256;  // requests the HTTP endpoint serves at once
  int max_batch = 16;
  double queue_timeout = 60;
  int max_stages = 4;
  double step_timeout = 30;
  bool pipelines = true;
  // Seconds ahead that pipelines form from the plan (0: only from blocks that have landed).
  double lookahead = 1;
  double emulated_step = 0;   // seconds; see pipeline::RouterOptions
  double emulated_token = 0;

  static Result<ServingConfig> FromConfig(const ConfigNode& node);
};

// The `coordinator` section of the cluster YAML.
//   coordinator: {address: 10.0.0.1, port: 7300, state_dir: /var/lib/modelcast/coordinator,
//                 heartbeat_interval: 1s, heartbeat_deadline: 5s,
//                 security: {token_file: /etc/modelcast/token}}
struct CoordinatorConfig {
  std::string address = "127.0.0.1";
  int port = 7300;
  std::filesystem::path state_dir;
  double heartbeat_interval = 1;
  double heartbeat_deadline = 5;
  // The journal is rewritten as a snapshot of its state (models, the operations still kept,
  // instances) once it holds this many records (or twice what the last snapshot held).
  int64_t journal_compact_records = 20000;
  // `state: {etcd: {endpoints: [host:port, ...], prefix: /modelcast/CLUSTER, timeout: 5s}}`: the
  // state is kept in etcd (shared by the cluster's coordinators) rather than in the journal in
  // state_dir (which still holds the models' text files). Empty: the local journal.
  std::vector<std::string> etcd_endpoints;
  std::string etcd_prefix;
  double etcd_timeout = 5;
  // With etcd, coordinators sharing the prefix elect a leader on a lease of this many seconds:
  // the others stand by (not listening) and one of them leads within about this long of the
  // leader's death. A leader that loses its lease exits, so that it acts no more.
  int64_t etcd_lease = 2;
  rpc::SecurityConfig security;
  rpc::MetricsConfig metrics;  // `metrics: {address, port}`; off when absent
  ServingConfig serving;       // off when absent

  static Result<CoordinatorConfig> FromConfig(const ConfigNode& node);
};

// What the coordinator knows (coordinator/src/cluster_state.h), and what it shows the serving plane.
class ClusterState;
struct ServingView;

// The running daemon: state plus its Thrift server (Coordinator and Membership multiplexed).
class ServingPlane;

class LeaderElection;
class EtcdClient;

class CoordinatorDaemon {
 public:
  // With etcd state, waits to be elected first (`stop_requested`, polled meanwhile, ends the
  // wait with Cancelled).
  static Result<std::unique_ptr<CoordinatorDaemon>> Start(const ClusterConfig& cluster,
                                                          const CoordinatorConfig& config,
                                                          const std::function<bool()>& stop_requested = nullptr);
  int port() const { return server_->port(); }
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }
  ServingPlane* serving() { return serving_.get(); }
  ~CoordinatorDaemon();

 private:
  std::unique_ptr<LeaderElection> election_;  // with etcd state: this coordinator's candidacy
  std::shared_ptr<EtcdClient> etcd_;          // with etcd state
  std::atomic<bool> resigning_{false};
  std::unique_ptr<ClusterState> state_;
  std::unique_ptr<ServingPlane> serving_;
  std::unique_ptr<rpc::RpcServer> server_;
  std::unique_ptr<rpc::MetricsServer> metrics_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread watchdog_;
};

// Service names on the multiplexed server.
inline constexpr const char* kCoordinatorService = "Coordinator";
inline constexpr const char* kMembershipService = "Membership";
inline constexpr const char* kRouterService = "Router";

}  // namespace modelcast::coordinator
