// Instances (where each model is loaded, as the coordinator placed it) and scale-in.
#include <algorithm>

#include <glog/logging.h>

#include "Agent.h"
#include "inventory.h"
#include "modelcast/coordinator/daemon.h"

namespace modelcast::coordinator {

void ClusterState::SetInstanceLocked(const std::string& model, const std::string& node,
                                     rpc::InstanceState::type state, bool journal) {
  auto& inst = instances_[model][node];
  if (inst.node == node && inst.state == state) return;
  inst.model = model;
  inst.node = node;
  inst.state = state;
  inst.since_unix = UnixNow();
  if (state != rpc::InstanceState::PIPELINE) inst.__isset.pipeline_id = false;
  PokeServing();
  // Loading instances are not journaled: after a restart they come back from their operation.
  if (state == rpc::InstanceState::LOADING || !journal) return;
  Status st = journal_->Append({{"op", "instance"},
                                {"model", model},
                                {"node", node},
                                {"state", static_cast<int>(state)},
                                {"since", inst.since_unix}});
  if (!st.ok()) LOG(ERROR) << "coordinator: journaling an instance: " << st.message();
}

void ClusterState::RemoveInstanceLocked(const std::string& model, const std::string& node) {
  auto m = instances_.find(model);
  if (m == instances_.end() || !m->second.count(node)) return;
  const bool journaled = m->second.at(node).state != rpc::InstanceState::LOADING;
  m->second.erase(node);
  if (m->second.empty()) instances_.erase(m);
  PokeServing();
  if (!journaled) return;
  Status st = journal_->Append({{"op", "instance_removed"}, {"model", model}, {"node", node}});
  if (!st.ok()) LOG(ERROR) << "coordinator: journaling an instance: " << st.message();
}

Result<std::vector<rpc::Instance>> ClusterState::ListInstances(const std::string& model) const {
  std::lock_guard lock(mu_);
  if (!models_.count(model)) return NotFound("listInstances: unknown model '" + model + "'");
  std::vector<rpc::Instance> out;
  auto it = instances_.find(model);
  if (it != instances_.end()) {
    for (const auto& [node, inst] : it->second) out.push_back(inst);
  }
  return out;
}

Result<std::string> ClusterState::ScaleIn(const rpc::ScaleInRequest& req) {
  std::vector<std::pair<std::string, std::string>> release;  // node, rpc address
  std::string id;
  {
    std::lock_guard lock(mu_);
    MC_ASSIGN_OR_RETURN(const Operation* prior,
                        RepeatedLocked(req.header, rpc::OperationKind::SCALE_IN, req.model, "scaleIn"));
    if (prior != nullptr) return prior->status.id;  // repeated: nothing is released twice
    MC_RETURN_IF_ERROR(CheckScaleLocked("scaleIn", req.model, req.replicas));
    std::vector<rpc::Instance> local;
    if (auto it = instances_.find(req.model); it != instances_.end()) {
      for (const auto& [node, inst] : it->second) {
        if (inst.state == rpc::InstanceState::LOCAL || inst.state == rpc::InstanceState::PIPELINE)
          local.push_back(inst);
      }
    }
    std::vector<std::string> chosen;
    if (req.__isset.nodes && !req.nodes.empty()) {
      if (req.nodes.size() != static_cast<size_t>(req.replicas)) {
        return InvalidArgument("scaleIn: " + std::to_string(req.replicas) + " replicas to release, but " +
                               std::to_string(req.nodes.size()) + " nodes named");
      }
      for (const auto& n : req.nodes) {
        const bool found =
            std::any_of(local.begin(), local.end(), [&](const rpc::Instance& i) { return i.node == n; });
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
                       [](const rpc::Instance& a, const rpc::Instance& b) { return a.since_unix > b.since_unix; });
      for (int32_t i = 0; i < req.replicas; ++i) chosen.push_back(local[static_cast<size_t>(i)].node);
    }
    Operation op;
    id = StartOperationLocked(op, rpc::OperationKind::SCALE_IN, req.model, req.replicas);
    if (req.header.__isset.request_id) op.request_id = req.header.request_id;
    op.targets = chosen;
    for (const auto& n : chosen) {
      AddProgressEntry(op, n, rpc::NodeRole::RELEASE, 0);
      op.pending.insert(n);
      release.emplace_back(n, nodes_.at(n).rpc_address);
    }
    MC_RETURN_IF_ERROR(journal_->Append(OperationRecord(op)));
    for (const auto& n : chosen) SetInstanceLocked(req.model, n, rpc::InstanceState::DRAINING);
    operations_.emplace(id, std::move(op));
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
    model = operations_.at(id).status.model;
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
  Operation& op = operations_.at(id);
  std::string errors;
  for (const auto& [node, st] : results) {
    auto& np = op.status.nodes[op.node_index[node]];
    // The instance is released either way: the coordinator no longer counts on it.
    RemoveInstanceLocked(model, node);
    op.pending.erase(node);
    if (st.ok()) {
      np.state = rpc::NodeState::RELEASED;
    } else {
      np.state = rpc::NodeState::FAILED;
      np.__set_error(st.message());
      errors += (errors.empty() ? "" : "; ") + ("node '" + node + "': " + st.message());
    }
  }
  Status st = FinishLocked(op, errors.empty() ? rpc::OperationState::SUCCEEDED : rpc::OperationState::FAILED,
                           errors.empty() ? "" : "released, but demoting failed: " + errors);
  if (!st.ok()) LOG(ERROR) << "coordinator: " << st.message();
}

ServingView ClusterState::ServingSnapshot() const {
  std::lock_guard lock(mu_);
  ServingView v;
  for (const auto& [name, n] : nodes_) v.nodes[name] = {n.rpc_address, n.serving_address, AliveLocked(n)};
  for (const auto& [name, m] : models_) {
    auto& mv = v.models[name];
    mv.manifest = m.manifest;
    auto it = instances_.find(name);
    if (it != instances_.end()) {
      for (const auto& [node, inst] : it->second) mv.instances[node] = inst.state;
    }
  }
  for (const auto& [id, op] : operations_) {
    if (op.status.state != rpc::OperationState::RUNNING || op.status.kind != rpc::OperationKind::SCALE_OUT) continue;
    auto mv = v.models.find(op.status.model);
    if (mv == v.models.end()) continue;
    for (const auto& t : op.targets) {
      if (op.lost.count(t)) continue;
      const auto& np = op.status.nodes[op.node_index.at(t)];
      if (np.state == rpc::NodeState::COMPLETE) continue;
      auto got = op.received.find(t);
      mv->second.loading[t] = got == op.received.end() ? std::set<int32_t>() : got->second;
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
                               const std::string& pipeline_id) {
  std::lock_guard lock(mu_);
  auto m = instances_.find(model);
  if (m == instances_.end()) return;
  for (const auto& n : nodes) {
    auto it = m->second.find(n);
    if (it == m->second.end()) continue;
    rpc::Instance& inst = it->second;
    if (!pipeline_id.empty() && inst.state == rpc::InstanceState::LOADING) {
      inst.state = rpc::InstanceState::PIPELINE;
      inst.__set_pipeline_id(pipeline_id);
      inst.since_unix = UnixNow();
    } else if (pipeline_id.empty() && inst.state == rpc::InstanceState::PIPELINE) {
      inst.state = rpc::InstanceState::LOADING;
      inst.__isset.pipeline_id = false;
    }
  }
  if (pipeline_id.empty()) return;
  // The scale-out under way can serve from now: its first pipeline.
  for (auto& [id, op] : operations_) {
    if (op.status.model != model || op.status.state != rpc::OperationState::RUNNING) continue;
    if (!op.status.__isset.first_pipeline_s) {
      op.status.__set_first_pipeline_s(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - op.start).count());
    }
  }
}

}  // namespace modelcast::coordinator
