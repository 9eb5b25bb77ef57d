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

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "modelcast/common/config.h"
#include "modelcast/common/journal.h"
#include "modelcast/common/task_pool.h"
#include "modelcast/planner/cluster.h"
#include "modelcast/planner/plan.h"
#include "modelcast/fabric/ucx_transport.h"
#include "modelcast/model/manifest.h"
#include "modelcast/rpc/metrics.h"
#include "modelcast/rpc/security.h"
#include "modelcast/rpc/server.h"
#include "modelcast_types.h"

namespace modelcast::rpc {
class AgentClient;
}

namespace modelcast::coordinator {

// The planner's vocabulary, which the coordinator speaks (modelcast/planner).
using planner::ClusterConfig;
using planner::FragmentOf;
using planner::NodeConfig;
using planner::Pipeline;
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
  rpc::SecurityConfig security;
  rpc::MetricsConfig metrics;  // `metrics: {address, port}`; off when absent
  ServingConfig serving;       // off when absent

  static Result<CoordinatorConfig> FromConfig(const ConfigNode& node);
};

// What the serving plane needs to know of the cluster, at one moment.
struct ServingView {
  struct NodeView {
    std::string rpc_address, serving_address;  // the agent's Thrift service and serving transport
    bool alive = false;
  };
  struct ModelView {
    std::shared_ptr<const model::Manifest> manifest;
    std::map<std::string, rpc::InstanceState::type> instances;  // node -> state
    std::map<std::string, std::set<int32_t>> loading;           // targets still loading -> slices they hold
  };
  std::map<std::string, NodeView> nodes;
  std::map<std::string, ModelView> models;
};

// What the coordinator knows. Thread-safe; every change to models is journaled before it is
// visible. Its concerns, each in a file of its own:
//   membership and the journal (state.cc): models, nodes, joins and heartbeats, replay and
//     compaction of the journal, status and metrics;
//   operations (operations.cc): scale-out's targets and sources, plans and fragments, progress,
//     the end of an operation, link judgement;
//   repair (repair.cc): liveness checks, a lost node, and the rounds that replan around it;
//   instances (instances.cc): serving instances, scale-in, what the serving plane sees.
// Locking: one mutex, mu_, guards all of it; a method named ...Locked expects the caller to
// hold it, every other one takes it itself. Nothing calls an agent or waits on the network
// under mu_: scale-out dispatches, repairs and scale-ins call the agents from the RPC thread
// after unlocking (SendFragments) or from the one worker thread (Repair, RunScaleIn), and take
// mu_ again to apply what they learnt, checking first that the operation has not moved on.
// The journal is appended to under mu_ (an operation's start, its replans, its end), so the
// journal's order is the state's. The serving watcher is called under mu_ and only wakes.
class ClusterState {
 public:
  static Result<std::unique_ptr<ClusterState>> Open(const ClusterConfig& cluster, const CoordinatorConfig& config);
  ~ClusterState();

  int64_t epoch() const { return epoch_; }
  const std::string& cluster_name() const { return cluster_.name; }

  Result<rpc::ModelInfo> RegisterModel(const std::string& name, const std::string& manifest_json,
                                       std::optional<double> keep_alive);
  std::vector<rpc::ModelInfo> ListModels() const;

  // Membership. A node must be in the cluster config; joining replaces what it said before.
  Status Join(const rpc::JoinRequest& req);
  // false: the node has not joined this epoch of the coordinator (it must rejoin).
  Result<bool> Heartbeat(const rpc::HeartbeatRequest& req);

  rpc::ClusterStatus GetStatus() const;

  // Scale-out: picks sources and targets, plans, journals the operation and sends every node
  // its plan fragment. The operation then runs on the agents; progress arrives by Progress().
  Result<rpc::ScaleOutResponse> ScaleOut(const rpc::ScaleOutRequest& req);
  Status Progress(const rpc::ProgressReport& report);
  Result<rpc::OperationStatus> GetOperation(const std::string& id) const;
  // Repairs running operations that a node has dropped out of (no heartbeat within the
  // deadline), and starts the reconciliation of operations found running after a restart.
  // Called every heartbeat interval.
  void CheckLiveness();

  // Scale-in: releases `replicas` instances of a model (the newest first, or the named nodes):
  // each is drained and its GPU copy demoted to host memory, where it stays warm until its
  // keep-alive ends.
  Result<std::string> ScaleIn(const rpc::ScaleInRequest& req);
  Result<std::vector<rpc::Instance>> ListInstances(const std::string& model) const;

  // Serving: a snapshot for the serving plane, which is woken by `watcher` whenever holdings or
  // instances change; and what it formed (members of a pipeline show as PIPELINE instances; an
  // empty id dissolves it).
  ServingView ServingSnapshot() const;
  // The registered model's manifest; nullptr when there is none.
  std::shared_ptr<const model::Manifest> FindManifest(const std::string& model) const;
  void SetServingWatcher(std::function<void()> watcher);
  void SetPipeline(const std::string& model, const std::vector<std::string>& nodes, const std::string& pipeline_id);
  // Calls an agent's service (a fresh connection with the coordinator's credentials).
  Status CallAgent(const std::string& rpc_address, int timeout_ms,
                   const std::function<void(rpc::AgentClient&)>& call) const;

  // Prometheus text: nodes, models, operations, bytes and slices moved, refusals.
  std::string RenderMetrics() const;
  void CountRefusal() { refused_++; }

 private:
  struct Node {
    NodeConfig config;
    bool joined = false;
    std::string rpc_address, fabric_address, serving_address;
    std::chrono::steady_clock::time_point last_heartbeat;
    double last_heartbeat_unix = 0;
    rpc::NodeInventory inventory;
    // > 0: a multicast measured this node's links well below the others' (a straggler, e.g. a
    // degraded NIC or a congested port): plans use this rate for it until one measures it back.
    double measured_nic = 0;
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
    std::set<std::string> pending;  // nodes of the current attempt not done yet
    std::chrono::steady_clock::time_point start;
    // What a replan needs.
    std::string algorithm;
    double deadline = 600;
    std::vector<std::string> sources, targets;  // targets include stand-ins for lost ones
    std::set<std::string> lost;
    int attempt = 0;  // fragments of attempt k > 0 are named "<id>.r<k>"
    int channel = 0;  // the fabric channel of the current attempt
    bool repairing = false;  // a repair is queued or running: done reports only count
    bool adopt = false;      // found running after a restart: follow what still runs
    std::string request_id;  // the caller's idempotency key (RequestHeader.request_id), if any
    // (sender, receiver) -> what each end measured of the link (bytes, busy seconds): [0] the
    // sender, [1] the receiver.
    std::map<std::pair<std::string, std::string>, std::array<std::pair<uint64_t, double>, 2>> links;
    std::string FragmentId() const { return attempt == 0 ? status.id : status.id + ".r" + std::to_string(attempt); }
  };
  // A fragment to send to one node's agent.
  struct Dispatch {
    std::string node, rpc_address;
    rpc::RunFragmentRequest fragment;
  };
  ClusterState(ClusterConfig cluster, CoordinatorConfig config)
      : cluster_(std::move(cluster)), config_(std::move(config)) {}
  Status FinishLocked(Operation& op, rpc::OperationState::type state, const std::string& error);
  // Ends the operation once no node of the current attempt is pending: succeeded when every
  // target it still counts holds the model, failed (naming the lost) otherwise.
  Status SettleLocked(Operation& op);
  // The fragments of `plan` for every node that has something to do in it, and the op's
  // per-node progress entries.
  Result<std::vector<Dispatch>> FragmentsLocked(Operation& op, const Plan& plan);
  // Sends the fragments; a node that refuses or cannot be reached is taken as lost.
  void SendFragments(const std::string& id, std::vector<Dispatch> dispatches);
  int NextChannelLocked();
  // Alive nodes that could take the model (no instance of it, no copy in GPU memory, not in
  // `exclude`, in `allowed` when that is not empty), best first: those holding a whole copy in
  // host memory (they load it locally), then those holding more of it, those with a whole copy
  // on SSD only last.
  std::vector<std::string> RankTargetsLocked(const std::string& model, uint32_t nslices,
                                             const std::set<std::string>& exclude,
                                             const std::set<std::string>& allowed) const;
  // The planner's request for the operation's sources and targets.
  PlanRequest PlanRequestLocked(const Operation& op, const model::Manifest& manifest) const;
  // The link rate plans use for a node: its configured one, or what a multicast measured.
  double NicLocked(const std::string& node) const;
  // The operation a request with this idempotency key started already (nullptr: none); the
  // same key for another kind of operation or model is an error naming it.
  Result<const Operation*> RepeatedLocked(const rpc::RequestHeader& header, rpc::OperationKind::type kind,
                                          const std::string& model, const char* method) const;
  // After a multicast: each node's best link rate against the others'; a node far below them
  // is taken as a straggler (Node::measured_nic), one measured back up is cleared.
  void JudgeLinksLocked(Operation& op);
  // The journal records that rebuild the state as it is now; and the rewrite, when due.
  std::vector<nlohmann::json> SnapshotLocked() const;
  // The journal record that starts an operation (what Replay needs to rebuild it).
  static nlohmann::json OperationRecord(const Operation& op);
  Status MaybeCompactLocked();
  void RepairLocked(Operation& op, const std::string& why);
  // `node` is lost to the operation (dead, unreachable, or its store refused): planned around
  // from now on, its instance (if a target) removed.
  void LoseLocked(Operation& op, const std::string& node, const std::string& why);
  // A repair (on the worker) runs in rounds of these steps (repair.cc): survey who takes part
  // (under the lock), ask them, with their fragments cancelled, what they hold (no lock: it
  // calls the agents), then, under the lock again, take their answers, bring in stand-ins for
  // lost targets, and replan from what the survivors hold.
  void Repair(const std::string& id);
  struct RepairRound;
  bool SurveyLocked(const std::string& id, RepairRound& r);
  void AskParticipants(RepairRound& r);
  bool TakeAnswersLocked(Operation& op, RepairRound& r);  // false: a target stopped short
  bool StandInsLocked(Operation& op, const RepairRound& r);  // false: every target is complete
  Result<std::vector<Dispatch>> ReplanLocked(Operation& op, RepairRound& r);
  // `journal` false: the caller journals it in a later record (a scale-out's targets go into
  // its finish record: one fsync per operation, not one per target).
  void SetInstanceLocked(const std::string& model, const std::string& node, rpc::InstanceState::type state,
                         bool journal = true);
  void RemoveInstanceLocked(const std::string& model, const std::string& node);
  void RunScaleIn(const std::string& id, std::vector<std::pair<std::string, std::string>> nodes);
  // Names a new operation ("op-<epoch>-<n>") and sets its status running from now.
  static constexpr size_t kKeptOperations = 1000;  // finished operations getOperation still answers for
  // A node whose best link carried less than this fraction of the median node's best (each
  // relative to its configured rate) is a straggler; links that carried less than
  // kMinLinkSample bytes say too little to judge.
  static constexpr double kSlowLink = 0.35;
  static constexpr uint64_t kMinLinkSample = 8ull << 20;
  std::string StartOperationLocked(Operation& op, rpc::OperationKind::type kind, const std::string& model,
                                   int32_t replicas);
  static void AddProgressEntry(Operation& op, const std::string& node, rpc::NodeRole::type role, int32_t nslices);
  Status CheckScaleLocked(const char* method, const std::string& model, int32_t replicas) const;
  Status Replay(const nlohmann::json& record);
  rpc::ModelInfo InfoLocked(const std::string& name, const Model& m) const;
  bool AliveLocked(const Node& n) const;

  ClusterConfig cluster_;
  CoordinatorConfig config_;
  int64_t epoch_ = 0;
  std::unique_ptr<Journal> journal_;
  uint64_t snapshot_records_ = 0;  // records the last compaction left
  uint64_t compactions_ = 0;
  mutable std::mutex mu_;
  std::map<std::string, Node> nodes_;
  std::map<std::string, Model> models_;
  std::map<std::string, Operation> operations_;
  std::map<std::string, std::map<std::string, rpc::Instance>> instances_;  // model -> node -> instance
  uint64_t next_operation_ = 1;
  int last_channel_ = 0;
  std::chrono::steady_clock::time_point opened_ = std::chrono::steady_clock::now();

  std::function<void()> serving_watcher_;  // set once, before serving starts
  void PokeServing() const {
    if (serving_watcher_) serving_watcher_();
  }

  std::atomic<uint64_t> refused_{0};
  uint64_t bytes_moved_ = 0, slices_moved_ = 0, operation_errors_ = 0;
  double operation_seconds_ = 0;  // sum over finished operations
  uint64_t operations_finished_ = 0;

  // Repairs and scale-ins run on one worker thread, off the RPC threads; declared last, so that
  // it stops before anything it uses goes. A task queued when the state closes returns at once.
  std::atomic<bool> closing_{false};
  std::unique_ptr<TaskPool> worker_;
};

// The running daemon: state plus its Thrift server (Coordinator and Membership multiplexed).
class ServingPlane;

class CoordinatorDaemon {
 public:
  static Result<std::unique_ptr<CoordinatorDaemon>> Start(const ClusterConfig& cluster,
                                                          const CoordinatorConfig& config);
  int port() const { return server_->port(); }
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }
  ClusterState& state() { return *state_; }
  ServingPlane* serving() { return serving_.get(); }
  ~CoordinatorDaemon();

 private:
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
