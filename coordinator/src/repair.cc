// Repairing operations: a node lost mid-operation, a fragment that failed, an operation found
// running after a restart. Repairs run on the worker thread, because they call the agents.
#include <algorithm>
#include <map>
#include <set>
#include <thread>

#include <glog/logging.h>

#include "Agent.h"
#include "inventory.h"
#include "cluster_state.h"
#include "modelcast/planner/planner.h"

namespace modelcast::coordinator {

using planner::Replan;
using planner::SliceSet;
namespace {

constexpr int kMaxReplans = 3;

}  // namespace

// One round of a repair: what the survey found, and what the participants answered.
struct ClusterState::RepairRound {
  // What one agent said when the repair asked.
  struct Answer {
    bool reachable = false;
    bool running = false;  // the operation's current fragment still runs there
    rpc::NodeInventory inventory;
    std::string error;
  };
  std::string id, fragment_id, model;
  bool adopt = false;  // the operation was found running after a restart
  uint32_t nslices = 0;
  std::map<std::string, std::string> participants;  // node -> rpc address; the live ones
  std::set<std::string> dead;
  std::map<std::string, Answer> answers;            // one per participant
};

void ClusterState::RepairLocked(Operation& op, const std::string& why) {
  if (op.repairing || !op.running()) return;
  op.repairing = true;
  LOG(WARNING) << "coordinator: " << op.status.id << ": repairing: " << why;
  worker_->Post([this, id = op.status.id] { Repair(id); });
}

void ClusterState::LoseLocked(Operation& op, const std::string& node, const std::string& why) {
  auto& np = op.progress(node);
  np.state = NodeState::kLost;
  np.error = why;
  op.lost.insert(node);
  op.pending.erase(node);
  if (np.role == NodeRole::kTarget) instances_.Remove(op.status.model, node);
}

void ClusterState::CheckLiveness() {
  std::lock_guard lock(mu_);
  const bool grace_over = std::chrono::duration<double>(std::chrono::steady_clock::now() - opened_).count() >
                          config_.heartbeat_deadline;
  for (auto& [id, op] : ops_.all()) {
    if (!op.running() || op.repairing) continue;
    if (op.adopt) {
      // Found running after a restart: reconcile once its nodes have rejoined, or once they
      // had the time to.
      bool all_back = true;
      for (const auto& [node, i] : op.node_index) all_back = all_back && members_.Alive(node);
      if (all_back || grace_over) RepairLocked(op, "the coordinator restarted mid-operation");
      continue;
    }
    for (const auto& [node, i] : op.node_index) {
      auto& np = op.status.nodes[i];
      if (op.lost.count(node) || members_.Alive(node)) continue;
      const bool needed = op.pending.count(node) || (np.role == NodeRole::kTarget && np.state != NodeState::kComplete);
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
    RepairRound r;
    {
      std::lock_guard lock(mu_);
      if (!SurveyLocked(id, r)) return;
    }
    AskParticipants(r);
    std::vector<Dispatch> dispatches;
    {
      std::lock_guard lock(mu_);
      Operation* found = ops_.Find(id);
      if (found == nullptr || !found->running()) return;
      Operation& op = *found;
      if (op.FragmentId() != r.fragment_id) return;  // someone else moved it on
      const bool all_running_or_done = TakeAnswersLocked(op, r);
      if (r.adopt) {
        op.adopt = false;
        if (all_running_or_done && r.dead.empty()) {
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
      if (!StandInsLocked(op, r)) {
        op.repairing = false;
        Status st = SettleLocked(op);
        if (!st.ok()) LOG(ERROR) << "coordinator: " << st.message();
        return;
      }
      if (op.status.replans >= kMaxReplans) {
        op.repairing = false;
        Status st = FinishLocked(op, OperationState::kFailed,
                                 "gave up after " + std::to_string(op.status.replans) + " replans");
        if (!st.ok()) LOG(ERROR) << "coordinator: " << st.message();
        return;
      }
      auto d = ReplanLocked(op, r);
      op.repairing = false;
      if (!d.ok()) {
        Status st = FinishLocked(op, OperationState::kFailed, d.status().message());
        if (!st.ok()) LOG(ERROR) << "coordinator: " << st.message();
        return;
      }
      if (d->empty()) {
        Status st = SettleLocked(op);
        if (!st.ok()) LOG(ERROR) << "coordinator: " << st.message();
        return;
      }
      dispatches = std::move(*d);
    }
    SendFragments(id, std::move(dispatches));
    return;
  }
}

// 1. Who takes part: the operation's nodes not yet lost, alive or not. False when the operation
// is no longer running.
bool ClusterState::SurveyLocked(const std::string& id, RepairRound& r) {
  const Operation* found = ops_.Find(id);
  if (found == nullptr || !found->running()) return false;
  const Operation& op = *found;
  r.id = id;
  r.fragment_id = op.FragmentId();
  r.model = op.status.model;
  r.adopt = op.adopt;
  r.nslices = static_cast<uint32_t>(SlicesLocked(r.model));
  for (const auto& [node, i] : op.node_index) {
    if (op.lost.count(node)) continue;
    const auto& n = members_.at(node);
    if (members_.Alive(n)) {
      r.participants[node] = n.rpc_address;
    } else {
      r.dead.insert(node);
    }
  }
  return true;
}

// 2. What the agents say, cancelling the current fragments first (unless the operation is being
// adopted after a restart). Every participant at once: a slow one (its fragment still stopping)
// delays the replan by its own time, not by the sum.
void ClusterState::AskParticipants(RepairRound& r) {
  for (const auto& [node, address] : r.participants) r.answers[node];
  std::vector<std::thread> askers;
  for (const auto& [node, address] : r.participants) {
    askers.emplace_back([&, &node = node, &address = address, &a = r.answers.at(node)] {
      const auto header = rpc::MakeHeader(config_.security, "coordinator");
      if (!r.adopt) {
        // Returns once the fragment has ended (or after the agent's bound), so that what the
        // agent holds no longer changes.
        Status st =
            CallAgent(address, 10000, [&](rpc::AgentClient& c) { c.cancelOperation(header, r.fragment_id); });
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
      a.running = std::find(status.running_operations.begin(), status.running_operations.end(), r.fragment_id) !=
                  status.running_operations.end();
    });
  }
  for (auto& t : askers) t.join();
}

// 3. The answers against what the operation is now: the dead and the unreachable are lost, a
// target holding the whole model is complete, a fragment still running stays pending. False when
// some node stopped short (unreachable, or a target without the whole model).
bool ClusterState::TakeAnswersLocked(Operation& op, RepairRound& r) {
  for (const auto& node : r.dead)
    LoseLocked(op, node, "no heartbeat for " + std::to_string(config_.heartbeat_deadline) + " s");
  bool all_running_or_done = true;
  for (auto& [node, a] : r.answers) {
    if (!a.reachable) {
      LoseLocked(op, node, "its agent does not answer: " + a.error);
      all_running_or_done = false;
      continue;
    }
    auto& np = op.progress(node);
    if (auto ended = op.ended_while_adopting.find(node); r.adopt && ended != op.ended_while_adopting.end()) {
      // Its fragment's end came after its answer: a node that answered "running" is not
      // waited for again (its report will not come twice), and one that failed is replanned.
      if (ended->second) {
        op.pending.erase(node);
      } else {
        all_running_or_done = false;
      }
      continue;
    }
    if (np.role == NodeRole::kTarget && CompleteTier(a.inventory, r.model, r.nslices) != Tier::kNone) {
      np.state = NodeState::kComplete;
      np.slices_received = np.slices_total;
      np.error.reset();
      op.pending.erase(node);
      instances_.Set(r.model, node, InstanceState::kLocal, /*journal=*/false);
    } else if (a.running) {
      op.pending.insert(node);
    } else if (np.role == NodeRole::kTarget) {
      all_running_or_done = false;  // stopped short of the whole model
      np.slices_received = static_cast<int32_t>(Held(a.inventory, r.model, r.nslices).Count());
    } else {
      op.pending.erase(node);  // a source whose fragment ended
    }
  }
  if (r.adopt) op.ended_while_adopting.clear();
  return all_running_or_done;
}

// 4. Stand-ins for lost targets, from the spare live nodes. False when every target (stand-ins
// counted) is complete: nothing is left to move.
bool ClusterState::StandInsLocked(Operation& op, const RepairRound& r) {
  int live_targets = 0;
  std::set<std::string> involved(op.sources.begin(), op.sources.end());
  for (const auto& t : op.targets) {
    involved.insert(t);
    live_targets += !op.lost.count(t);
  }
  for (const auto& l : op.lost) involved.insert(l);
  if (live_targets < op.status.replicas) {
    auto spare = RankTargetsLocked(r.model, r.nslices, involved, {});
    for (size_t i = 0; i < spare.size() && live_targets < op.status.replicas; ++i, ++live_targets) {
      LOG(INFO) << "coordinator: " << r.id << ": node '" << spare[i] << "' stands in for a lost target";
      op.targets.push_back(spare[i]);
    }
  }
  for (const auto& t : op.targets) {
    if (!op.node_index.count(t)) return true;  // a stand-in
    if (!op.lost.count(t) && op.progress(t).state != NodeState::kComplete) return true;
  }
  return false;
}

// 5. A new plan from what the survivors hold (their answers are newer than their last heartbeats:
// a node may have evicted the model since), journaled, with the fragments to send. An error when
// no plan covers the model any more.
Result<std::vector<ClusterState::Dispatch>> ClusterState::ReplanLocked(Operation& op, RepairRound& r) {
  for (const auto& [node, a] : r.answers) {
    if (a.reachable) members_.SetInventory(node, a.inventory);
  }
  const auto& manifest = *models_.at(r.model).manifest;
  PlanRequest pr = PlanRequestLocked(op, manifest);
  std::vector<SliceSet> holdings;
  std::vector<int32_t> failed;
  for (size_t i = 0; i < pr.nodes.size(); ++i) {
    const std::string& n = pr.nodes[i].name;
    const bool source = i < op.sources.size();
    if (op.lost.count(n)) {
      failed.push_back(static_cast<int32_t>(i));
      holdings.emplace_back(r.nslices);
    } else if (source) {
      holdings.emplace_back(r.nslices, true);
    } else if (r.answers.count(n)) {
      holdings.push_back(Held(r.answers[n].inventory, r.model, r.nslices));
    } else {
      holdings.push_back(Held(members_.at(n).inventory, r.model, r.nslices));  // a stand-in
    }
  }
  auto plan = Replan(pr, holdings, failed);
  if (!plan.ok()) return Internal("replanning: " + plan.status().message());
  if (!plan->lost_slices.empty()) {
    std::string error = std::to_string(plan->lost_slices.size()) + " slice(s) (first " +
                        std::to_string(plan->lost_slices.front()) + ") are held by no surviving node; lost:";
    for (const auto& n : op.lost) {
      const auto& np = op.progress(n);
      error += " " + n + " (" + InSentence(np.state) + (np.error ? ": " + *np.error : "") + ")";
    }
    return FailedPrecondition(error);
  }
  op.attempt++;
  op.status.replans++;
  op.channel = ops_.NextChannel();
  MC_ASSIGN_OR_RETURN(std::vector<Dispatch> dispatches, FragmentsLocked(op, *plan));
  Status st = journal_->Append(OperationTable::ReplanRecord(op));
  if (!st.ok()) LOG(ERROR) << "coordinator: " << st.message();
  for (const auto& t : op.targets) {
    if (!op.lost.count(t) && op.progress(t).state != NodeState::kComplete) {
      instances_.Set(r.model, t, InstanceState::kLoading);
    }
  }
  LOG(INFO) << "coordinator: " << op.status.id << ": replan " << op.status.replans << " (" << op.FragmentId()
            << "): " << dispatches.size() << " fragment(s), " << op.lost.size() << " node(s) lost";
  return dispatches;
}

}  // namespace modelcast::coordinator
