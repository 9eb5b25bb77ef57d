// The cluster's nodes as their agents describe them: who has joined, their heartbeats, what
// each holds, and the link rate plans use for each.
//
// Locking: none of its own. It is a part of ClusterState, which calls it only with its mutex
// (ClusterState::mu_) held; it calls nothing outside itself.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "modelcast/common/status.h"
#include "modelcast/coordinator/cluster_types.h"
#include "modelcast/planner/cluster.h"

namespace modelcast::coordinator {

class Membership {
 public:
  struct Node {
    planner::NodeConfig config;
    bool joined = false;
    std::string rpc_address, fabric_address, serving_address;
    std::chrono::steady_clock::time_point last_heartbeat;
    double last_heartbeat_unix = 0;
    std::chrono::steady_clock::duration deaf_at_heartbeat{};  // deaf_ when it was last heard
    rpc::NodeInventory inventory;  // as its agent last reported it
    // > 0: a multicast measured this node's links well below the others' (a straggler, e.g. a
    // degraded NIC or a congested port): plans use this rate for it until one measures it back.
    double measured_nic = 0;
  };

  // Every node of the cluster config, none joined yet; a node silent for `heartbeat_deadline`
  // seconds is taken as dead.
  Membership(const planner::ClusterConfig& cluster, double heartbeat_deadline);

  // A node joins (or joins again: what it said before is replaced). NotFound when it is not in
  // the cluster config, InvalidArgument without an rpc address.
  Status Join(const JoinArgs& a);
  // false: the node has not joined this epoch of the coordinator (it must rejoin).
  Result<bool> Heartbeat(const HeartbeatArgs& a, int64_t epoch);

  bool Has(const std::string& name) const { return nodes_.count(name) > 0; }
  // The node of that name; it must be in the cluster config.
  const Node& at(const std::string& name) const { return nodes_.at(name); }
  const std::map<std::string, Node>& nodes() const { return nodes_; }
  size_t size() const { return nodes_.size(); }
  // Joined, and heard from within the deadline, counting only the time the coordinator could
  // hear it (see Deaf).
  bool Alive(const Node& n) const;
  bool Alive(const std::string& name) const { return Alive(nodes_.at(name)); }
  // The coordinator could hear no heartbeat for `d` (it held its state's lock while a journal
  // write waited on a disk or on etcd electing a leader): that time is not held against any
  // node. Without it a coordinator stalled past the deadline would take every node for dead
  // the moment it wakes, before the heartbeats that queued up meanwhile are handled.
  void Deaf(std::chrono::steady_clock::duration d) { deaf_ += d; }
  // What an agent answered when asked directly (newer than its last heartbeat).
  void SetInventory(const std::string& name, const rpc::NodeInventory& inventory);
  // The link rate plans use for a node: its configured one, or what a multicast measured.
  double Nic(const std::string& name) const;
  // After a multicast: `best` holds each node's best link rate as measured. A node far below
  // the median node (each relative to its configured rate) is a straggler, planned at what it
  // did; one measured back up is planned at its configured rate again. `op` names the
  // operation in the log.
  void JudgeLinks(const std::string& op, const std::map<std::string, double>& best);

  NodeReport Report(const std::string& name) const;
  std::string Describe() const;  // "cluster 'c' (N nodes in its config)"

 private:
  // A node whose best link carried less than this fraction of the median node's best (each
  // relative to its configured rate) is a straggler.
  static constexpr double kSlowLink = 0.35;

  std::string cluster_;
  double heartbeat_deadline_;
  std::chrono::steady_clock::duration deaf_{};  // the sum of Deaf's
  std::map<std::string, Node> nodes_;
};

}  // namespace modelcast::coordinator
