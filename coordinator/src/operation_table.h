// The operations the coordinator knows: every one running, and the newest kKept finished ones
// (getOperation answers for them). Each is what getOperation reports (OperationStatus) and what
// following, repairing and replanning it needs; the table names operations, hands out fabric
// channels, finds a repeated request's operation, and reads and writes the journal records of
// operations ("operation", "replan", "finish").
//
// Locking: none of its own. It is a part of ClusterState, which calls it only with its mutex
// (ClusterState::mu_) held; it calls nothing outside itself.
#pragma once

#include <array>
#include <chrono>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "modelcast/common/status.h"
#include "modelcast/coordinator/cluster_types.h"

namespace modelcast::coordinator {

struct Operation {
  OperationStatus status;
  std::map<std::string, size_t> node_index;  // into status.nodes
  std::map<std::string, std::set<int32_t>> received;
  // Per target: the slices the current attempt's plan sends it, in the plan's tick order (what
  // the serving plane expects it to hold next), and when each slice it reported landed (unix).
  std::map<std::string, std::vector<int32_t>> planned;
  std::map<std::string, size_t> planned_next;  // per target: the first of `planned` it lacks
  std::map<std::string, std::map<int32_t, double>> landed_unix;
  // The first pipeline formed of its targets: (node, first block, end block) per stage, to tell
  // when its last block landed (first_pipeline_blocks_s).
  std::vector<std::tuple<std::string, uint32_t, uint32_t>> first_pipeline;
  std::set<std::string> pending;  // nodes of the current attempt not done yet
  std::chrono::steady_clock::time_point start;
  // What a replan needs.
  std::string algorithm = "lambdapipe";
  double deadline = 600;
  std::vector<std::string> sources, targets;  // targets include stand-ins for lost ones
  std::set<std::string> lost;
  int attempt = 0;  // fragments of attempt k > 0 are named "<id>.r<k>"
  int channel = 0;  // the fabric channel of the current attempt
  bool repairing = false;  // a repair is queued or running: done reports only count
  bool adopt = false;      // found running after a restart: follow what still runs
  // While adopting: nodes whose fragment reported its end (true: done, false: failed) before the
  // survey's answers were taken; an answer "running" from before that end is out of date.
  std::map<std::string, bool> ended_while_adopting;
  std::string request_id;  // the caller's idempotency key, if any
  // (sender, receiver) -> what each end measured of the link (bytes, busy seconds): [0] the
  // sender, [1] the receiver.
  std::map<std::pair<std::string, std::string>, std::array<std::pair<uint64_t, double>, 2>> links;

  std::string FragmentId() const { return attempt == 0 ? status.id : status.id + ".r" + std::to_string(attempt); }
  bool running() const { return status.state == OperationState::kRunning; }
  bool IsTarget(const std::string& node) const;
  // The node's progress entry; it must take part.
  NodeProgress& progress(const std::string& node) { return status.nodes[node_index.at(node)]; }
  const NodeProgress& progress(const std::string& node) const { return status.nodes[node_index.at(node)]; }
  // Adds the node's progress entry, unless it has one: targets count `nslices`, released nodes
  // start DRAINING, the others WAITING.
  void AddNode(const std::string& node, NodeRole role, int32_t nslices);
  // Each node's best link rate, from what the two ends of each link measured (links that
  // carried less than kMinLinkSample bytes say too little); recorded in the nodes' progress.
  std::map<std::string, double> BestLinks();
  static constexpr uint64_t kMinLinkSample = 8ull << 20;
};

class OperationTable {
 public:
  static constexpr size_t kKept = 1000;  // finished operations getOperation still answers for

  Operation* Find(const std::string& id);
  const Operation* Find(const std::string& id) const;
  std::map<std::string, Operation>& all() { return ops_; }
  const std::map<std::string, Operation>& all() const { return ops_; }

  // Names a new operation ("op-<epoch>-<n>") and sets it running from now; makes room by
  // forgetting the oldest finished ones beyond kKept. The caller adds it when it is journaled.
  void Start(Operation& op, int64_t epoch, OperationKind kind, const std::string& model, int32_t replicas);
  Operation& Add(Operation op);
  // A free fabric channel, round robin (1 to 255); 0 when every one is busy.
  int NextChannel();
  // The operation of the model that runs now; nullptr: none.
  const Operation* RunningFor(const std::string& model) const;
  // The operation a request with this idempotency key started already (nullptr: none); the
  // same key for another kind of operation or model is an error naming it.
  Result<const Operation*> Repeated(const std::string& request_id, OperationKind kind, const std::string& model,
                                    const char* method) const;
  // The end: the state, when, why; counted in the totals.
  void Finish(Operation& op, OperationState state, const std::string& error);

  // The journal records of an operation: its start, a replan, its end (with the targets that
  // became instances).
  static nlohmann::json StartRecord(const Operation& op);
  static nlohmann::json ReplanRecord(const Operation& op);
  static nlohmann::json FinishRecord(const Operation& op, const std::vector<std::string>& instances);
  // What a replayed record needs to know of the rest of the state.
  struct ReplayContext {
    std::function<std::optional<int32_t>(const std::string&)> slices_of;  // a model's slices; nullopt: unknown
    std::function<bool(const std::string&)> has_node;
  };
  // Replays "operation", "replan" and "finish" records (false: not one of these).
  Result<bool> Replay(const nlohmann::json& record, const ReplayContext& ctx);
  // The records that rebuild the table: every operation kept, by age (its start, its latest
  // replan, its end).
  void Snapshot(std::vector<nlohmann::json>& records) const;

  // For the metrics.
  struct Totals {
    uint64_t bytes_moved = 0, slices_moved = 0;
    uint64_t finished = 0, errors = 0;
    double seconds = 0;  // summed over finished operations
  };
  Totals& totals() { return totals_; }
  const Totals& totals() const { return totals_; }

 private:
  std::map<std::string, Operation> ops_;
  uint64_t next_ = 1;
  int last_channel_ = 0;
  Totals totals_;
};

}  // namespace modelcast::coordinator
