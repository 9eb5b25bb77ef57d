// The agent's side of the coordinator's Membership service: one connection (to whichever of
// the configured coordinators listens: the leader), shared under a
// lock and made again when it breaks; joining (again whenever the coordinator asks), heartbeats
// carrying the inventory, and fragments' progress reports.
//
// Threads: Start runs the join-and-heartbeat loop on a thread of its own until Stop; Report and
// Header may be called from any thread (the fragments' reporters) and serialize on the
// connection's lock.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "Membership.h"
#include "modelcast/agent/agent.h"
#include "modelcast/rpc/server.h"

namespace modelcast::agent {

class CoordinatorLink {
 public:
  // `inventory` is called for every join and heartbeat, from the loop's thread.
  CoordinatorLink(const AgentConfig& config, std::function<rpc::NodeInventory()> inventory);
  ~CoordinatorLink();

  // Joins with `identity` (its addresses and version; header, node and inventory are filled
  // here), then heartbeats at the interval the coordinator gives, rejoining when it asks.
  void Start(rpc::JoinRequest identity);
  // Called (from the loop's thread) with the coordinator's epoch each time the agent has
  // joined. Set before Start.
  void SetJoinedHook(std::function<void(int64_t epoch)> hook) { joined_hook_ = std::move(hook); }
  // Ends the loop and joins its thread. Idempotent.
  void Stop();

  // Sends `report` (its header and node filled here); a failure is logged, not returned: the
  // fragment's end is also learnt by the coordinator's repair asking the agent.
  void Report(rpc::ProgressReport report);
  rpc::RequestHeader Header() const;

 private:
  // Runs `call` on the Membership client, reconnecting once when the connection broke.
  Status WithCoordinator(const std::function<void(rpc::MembershipClient&)>& call);
  Status Join();
  void Loop();

  const AgentConfig& config_;
  const std::function<rpc::NodeInventory()> inventory_;
  rpc::JoinRequest identity_;
  std::function<void(int64_t)> joined_hook_;

  std::mutex mu_;  // the loop's state
  std::condition_variable cv_;
  bool stopping_ = false;
  int64_t epoch_ = 0;
  int heartbeat_ms_ = 1000;
  std::thread loop_;

  std::mutex conn_mu_;  // the connection
  std::unique_ptr<rpc::RpcConnection> conn_;
  std::unique_ptr<rpc::MembershipClient> client_;
  size_t next_coordinator_ = 0;  // of config_.coordinators: the one that answered last
};

}  // namespace modelcast::agent
