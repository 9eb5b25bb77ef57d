// Scale-in (instances released and their GPU copies demoted), and what the serving plane sees of
// the instances and of the scale-outs under way.
#include <algorithm>
#include <chrono>
#include <cmath>

#include <glog/logging.h>

#include "Agent.h"
#include "cluster_state.h"
#include "inventory.h"

namespace modelcast::coordinator {

Result<std::vector<Instance>> ClusterState::ListInstances(const std::string& model) const {
  std::lock_guard lock(mu_);
  if (!models_.count(model)) return NotFound("listInstances: unknown model '" + model + "'");
  return instances_.List(model);
}

Result<std::string> ClusterState::ScaleIn(const ScaleInArgs& req) {
  std::vector<std::pair<std::string, std::string>> release;  // node, rpc address
  std::string id;
  {
    std::lock_guard lock(mu_);
    MC_ASSIGN_OR_RETURN(const Operation* prior,
                        ops_.Repeated(req.request_id, OperationKind::kScaleIn, req.model, "scaleIn"));
    if (prior != nullptr) return prior->status.id;  // repeated: nothing is released twice
    MC_RETURN_IF_ERROR(CheckScaleLocked("scaleIn", req.model, req.replicas));
    std::vector<Instance> local;
    for (const auto& inst : instances_.List(req.model)) {
      if (inst.state == InstanceState::kLocal || inst.state == InstanceState::kPipeline) local.push_back(inst);
    }
    std::vector<std::string> chosen;
    if (!req.nodes.empty()) {
      if (req.nodes.size() != static_cast<size_t>(req.replicas)) {
        return InvalidArgument("scaleIn: " + std::to_string(req.replicas) + " replicas to release, but " +
                               std::to_string(req.nodes.size()) + " nodes named");
      }
      for (const auto& n : req.nodes) {
        const bool found =
            std::any_of(local.begin(), local.end(), [&](const Instance& i) { return i.node == n; });
        if (!found) {
          return InvalidArgument("scaleIn: node '" + n + "' has no serving instance of model '" + req.model + "'");
        }
        if (std::count(req.nodes.begin(), req.nodes.end(), n) > 1)
          return InvalidArgument("scaleIn: node '" + n + "' is named twice");
      }
      chosen = req.nodes;
    } else {
      if (local.size() < static_cast<size_t>(req.replicas)) {
        return ResourceExhausted("scaleIn: " + std::to_string(req.replicas) + " replicas of model '" + req.model +
                                 "' to release, but it has " + std::to_string(local.size()) + " instance(s)");
      }
      // The newest go first: the oldest have been warm the longest.
      std::stable_sort(local.begin(), local.end(),
                       [](const Instance& a, const Instance& b) { return a.since_unix > b.since_unix; });
      for (int32_t i = 0; i < req.replicas; ++i) chosen.push_back(local[static_cast<size_t>(i)].node);
    }
    Operation op;
    ops_.Start(op, epoch_, OperationKind::kScaleIn, req.model, req.replicas);
    id = op.status.id;
    op.request_id = req.request_id;
    op.targets = chosen;
    for (const auto& n : chosen) {
      op.AddNode(n, NodeRole::kRelease, 0);
      op.pending.insert(n);
      release.emplace_back(n, members_.at(n).rpc_address);
    }
    MC_RETURN_IF_ERROR(journal_->Append(OperationTable::StartRecord(op)));
    for (const auto& n : chosen) instances_.Set(req.model, n, InstanceState::kDraining);
    ops_.Add(std::move(op));
    LOG(INFO) << "coordinator: " << id << ": scale-in of '" << req.model << "' by " << chosen.size();
  }
  worker_->Post([this, id, release] { RunScaleIn(id, release); });
  return id;
}

void ClusterState::RunScaleIn(const std::string& id, std::vector<std::pair<std::string, std::string>> nodes) {
  if (closing_) return;  // the journal still says running: the next coordinator does it
  std::string model;
  {
    std::lock_guard lock(mu_);
    model = ops_.Find(id)->status.model;
  }
  // Each released node keeps the model in host memory (warm for the next scale-out, until
  // its keep-alive ends); its GPU copy goes.
  std::map<std::string, Status> results;
  for (const auto& [node, address] : nodes) {
    rpc::MoveRequest req;
    req.header = rpc::MakeHeader(config_.security, "coordinator");
    req.model = model;
    req.tier = "host";
    results[node] = CallAgent(address, 60000, [&](rpc::AgentClient& c) { c.demote(req); });
  }
  std::lock_guard lock(mu_);
  Operation& op = *ops_.Find(id);
  std::string errors;
  for (const auto& [node, st] : results) {
    auto& np = op.progress(node);
    // The instance is released either way: the coordinator no longer counts on it.
    instances_.Remove(model, node);
    op.pending.erase(node);
    if (st.ok()) {
      np.state = NodeState::kReleased;
    } else {
      np.state = NodeState::kFailed;
      np.error = st.message();
      errors += (errors.empty() ? "" : "; ") + ("node '" + node + "': " + st.message());
    }
  }
  Status st = FinishLocked(op, errors.empty() ? OperationState::kSucceeded : OperationState::kFailed,
                           errors.empty() ? "" : "released, but demoting failed: " + errors);
  if (!st.ok()) LOG(ERROR) << "coordinator: " << st.message();
}

ServingView ClusterState::ServingSnapshot(double lookahead_s) const {
  std::lock_guard lock(mu_);
  ServingView v;
  for (const auto& [name, n] : members_.nodes()) v.nodes[name] = {n.rpc_address, n.serving_address, members_.Alive(n)};
  for (const auto& [name, m] : models_) {
    auto& mv = v.models[name];
    mv.manifest = m.manifest;
    if (const auto* by_node = instances_.Of(name)) {
      for (const auto& [node, inst] : *by_node) mv.instances[node] = inst.state;
    }
  }
  for (const auto& [id, op] : ops_.all()) {
    if (!op.running() || op.status.kind != OperationKind::kScaleOut) continue;
    auto mv = v.models.find(op.status.model);
    if (mv == v.models.end()) continue;
    for (const auto& t : op.targets) {
      if (op.lost.count(t)) continue;
      if (op.progress(t).state == NodeState::kComplete) continue;
      auto got = op.received.find(t);
      const auto& held = mv->second.loading[t] = got == op.received.end() ? std::set<int32_t>() : got->second;
      // What it should hold `lookahead_s` from now: the next slices of its plan, as many as it
      // took in over that long so far (nothing before its first slice: no rate yet).
      auto planned = op.planned.find(t);
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - op.start).count();
      if (lookahead_s <= 0 || held.empty() || planned == op.planned.end() || !(secs > 0)) continue;
      const double per_s = static_cast<double>(held.size()) / secs;
      auto n = static_cast<size_t>(std::ceil(per_s * lookahead_s));
      auto& next = mv->second.expected[t];
      const auto& plan = planned->second;
      for (size_t i = op.planned_next.count(t) ? op.planned_next.at(t) : 0; i < plan.size() && n > 0; ++i) {
        if (held.count(plan[i])) continue;
        next.insert(plan[i]);
        --n;
      }
    }
  }
  return v;
}

std::shared_ptr<const model::Manifest> ClusterState::FindManifest(const std::string& model) const {
  std::lock_guard lock(mu_);
  auto it = models_.find(model);
  return it == models_.end() ? nullptr : it->second.manifest;
}

void ClusterState::SetServingWatcher(std::function<void()> watcher) {
  std::lock_guard lock(mu_);
  serving_watcher_ = std::move(watcher);
}

void ClusterState::SetPipeline(const std::string& model, const std::vector<std::string>& nodes,
                               const std::string& pipeline_id,
                               const std::vector<std::tuple<std::string, uint32_t, uint32_t>>& stages) {
  std::lock_guard lock(mu_);
  if (!instances_.SetPipeline(model, nodes, pipeline_id) || pipeline_id.empty()) return;
  // The scale-out under way can serve from now: its first pipeline.
  for (auto& [id, op] : ops_.all()) {
    if (op.status.model != model || !op.running()) continue;
    if (!op.status.first_pipeline_s) {
      op.status.first_pipeline_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - op.start).count();
      op.first_pipeline = stages;
      FirstPipelineLandedLocked(op);
    }
  }
}

}  // namespace modelcast::coordinator
