// The coordinator daemon (`modelcast-coordinator --config cluster.yaml`): the cluster's state
// (nodes and their heartbeats, registered models), kept across restarts in an append-only
// journal, served over Thrift to autoscalers (Coordinator) and node agents (Membership).
//
// Built so far: model registration and listing, agent membership (join, heartbeat with a
// deadline, inventories), scale-out operations (sources and targets chosen from what alive
// nodes hold, planned with the planner, fragments dispatched to the agents, progress tracked,
// operations journaled), cluster status, security on every call, restart from the journal.
// Not yet: replanning when a node dies mid-operation, scale-in, instances.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "modelcast/common/config.h"
#include "modelcast/common/journal.h"
#include "modelcast/coord/cluster.h"
#include "modelcast/model/manifest.h"
#include "modelcast/rpc/metrics.h"
#include "modelcast/rpc/security.h"
#include "modelcast/rpc/server.h"
#include "modelcast_types.h"

namespace modelcast::coord {

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
  rpc::SecurityConfig security;
  rpc::MetricsConfig metrics;  // `metrics: {address, port}`; off when absent

  static Result<CoordinatorConfig> FromConfig(const ConfigNode& node);
};

// What the coordinator knows. Thread-safe; every change to models is journaled before it is
// visible.
class ClusterState {
 public:
  static Result<std::unique_ptr<ClusterState>> Open(const ClusterConfig& cluster, const CoordinatorConfig& config);

  int64_t epoch() const { return epoch_; }
  const std::string& cluster_name() const { return cluster_.name; }

  Result<rpc::ModelInfo> RegisterModel(const std::string& name, const std::string& manifest_json,
                                       std::optional<double> keep_alive);
  std::vector<rpc::ModelInfo> ListModels() const;
  bool HasModel(const std::string& name) const;

  // Membership. A node must be in the cluster config; joining replaces what it said before.
  Status Join(const rpc::JoinRequest& req);
  // false: the node has not joined this epoch of the coordinator (it must rejoin).
  Result<bool> Heartbeat(const rpc::HeartbeatRequest& req);

  rpc::ClusterStatus GetStatus() const;

  // Scale-out: picks sources and targets, plans, journals the operation and sends every node
  // its plan fragment. The operation then runs on the agents; progress arrives by Progress().
  Result<rpc::ScaleOutResponse> ScaleOut(const rpc::ScaleOutRequest& req);
  // The checks every scale request passes first: a known model, 1 <= replicas <= nodes.
  Status CheckScale(const char* method, const std::string& model, int32_t replicas) const;
  Status Progress(const rpc::ProgressReport& report);
  Result<rpc::OperationStatus> GetOperation(const std::string& id) const;
  // Fails running operations that a node has dropped out of (no heartbeat within the deadline),
  // naming it. Called every heartbeat interval.
  void CheckLiveness();

  // Prometheus text: nodes, models, operations, bytes and slices moved, refusals.
  std::string RenderMetrics() const;
  void CountRefusal() { refused_++; }

 private:
  struct Node {
    NodeConfig config;
    bool joined = false;
    std::string rpc_address, fabric_address;
    std::chrono::steady_clock::time_point last_heartbeat;
    double last_heartbeat_unix = 0;
    rpc::NodeInventory inventory;
  };
  struct Model {
    std::shared_ptr<const model::Manifest> manifest;
    std::string manifest_json;
    double keep_alive = 300;
  };
  struct Operation {
    rpc::OperationStatus status;
    std::map<std::string, size_t> node_index;  // into status.nodes
    std::map<std::string, std::set<int32_t>> received;
    std::set<std::string> pending;  // nodes not done yet
    std::chrono::steady_clock::time_point start;
  };
  ClusterState(ClusterConfig cluster, CoordinatorConfig config)
      : cluster_(std::move(cluster)), config_(std::move(config)) {}
  Status FinishLocked(Operation& op, rpc::OperationState::type state, const std::string& error);
  Status CheckScaleLocked(const char* method, const std::string& model, int32_t replicas) const;
  Status Replay(const nlohmann::json& record);
  rpc::ModelInfo InfoLocked(const std::string& name, const Model& m) const;
  bool AliveLocked(const Node& n) const;

  ClusterConfig cluster_;
  CoordinatorConfig config_;
  int64_t epoch_ = 0;
  std::unique_ptr<Journal> journal_;
  mutable std::mutex mu_;
  std::map<std::string, Node> nodes_;
  std::map<std::string, Model> models_;
  std::map<std::string, Operation> operations_;
  uint64_t next_operation_ = 1;
  std::atomic<uint64_t> refused_{0};
  uint64_t bytes_moved_ = 0, slices_moved_ = 0, operation_errors_ = 0;
  double operation_seconds_ = 0;  // sum over finished operations
  uint64_t operations_finished_ = 0;
};

// The running daemon: state plus its Thrift server (Coordinator and Membership multiplexed).
class CoordinatorDaemon {
 public:
  static Result<std::unique_ptr<CoordinatorDaemon>> Start(const ClusterConfig& cluster,
                                                          const CoordinatorConfig& config);
  int port() const { return server_->port(); }
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }
  ClusterState& state() { return *state_; }
  ~CoordinatorDaemon();

 private:
  std::unique_ptr<ClusterState> state_;
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

}  // namespace modelcast::coord
