// What the coordinator knows, and the operations that change it.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "instance_table.h"
#include "membership.h"
#include "modelcast/common/journal.h"
#include "modelcast/common/task_pool.h"
#include "modelcast/coordinator/cluster_types.h"
#include "modelcast/coordinator/daemon.h"
#include "modelcast/planner/plan.h"
#include "modelcast/model/manifest.h"
#include "operation_table.h"

namespace modelcast::rpc {
class AgentClient;
}

namespace modelcast::coordinator {

// The key a leader was elected on and its create revision: writes are made only while it holds.
struct EtcdFence {
  std::string key;
  int64_t create_revision = 0;
};

// What the serving plane needs to know of the cluster, at one moment.
struct ServingView {
  struct NodeView {
    std::string rpc_address, serving_address;  // the agent's Thrift service and serving transport
    bool alive = false;
  };
  struct ModelView {
    std::shared_ptr<const model::Manifest> manifest;
    std::map<std::string, InstanceState> instances;   // node -> state
    std::map<std::string, std::set<int32_t>> loading;  // targets still loading -> slices they hold
    std::map<std::string, std::set<int32_t>> expected;  // loading targets -> slices they should hold next
  };
  std::map<std::string, NodeView> nodes;
  std::map<std::string, ModelView> models;
};

// What the coordinator knows. Thread-safe; every change to models is journaled before it is
// visible. It is made of parts, one per concern, each in files of its own:
//   membership (membership.h): the nodes, their joins, heartbeats, holdings and link rates;
//   operations (operation_table.h): the operations kept, their progress, channels and records;
//   instances (instance_table.h): where each model is loaded, and in what state;
// and it owns the registered models and the journal (state.cc). Its own methods are the flows
// that change more than one part, each in a file of its own: a scale-out, its dispatch, progress
// and end (operations.cc); repairs (repair.cc): liveness checks, a lost node, and the rounds
// that replan around it; scale-in and what the serving plane sees (instances.cc).
//
// Locking: one mutex, mu_, guards all of it, the parts included (they have no lock of their
// own and call nothing outside themselves). A method named ...Locked expects the caller to hold
// it, every other one takes it itself. Nothing calls an agent or waits on the network under
// mu_: scale-out dispatches, repairs and scale-ins call the agents from the RPC thread after
// unlocking (SendFragments) or from the one worker thread (Repair, RunScaleIn), and take mu_
// again to apply what they learnt, checking first that the operation has not moved on. The
// journal is appended to under mu_ (an operation's start, its replans, its end, instances), so
// the journal's order is the state's. The serving watcher is called under mu_ and only wakes.
class ClusterState {
 public:
  // With etcd state, every write is fenced on the leader's election key (EtcdLog::Fence).
  static Result<std::unique_ptr<ClusterState>> Open(const planner::ClusterConfig& cluster,
                                                    const CoordinatorConfig& config, const EtcdFence& fence);
  static Result<std::unique_ptr<ClusterState>> Open(const planner::ClusterConfig& cluster,
                                                    const CoordinatorConfig& config) {
    return Open(cluster, config, EtcdFence{});
  }
  ~ClusterState();

  int64_t epoch() const { return epoch_; }
  const std::string& cluster_name() const { return cluster_.name; }

  // `text_files`: the files the manifest lists in text_files (the tokenizer's), each checked
  // against its size and checksum, kept under state_dir/models/NAME/ for the serving API.
  using TextFiles = std::map<std::string, std::string>;
  Result<ModelReport> RegisterModel(const std::string& name, const std::string& manifest_json,
                                    std::optional<double> keep_alive, const TextFiles& text_files = {});
  // A registered model's text files (null when it has none, or they could not be read back).
  std::shared_ptr<const TextFiles> FindTextFiles(const std::string& model) const;
  std::vector<ModelReport> ListModels() const;
  // A model's registration record (RegisterRecordLocked's) read back: how the state is replayed,
  // and how a standby's serving plane reads the models from the state in etcd. `text_files`:
  // those the record carries (with etcd state), checked against the manifest; null when it
  // carries none (with the journal they are files in state_dir).
  struct Registration {
    std::string name, manifest_json;
    model::Manifest manifest;
    double keep_alive = 300;
    std::shared_ptr<const TextFiles> text_files;
  };
  static Result<Registration> ParseRegistration(const nlohmann::json& record);

  // Membership. A node must be in the cluster config; joining replaces what it said before.
  Status Join(const JoinArgs& args);
  // false: the node has not joined this epoch of the coordinator (it must rejoin).
  Result<bool> Heartbeat(const HeartbeatArgs& args);

  ClusterReport GetStatus() const;

  // Scale-out: picks sources and targets, plans, journals the operation and sends every node
  // its plan fragment. The operation then runs on the agents; progress arrives by Progress().
  Result<ScaleOutResult> ScaleOut(const ScaleOutArgs& args);
  Status Progress(const ProgressUpdate& update);
  Result<OperationStatus> GetOperation(const std::string& id) const;
  // Repairs running operations that a node has dropped out of (no heartbeat within the
  // deadline), and starts the reconciliation of operations found running after a restart.
  // Called every heartbeat interval.
  void CheckLiveness();

  // Scale-in: releases `replicas` instances of a model (the newest first, or the named nodes):
  // each is drained and its GPU copy demoted to host memory, where it stays warm until its
  // keep-alive ends.
  Result<std::string> ScaleIn(const ScaleInArgs& args);
  Result<std::vector<Instance>> ListInstances(const std::string& model) const;

  // Serving: a snapshot for the serving plane, which is woken by `watcher` whenever holdings or
  // instances change; and what it formed (members of a pipeline show as PIPELINE instances; an
  // empty id dissolves it).
  // `lookahead_s` > 0: each loading target's `expected` holds the slices its plan sends it next,
  // as many as it received in that many seconds so far (its measured rate).
  ServingView ServingSnapshot(double lookahead_s = 0) const;
  // The registered model's manifest; nullptr when there is none.
  std::shared_ptr<const model::Manifest> FindManifest(const std::string& model) const;
  void SetServingWatcher(std::function<void()> watcher);
  // `stages`: (node, first block, end block) of each of its stages, when forming one.
  void SetPipeline(const std::string& model, const std::vector<std::string>& nodes, const std::string& pipeline_id,
                   const std::vector<std::tuple<std::string, uint32_t, uint32_t>>& stages = {});
  // Calls an agent's service (a fresh connection with the coordinator's credentials).
  Status CallAgent(const std::string& rpc_address, int timeout_ms,
                   const std::function<void(rpc::AgentClient&)>& call) const;

  // Prometheus text: nodes, models, operations, bytes and slices moved, refusals.
  std::string RenderMetrics() const;
  void CountRefusal() { refused_++; }

 private:
  struct Model {
    std::shared_ptr<const model::Manifest> manifest;
    std::string manifest_json;
    double keep_alive = 300;
    std::shared_ptr<const TextFiles> text_files;
  };
  // Reads a model's text files back from state_dir (after a restart), checked against its
  // manifest; null, with a warning, when one is missing or differs.
  std::shared_ptr<const TextFiles> LoadTextFilesLocked(const std::string& name, const model::Manifest& m) const;
  // A model's registration as a state record. With the state in etcd it carries the text files
  // (base64), so that whichever coordinator leads next has the tokenizer; with the journal they
  // are files in state_dir.
  nlohmann::json RegisterRecordLocked(const std::string& name, const Model& m) const;
  // A fragment to send to one node's agent.
  struct Dispatch {
    std::string node, rpc_address;
    rpc::RunFragmentRequest fragment;
  };
  ClusterState(planner::ClusterConfig cluster, CoordinatorConfig config);

  // --- The models and the journal (state.cc).
  int32_t SlicesLocked(const std::string& model) const {
    return static_cast<int32_t>(models_.at(model).manifest->slices.size());
  }
  ModelReport ReportLocked(const std::string& name, const Model& m) const;
  Status Replay(const nlohmann::json& record);
  // The journal records that rebuild the state as it is now; and the rewrite, when due.
  std::vector<nlohmann::json> SnapshotLocked() const;
  Status MaybeCompactLocked();

  // --- A scale-out, its dispatch, its progress and its end (operations.cc).
  Status CheckScaleLocked(const char* method, const std::string& model, int32_t replicas) const;
  // Alive nodes that could take the model (no instance of it, no copy in GPU memory, not in
  // `exclude`, in `allowed` when that is not empty), best first: those holding a whole copy in
  // host memory (they load it locally), then those holding more of it, those with a whole copy
  // on SSD only last.
  std::vector<std::string> RankTargetsLocked(const std::string& model, uint32_t nslices,
                                             const std::set<std::string>& exclude,
                                             const std::set<std::string>& allowed) const;
  // The planner's request for the operation's sources and targets.
  planner::PlanRequest PlanRequestLocked(const Operation& op, const model::Manifest& manifest) const;
  // The fragments of `plan` for every node that has something to do in it, and the op's
  // per-node progress entries.
  Result<std::vector<Dispatch>> FragmentsLocked(Operation& op, const planner::Plan& plan);
  // Sends the fragments; a node that refuses or cannot be reached is taken as lost.
  void SendFragments(const std::string& id, std::vector<Dispatch> dispatches);
  Status FinishLocked(Operation& op, OperationState state, const std::string& error);
  // Ends the operation once no node of the current attempt is pending: succeeded when every
  // target it still counts holds the model, failed (naming the lost) otherwise.
  Status SettleLocked(Operation& op);
  // Records first_pipeline_blocks_s once every block of the op's first pipeline has landed.
  void FirstPipelineLandedLocked(Operation& op);

  // --- Repairs (repair.cc). A repair (on the worker) runs in rounds of these steps: survey who
  // takes part (under the lock), ask them, with their fragments cancelled, what they hold (no
  // lock: it calls the agents), then, under the lock again, take their answers, bring in
  // stand-ins for lost targets, and replan from what the survivors hold.
  void RepairLocked(Operation& op, const std::string& why);
  // `node` is lost to the operation (dead, unreachable, or its store refused): planned around
  // from now on, its instance (if a target) removed.
  void LoseLocked(Operation& op, const std::string& node, const std::string& why);
  void Repair(const std::string& id);
  struct RepairRound;
  bool SurveyLocked(const std::string& id, RepairRound& r);
  void AskParticipants(RepairRound& r);
  bool TakeAnswersLocked(Operation& op, RepairRound& r);     // false: a target stopped short
  bool StandInsLocked(Operation& op, const RepairRound& r);  // false: every target is complete
  Result<std::vector<Dispatch>> ReplanLocked(Operation& op, RepairRound& r);

  // --- Scale-in (instances.cc).
  void RunScaleIn(const std::string& id, std::vector<std::pair<std::string, std::string>> nodes);

  void PokeServing() const {
    if (serving_watcher_) serving_watcher_();
  }

  planner::ClusterConfig cluster_;
  CoordinatorConfig config_;
  int64_t epoch_ = 0;
  std::unique_ptr<RecordLog> journal_;  // the local journal, or the log in etcd
  uint64_t snapshot_records_ = 0;  // records the last compaction left
  uint64_t compactions_ = 0;
  std::chrono::steady_clock::time_point opened_ = std::chrono::steady_clock::now();

  mutable std::mutex mu_;  // guards everything below
  std::map<std::string, Model> models_;
  Membership members_;
  OperationTable ops_;
  InstanceTable instances_;
  std::function<void()> serving_watcher_;  // set once, before serving starts

  std::atomic<uint64_t> refused_{0};

  // Repairs and scale-ins run on one worker thread, off the RPC threads; declared last, so that
  // it stops before anything it uses goes. A task queued when the state closes returns at once.
  std::atomic<bool> closing_{false};
  std::unique_ptr<TaskPool> worker_;
};

}  // namespace modelcast::coordinator
