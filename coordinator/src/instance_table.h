// Where each model is loaded, as the coordinator placed it: a target loading it (LOADING), a
// stage of a cross-node pipeline (PIPELINE), a full local instance (LOCAL), or one released and
// finishing its requests (DRAINING).
//
// Journaled: every change but to a LOADING instance (those come back from their operation after
// a restart) and but where the caller journals it in a later record (a scale-out's targets go
// into its finish record: one fsync per operation, not one per target).
//
// Locking: none of its own. It is a part of ClusterState, which calls it only with its mutex
// (ClusterState::mu_) held; `changed` is called under that mutex too, and must only wake.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "modelcast/common/journal.h"
#include "modelcast/coordinator/cluster_types.h"

namespace modelcast::coordinator {

class InstanceTable {
 public:
  using ByNode = std::map<std::string, Instance>;

  // `changed` runs whenever an instance appears, changes state or goes.
  explicit InstanceTable(std::function<void()> changed) : changed_(std::move(changed)) {}
  // Changes are journaled from now on (not while the journal replays).
  void AttachJournal(RecordLog* journal) { journal_ = journal; }

  void Set(const std::string& model, const std::string& node, InstanceState state, bool journal = true);
  void Remove(const std::string& model, const std::string& node);
  // Members of a pipeline show as PIPELINE while it lasts; an empty id dissolves it (they are
  // LOADING again). False when the model has no instances.
  bool SetPipeline(const std::string& model, const std::vector<std::string>& nodes, const std::string& pipeline_id);

  // The model's instances by node; nullptr when it has none.
  const ByNode* Of(const std::string& model) const;
  bool Has(const std::string& model, const std::string& node) const;
  std::vector<Instance> List(const std::string& model) const;
  const std::map<std::string, ByNode>& all() const { return instances_; }

  // The journal: "instance" and "instance_removed" records (false: not one of these), and the
  // records that rebuild the table as it is.
  Result<bool> Replay(const nlohmann::json& record);
  void Restore(Instance instance);  // an instance a replayed record names
  void Snapshot(std::vector<nlohmann::json>& records) const;

 private:
  void Record(const nlohmann::json& record) const;

  std::function<void()> changed_;
  RecordLog* journal_ = nullptr;
  std::map<std::string, ByNode> instances_;  // model -> node -> instance
};

}  // namespace modelcast::coordinator
