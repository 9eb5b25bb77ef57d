// The coordinator's own vocabulary: what its state holds and what its operations take and give.
// These are not the wire types. The handlers (handlers.cc) turn the IDL's requests into these
// and these into the IDL's answers (wire.h: the one mapping); nothing else in the coordinator
// sees a generated type, but for what an agent reports it holds (rpc::NodeInventory, read by
// inventory.h as the agent sent it).
//
// The enums carry the IDL's numbers: the journal records them as numbers, and a journal written
// before these types existed replays unchanged (wire.cc checks that the two agree).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "modelcast/model/manifest.h"
#include "modelcast_types.h"

namespace modelcast::coordinator {

enum class OperationKind { kScaleOut = 1, kScaleIn = 2 };
enum class OperationState { kPending = 1, kRunning = 2, kSucceeded = 3, kFailed = 4, kCancelled = 5 };
// A node's part in one operation.
enum class NodeRole { kSource = 1, kTarget = 2, kRelease = 3 };
// Where one node stands in one operation (the IDL's NodeState says what each means).
enum class NodeState { kWaiting = 1, kReceiving = 2, kComplete = 3, kFailed = 4, kLost = 5, kDraining = 6, kReleased = 7 };
// What a node does with a model the coordinator placed there.
enum class InstanceState { kLoading = 1, kPipeline = 2, kLocal = 3, kDraining = 4 };

// The names, as the IDL spells them ("SUCCEEDED"); in a sentence, in lower case ("node-2 (lost: ...)").
std::string NameOf(OperationKind kind);
std::string NameOf(OperationState state);
std::string NameOf(NodeState state);
std::string InSentence(NodeState state);
// Running or about to: not finished.
inline bool Unfinished(OperationState s) { return s == OperationState::kRunning || s == OperationState::kPending; }

// One node's part in one operation, and how far it got.
struct NodeProgress {
  std::string node;
  NodeRole role = NodeRole::kSource;
  int32_t slices_received = 0;
  int32_t slices_total = 0;  // targets: the model's slices; others 0
  int64_t bytes_received = 0;
  double rate_bytes_per_s = 0;
  NodeState state = NodeState::kWaiting;
  std::optional<std::string> error;
  std::optional<double> complete_unix;     // when a target had every slice
  std::optional<int32_t> corrupt_slices;   // caught by their checksums and sent again
  std::optional<double> link_bytes_per_s;  // the best rate any of its links carried
};

// An operation as getOperation reports it.
struct OperationStatus {
  std::string id;
  OperationKind kind = OperationKind::kScaleOut;
  std::string model;
  int32_t replicas = 0;
  OperationState state = OperationState::kPending;
  double created_unix = 0;
  std::optional<double> started_unix, finished_unix;
  std::vector<NodeProgress> nodes;
  std::optional<std::string> error;
  int32_t replans = 0;
  std::optional<double> first_pipeline_s;  // since its start: when a group of targets could first serve
  // Since its start: when the last block of the first pipeline's stages landed (the pipeline may
  // have been formed before, from the plan's prediction).
  std::optional<double> first_pipeline_blocks_s;
  std::optional<double> first_byte_unix;   // when the first slice started moving to a target
};

// A model placed on a node.
struct Instance {
  std::string model, node;
  InstanceState state = InstanceState::kLoading;
  std::optional<std::string> pipeline_id;  // PIPELINE: the pipeline it is a stage of
  double since_unix = 0;
};

// What scaleOut is asked.
struct ScaleOutArgs {
  std::string model;
  int32_t replicas = 0;
  std::string algorithm = "lambdapipe";
  double deadline = 600;
  bool dry_run = false;
  std::vector<std::string> allowed_targets;  // empty: any node
  std::string request_id;                    // the caller's idempotency key; empty: none
};
struct ScaleOutResult {
  std::string operation_id;
  std::vector<std::string> targets, sources;
  std::optional<std::string> plan_json;  // dry runs
};

// What scaleIn is asked.
struct ScaleInArgs {
  std::string model;
  int32_t replicas = 0;
  std::vector<std::string> nodes;  // empty: the coordinator chooses
  std::string request_id;
};

// A node agent joining, and its heartbeats.
struct JoinArgs {
  std::string node, rpc_address, fabric_address;
  std::optional<std::string> serving_address;  // default: the fabric address
  rpc::NodeInventory inventory;
};
struct HeartbeatArgs {
  std::string node;
  int64_t epoch = 0;
  std::optional<rpc::NodeInventory> inventory;  // when it changed
};

// What an agent reports of a fragment it runs.
struct ProgressUpdate {
  struct Slice {
    int32_t slice = 0;
    int64_t bytes = 0;
    double started = 0;   // seconds after started_unix
    double finished = 0;  // when it landed, likewise
  };
  struct Link {
    std::string peer;
    int64_t bytes = 0;
    double busy_s = 0;
  };
  std::string node, operation_id;
  std::vector<Slice> slices;  // since the last report
  bool done = false;
  std::optional<std::string> error;
  bool store_failure = false;  // with error: the node's own store refused
  std::optional<double> started_unix;
  int32_t corrupt_slices = 0;
  std::vector<Link> sent_to, received_from;  // at the end: what its links carried
};

// What the coordinator knows of a model and of a node, at one moment.
struct ModelReport {
  std::string name;
  std::shared_ptr<const model::Manifest> manifest;
  double keep_alive = 0;
  int32_t instances = 0, loading = 0;
  std::vector<std::string> ssd_holders, host_holders, gpu_holders;  // live nodes with some of it
  std::map<std::string, std::string> ssd_errors;                    // node -> why its SSD copy is unusable
};
struct NodeReport {
  std::string name, rpc_address;
  bool alive = false;
  double last_heartbeat_unix = 0;
  rpc::NodeInventory inventory;
  std::optional<double> measured_nic;  // a straggler: the rate plans use for it
};
struct ClusterReport {
  std::string cluster;
  std::vector<NodeReport> nodes;
  std::vector<ModelReport> models;
};

}  // namespace modelcast::coordinator
