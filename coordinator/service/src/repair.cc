// Repairing operations: a node lost mid-operation, a fragment that failed, an operation found
// running after a restart. Repairs run on the worker thread, because they call the agents.
#include <algorithm>
#include <map>
#include <thread>

#include <glog/logging.h>

#include "Agent.h"
#include "inventory.h"
#include "modelcast/coord/daemon.h"
#include "modelcast/coord/planner.h"

namespace modelcast::coord {
namespace {

constexpr int kMaxReplans = 3;

// What one agent said when the repair asked.
struct Answer {
  bool reachable = false;
  bool running = false;  // the operation's current fragment still runs there
  rpc::NodeInventory inventory;
  std::string error;
};

}  // namespace

void ClusterState::RepairLocked(Operation& op, const std::string& why) {
  if (op.repairing || op.status.state != rpc::OperationState::RUNNING) return;
  op.repairing = true;
  LOG(WARNING) << "coordinator: " << op.status.id << ": repairing: " << why;
  worker_->Post([this, id = op.status.id] { Repair(id); });
}

void ClusterState::LoseLocked(Operation& op, const std::string& node, const std::string& why) {
  auto& np = op.status.nodes[op.node_index.at(node)];
  np.state = "lost";
  np.__set_error(why);
  op.lost.insert(node);
  op.pending.erase(node);
  if (np.role == "target") RemoveInstanceLocked(op.status.model, node);
}

void ClusterState::CheckLiveness() {
  std::lock_guard lock(mu_);
  const bool grace_over = std::chrono::duration<double>(std::chrono::steady_clock::now() - opened_).count() >
                          config_.heartbeat_deadline;
  for (auto& [id, op] : operations_) {
    if (op.status.state != rpc::OperationState::RUNNING || op.repairing) continue;
    if (op.adopt) {
      // Found running after a restart: reconcile once its nodes have rejoined, or once they
      // had the time to.
      bool all_back = true;
      for (const auto& [node, i] : op.node_index) all_back = all_back && AliveLocked(nodes_.at(node));
      if (all_back || grace_over) RepairLocked(op, "the coordinator restarted mid-operation");
      continue;
    }
    for (const auto& [node, i] : op.node_index) {
      auto& np = op.status.nodes[i];
      if (op.lost.count(node) || AliveLocked(nodes_.at(node))) continue;
      const bool needed = op.pending.count(node) || (np.role == "target" && np.state != "complete");
      if (!needed) continue;
      LoseLocked(op, node, "no heartbeat for " + std::to_string(config_.heartbeat_deadline) + " s");
      RepairLocked(op, "node '" + node + "' was lost mid-operation (no heartbeat within " +
                           std::to_string(config_.heartbeat_deadline) + " s)");
      break;
    }
  }
}

void ClusterState::Repair(const std::string& id) {
  for (;;) {
    if (closing_) return;  // the journal still says running: the next coordinator adopts it
    // 1. Who takes part, and what the agents say (cancelling the current fragments first,
    // unless the operation is being adopted after a restart).
    std::string fragment_id, model;
    bool adopt = false;
    uint32_t nslices = 0;
    std::map<std::string, std::string> participants;  // node -> rpc address; alive ones
    std::set<std::string> dead;
    {
      std::lock_guard lock(mu_);
      auto it = operations_.find(id);
      if (it == operations_.end() || it->second.status.state != rpc::OperationState::RUNNING) return;
      Operation& op = it->second;
      fragment_id = op.FragmentId();
      model = op.status.model;
      adopt = op.adopt;
      nslices = static_cast<uint32_t>(models_.at(model).manifest->slices.size());
      for (const auto& [node, i] : op.node_index) {
        if (op.lost.count(node)) continue;
        const Node& n = nodes_.at(node);
        if (AliveLocked(n)) {
          participants[node] = n.rpc_address;
        } else {
          dead.insert(node);
        }
      }
    }
    // Every participant at once: a slow one (its fragment still stopping) delays the replan by
    // its own time, not by the sum.
    std::map<std::string, Answer> answers;
    for (const auto& [node, address] : participants) answers[node];
    std::vector<std::thread> askers;
    for (const auto& [node, address] : participants) {
      askers.emplace_back([&, &node = node, &address = address, &a = answers.at(node)] {
        const auto header = rpc::MakeHeader(config_.security, "coordinator");
        if (!adopt) {
          // Returns once the fragment has ended (or after the agent's bound), so that what the
          // agent holds no longer changes.
          Status st = CallAgent(address, 10000, [&](rpc::AgentClient& c) { c.cancelOperation(header, fragment_id); });
          if (!st.ok() && st.code() != StatusCode::kNotFound) VLOG(1) << "cancel on " << node << ": " << st.message();
        }
        rpc::AgentStatus status;
        Status st = CallAgent(address, 3000, [&](rpc::AgentClient& c) { c.getStatus(status, header); });
        if (!st.ok()) {
          a.error = st.message();
          return;
        }
        a.reachable = true;
        a.inventory = status.inventory;
        a.running = std::find(status.running_operations.begin(), status.running_operations.end(), fragment_id) !=
                    status.running_operations.end();
      });
    }
    for (auto& t : askers) t.join();
    // 2. Decide, under the lock, against what the operation is now.
    std::vector<Dispatch> dispatches;
    {
      std::lock_guard lock(mu_);
      auto it = operations_.find(id);
      if (it == operations_.end() || it->second.status.state != rpc::OperationState::RUNNING) return;
      Operation& op = it->second;
      if (op.FragmentId() != fragment_id) return;  // someone else moved it on
      auto lose = [&](const std::string& node, const std::string& why) { LoseLocked(op, node, why); };
      for (const auto& node : dead) lose(node, "no heartbeat for " + std::to_string(config_.heartbeat_deadline) + " s");
      bool all_running_or_done = true;
      for (auto& [node, a] : answers) {
        if (!a.reachable) {
          lose(node, "its agent does not answer: " + a.error);
          all_running_or_done = false;
          continue;
        }
        auto& np = op.status.nodes[op.node_index[node]];
        if (np.role == "target" && CompleteTier(a.inventory, model, nslices) != Tier::kNone) {
          np.state = "complete";
          np.slices_received = np.slices_total;
          np.__isset.error = false;
          op.pending.erase(node);
          SetInstanceLocked(model, node, rpc::InstanceState::LOCAL, /*journal=*/false);
        } else if (a.running) {
          op.pending.insert(node);
        } else if (np.role == "target") {
          all_running_or_done = false;  // stopped short of the whole model
          np.slices_received = static_cast<int32_t>(Held(a.inventory, model, nslices).Count());
        } else {
          op.pending.erase(node);  // a source whose fragment ended
        }
      }
      if (adopt) {
        op.adopt = false;
        if (all_running_or_done && dead.empty()) {
          // Nothing is missing: follow the fragments that still run.
          LOG(INFO) << "coordinator: " << id << ": adopted after the restart; " << op.pending.size()
                    << " node(s) still running";
          op.repairing = false;
          Status st = SettleLocked(op);
          if (!st.ok()) LOG(ERROR) << "coordinator: " << st.message();
          return;
        }
        // Something is missing: cancel what runs and replan, as for a failure.
        op.pending.clear();
        continue;
      }
      op.pending.clear();
      // 3. Stand-ins for lost targets, from the spare live nodes.
      int live_targets = 0;
      std::set<std::string> involved(op.sources.begin(), op.sources.end());
      for (const auto& t : op.targets) {
        involved.insert(t);
        live_targets += !op.lost.count(t);
      }
      for (const auto& l : op.lost) involved.insert(l);
      if (live_targets < op.status.replicas) {
        auto spare = RankTargetsLocked(model, nslices, involved, {});
        for (size_t i = 0; i < spare.size() && live_targets < op.status.replicas; ++i, ++live_targets) {
          LOG(INFO) << "coordinator: " << id << ": node '" << spare[i] << "' stands in for a lost target";
          op.targets.push_back(spare[i]);
        }
      }
      bool incomplete = false;
      for (const auto& t : op.targets) {
        if (!op.lost.count(t) && op.node_index.count(t) && op.status.nodes[op.node_index[t]].state != "complete")
          incomplete = true;
        if (!op.node_index.count(t)) incomplete = true;  // a stand-in
      }
      if (!incomplete) {
        op.repairing = false;
        Status st = SettleLocked(op);
        if (!st.ok()) LOG(ERROR) << "coordinator: " << st.message();
        return;
      }
      if (op.status.replans >= kMaxReplans) {
        op.repairing = false;
        Status st = FinishLocked(op, rpc::OperationState::FAILED,
                                 "gave up after " + std::to_string(op.status.replans) + " replans");
        if (!st.ok()) LOG(ERROR) << "coordinator: " << st.message();
        return;
      }
      // 4. Replan from what the survivors hold: their answers are newer than their last
      // heartbeats (a node may have evicted the model since), so the plan takes them.
      for (const auto& [node, a] : answers) {
        if (a.reachable) nodes_.at(node).inventory = a.inventory;
      }
      const auto& manifest = *models_.at(model).manifest;
      PlanRequest pr = PlanRequestLocked(op, manifest);
      std::vector<SliceSet> holdings;
      std::vector<int32_t> failed;
      for (size_t i = 0; i < pr.nodes.size(); ++i) {
        const std::string& n = pr.nodes[i].name;
        const bool source = i < op.sources.size();
        if (op.lost.count(n)) {
          failed.push_back(static_cast<int32_t>(i));
          holdings.emplace_back(nslices);
        } else if (source) {
          holdings.emplace_back(nslices, true);
        } else if (answers.count(n)) {
          holdings.push_back(Held(answers[n].inventory, model, nslices));
        } else {
          holdings.push_back(Held(nodes_.at(n).inventory, model, nslices));  // a stand-in
        }
      }
      auto plan = Replan(pr, holdings, failed);
      std::string error;
      if (!plan.ok()) {
        error = "replanning: " + plan.status().message();
      } else if (!plan->lost_slices.empty()) {
        error = std::to_string(plan->lost_slices.size()) + " slice(s) (first " +
                std::to_string(plan->lost_slices.front()) + ") are held by no surviving node; lost:";
        for (const auto& n : op.lost) {
          const auto& np = op.status.nodes[op.node_index.at(n)];
          error += " " + n + " (lost" + (np.__isset.error ? ": " + np.error : "") + ")";
        }
      }
      if (error.empty()) {
        op.attempt++;
        op.status.replans++;
        op.channel = NextChannelLocked();
        auto d = FragmentsLocked(op, *plan);
        if (!d.ok()) error = d.status().message();
        if (error.empty()) dispatches = std::move(*d);
      }
      op.repairing = false;
      if (!error.empty()) {
        Status st = FinishLocked(op, rpc::OperationState::FAILED, error);
        if (!st.ok()) LOG(ERROR) << "coordinator: " << st.message();
        return;
      }
      std::vector<std::string> lost(op.lost.begin(), op.lost.end());
      Status st = journal_->Append({{"op", "replan"},
                                    {"id", id},
                                    {"attempt", op.attempt},
                                    {"channel", op.channel},
                                    {"targets", op.targets},
                                    {"lost", lost}});
      if (!st.ok()) LOG(ERROR) << "coordinator: " << st.message();
      for (const auto& t : op.targets) {
        if (!op.lost.count(t) && op.status.nodes[op.node_index[t]].state != "complete")
          SetInstanceLocked(model, t, rpc::InstanceState::LOADING);
      }
      LOG(INFO) << "coordinator: " << id << ": replan " << op.status.replans << " (" << op.FragmentId() << "): "
                << dispatches.size() << " fragment(s), " << lost.size() << " node(s) lost";
      if (dispatches.empty()) {
        Status s2 = SettleLocked(op);
        if (!s2.ok()) LOG(ERROR) << "coordinator: " << s2.message();
        return;
      }
    }
    SendFragments(id, std::move(dispatches));
    return;
  }
}

}  // namespace modelcast::coord
