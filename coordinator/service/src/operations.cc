// Scale-out operations: choosing sources and targets, planning, dispatching fragments to the
// agents, and tracking their progress to the end.
#include <thrift/protocol/TMultiplexedProtocol.h>

#include <algorithm>

#include <glog/logging.h>

#include "Agent.h"
#include "modelcast/coord/daemon.h"
#include "modelcast/coord/planner.h"
#include "modelcast/fabric/executor.h"
#include "modelcast/rpc/errors.h"

namespace modelcast::coord {
namespace {

double UnixNow() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

uint32_t Count(const std::vector<rpc::SliceRun>& runs) {
  uint32_t n = 0;
  for (const auto& r : runs) n += static_cast<uint32_t>(r.count);
  return n;
}

// The fastest tier of `inventory` holding every slice of `model`.
Tier CompleteTier(const rpc::NodeInventory& inventory, const std::string& model, uint32_t slices) {
  for (const auto& h : inventory.models) {
    if (h.model != model) continue;
    if (Count(h.gpu) == slices) return Tier::kGpu;
    if (Count(h.host) == slices) return Tier::kHost;
    if (Count(h.ssd) == slices) return Tier::kSsd;
  }
  return Tier::kNone;
}

Result<std::pair<std::string, int>> SplitAddress(const std::string& address) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) return InvalidArgument("address '" + address + "' has no port");
  return std::make_pair(address.substr(0, colon), std::stoi(address.substr(colon + 1)));
}

}  // namespace

Status ClusterState::CheckScale(const char* method, const std::string& model, int32_t replicas) const {
  std::lock_guard lock(mu_);
  return CheckScaleLocked(method, model, replicas);
}

Status ClusterState::CheckScaleLocked(const char* method, const std::string& model, int32_t replicas) const {
  if (!models_.count(model)) return NotFound(std::string(method) + ": unknown model '" + model + "'");
  if (replicas < 1) {
    return InvalidArgument(std::string(method) + ": replicas must be at least 1, got " + std::to_string(replicas));
  }
  if (static_cast<size_t>(replicas) > nodes_.size()) {
    return ResourceExhausted(std::string(method) + ": " + std::to_string(replicas) + " replicas, but cluster '" +
                             cluster_.name + "' has " + std::to_string(nodes_.size()) + " nodes");
  }
  return Status::Ok();
}

Result<rpc::ScaleOutResponse> ClusterState::ScaleOut(const rpc::ScaleOutRequest& req) {
  const std::string algorithm =
      req.__isset.options && req.options.__isset.algorithm ? req.options.algorithm : "lambdapipe";
  if (FindAlgorithm(algorithm) == nullptr) return InvalidArgument("scaleOut: unknown algorithm '" + algorithm + "'");
  const double deadline = req.__isset.options && req.options.__isset.deadline_s ? req.options.deadline_s : 600;
  if (!(deadline > 0)) return InvalidArgument("scaleOut: deadline_s must be positive");
  struct Dispatch {
    std::string node, rpc_address;
    rpc::RunFragmentRequest fragment;
  };
  std::vector<Dispatch> dispatches;
  rpc::ScaleOutResponse resp;
  std::string id;
  {
    std::lock_guard lock(mu_);
    MC_RETURN_IF_ERROR(CheckScaleLocked("scaleOut", req.model, req.replicas));
    auto mit = models_.find(req.model);
    const auto& manifest = *mit->second.manifest;
    const uint32_t nslices = static_cast<uint32_t>(manifest.slices.size());
    for (const auto& [name, op] : operations_) {
      if (op.status.model == req.model && op.status.state == rpc::OperationState::RUNNING) {
        return FailedPrecondition("scaleOut: model '" + req.model + "' already has operation " + name + " running");
      }
    }
    // Sources: alive nodes with a complete copy (an SSD copy is loaded into host memory by
    // the agent before it sends). Targets: alive nodes without one, in name order.
    std::set<std::string> allowed;
    if (req.__isset.options && req.options.__isset.targets)
      allowed.insert(req.options.targets.begin(), req.options.targets.end());
    std::vector<std::string> sources, targets;
    for (const auto& [name, n] : nodes_) {
      if (!AliveLocked(n)) continue;
      if (CompleteTier(n.inventory, req.model, nslices) != Tier::kNone) {
        sources.push_back(name);
      } else if (allowed.empty() || allowed.count(name)) {
        targets.push_back(name);
      }
    }
    if (sources.empty())
      return FailedPrecondition("scaleOut: no live node holds a whole copy of model '" + req.model + "'");
    if (targets.size() < static_cast<size_t>(req.replicas)) {
      return ResourceExhausted("scaleOut: " + std::to_string(req.replicas) + " new replicas of model '" + req.model +
                               "' asked, but only " + std::to_string(targets.size()) +
                               " live node(s) can take one (nodes holding it already are sources)");
    }
    targets.resize(static_cast<size_t>(req.replicas));
    PlanRequest pr;
    pr.model = ModelShape::FromManifest(manifest);
    for (const auto& s : sources) {
      const auto& cfg = nodes_.at(s).config;
      pr.nodes.push_back({s, cfg.nic, cfg.pcie, Tier::kHost});
      pr.sources.push_back(static_cast<int32_t>(pr.nodes.size() - 1));
    }
    for (const auto& t : targets) {
      pr.nodes.push_back({t, nodes_.at(t).config.nic, 0, Tier::kNone});
      pr.targets.push_back(static_cast<int32_t>(pr.nodes.size() - 1));
    }
    MC_ASSIGN_OR_RETURN(Plan plan, MakePlan(pr, algorithm));
    id = "op-" + std::to_string(epoch_) + "-" + std::to_string(next_operation_++);
    resp.operation_id = id;
    resp.sources = sources;
    resp.targets = targets;
    if (req.__isset.options && req.options.__isset.dry_run && req.options.dry_run) {
      resp.__set_plan_json(plan.ToJson().dump());
      return resp;
    }
    Operation op;
    op.start = std::chrono::steady_clock::now();
    op.status.id = id;
    op.status.kind = rpc::OperationKind::SCALE_OUT;
    op.status.model = req.model;
    op.status.replicas = req.replicas;
    op.status.state = rpc::OperationState::RUNNING;
    op.status.created_unix = UnixNow();
    op.status.__set_started_unix(op.status.created_unix);
    op.status.replans = 0;
    std::vector<rpc::PeerAddress> peers;
    for (const auto& n : plan.node_names) {
      rpc::PeerAddress p;
      p.node = n;
      p.fabric_address = nodes_.at(n).fabric_address;
      peers.push_back(p);
    }
    for (const auto& n : plan.node_names) {
      MC_ASSIGN_OR_RETURN(auto frag, fabric::PlanFragment::FromPlan(plan, n));
      const bool is_target = std::find(targets.begin(), targets.end(), n) != targets.end();
      rpc::NodeProgress np;
      np.node = n;
      np.role = is_target ? "target" : "source";
      np.slices_total = is_target ? static_cast<int32_t>(nslices) : 0;
      np.slices_received = 0;
      np.bytes_received = 0;
      np.rate_bytes_per_s = 0;
      np.state = "waiting";
      op.node_index[n] = op.status.nodes.size();
      op.status.nodes.push_back(np);
      Dispatch d;
      d.node = n;
      d.rpc_address = nodes_.at(n).rpc_address;
      auto& f = d.fragment;
      f.operation_id = id;
      f.model = req.model;
      f.manifest_json = mit->second.manifest_json;
      auto steps = [](const std::vector<fabric::FragmentStep>& in) {
        std::vector<rpc::FragmentStep> out;
        for (const auto& x : in) {
          rpc::FragmentStep st;
          st.tick = static_cast<int32_t>(x.tick);
          st.peer = x.peer;
          st.slice = static_cast<int32_t>(x.slice);
          out.push_back(st);
        }
        return out;
      };
      f.sends = steps(frag.sends);
      f.receives = steps(frag.receives);
      const int32_t me = static_cast<int32_t>(op.node_index[n]);
      for (const auto& t : plan.transfers) {
        if (t.local() && t.dst == me) f.local_loads.push_back(static_cast<int32_t>(t.slice));
      }
      f.peers = peers;
      f.deadline_s = deadline;
      f.method = "auto";
      op.pending.insert(n);
      dispatches.push_back(std::move(d));
    }
    MC_RETURN_IF_ERROR(journal_->Append({{"op", "operation"},
                                         {"id", id},
                                         {"model", req.model},
                                         {"replicas", req.replicas},
                                         {"sources", sources},
                                         {"targets", targets},
                                         {"created", op.status.created_unix}}));
    operations_.emplace(id, std::move(op));
    LOG(INFO) << "coordinator: " << id << ": scale-out of '" << req.model << "' to " << targets.size()
              << " node(s) from " << sources.size() << " source(s), " << plan.num_ticks << " ticks";
  }
  // Dispatch outside the lock: every node gets its fragment; one refusal fails the operation.
  for (auto& d : dispatches) {
    d.fragment.header = rpc::MakeHeader(config_.security, "coordinator");
    Status st = [&]() -> Status {
      MC_ASSIGN_OR_RETURN(auto addr, SplitAddress(d.rpc_address));
      MC_ASSIGN_OR_RETURN(auto conn, rpc::Connect(addr.first, addr.second, config_.security, 10000));
      rpc::AgentClient agent(conn->protocol);
      return rpc::CallStatus([&] { agent.runFragment(d.fragment); });
    }();
    if (!st.ok()) {
      std::lock_guard lock(mu_);
      auto& op = operations_.at(id);
      const std::string error = "dispatching to node '" + d.node + "': " + st.message();
      op.status.nodes[op.node_index[d.node]].state = "failed";
      op.status.nodes[op.node_index[d.node]].__set_error(st.message());
      MC_RETURN_IF_ERROR(FinishLocked(op, rpc::OperationState::FAILED, error));
      return Unavailable("scaleOut: " + error);
    }
  }
  return resp;
}

Status ClusterState::FinishLocked(Operation& op, rpc::OperationState::type state, const std::string& error) {
  if (op.status.state != rpc::OperationState::RUNNING) return Status::Ok();
  op.status.state = state;
  op.status.__set_finished_unix(UnixNow());
  operations_finished_++;
  if (state != rpc::OperationState::SUCCEEDED) operation_errors_++;
  operation_seconds_ += op.status.finished_unix - op.status.created_unix;
  if (!error.empty()) op.status.__set_error(error);
  LOG(INFO) << "coordinator: " << op.status.id << " "
            << (state == rpc::OperationState::SUCCEEDED ? "succeeded" : "failed")
            << (error.empty() ? "" : ": " + error);
  return journal_->Append({{"op", "finish"},
                           {"id", op.status.id},
                           {"state", static_cast<int>(state)},
                           {"error", error},
                           {"finished", op.status.finished_unix}});
}

Status ClusterState::Progress(const rpc::ProgressReport& r) {
  std::lock_guard lock(mu_);
  auto it = operations_.find(r.operation_id);
  if (it == operations_.end()) return NotFound("reportProgress: no operation '" + r.operation_id + "'");
  Operation& op = it->second;
  auto ni = op.node_index.find(r.node);
  if (ni == op.node_index.end()) {
    return InvalidArgument("reportProgress: node '" + r.node + "' takes no part in " + r.operation_id);
  }
  auto& np = op.status.nodes[ni->second];
  auto& got = op.received[r.node];
  for (const auto& s : r.slices) {
    if (np.role == "target" && r.__isset.started_unix) {
      const double moved = r.started_unix + s.started;
      if (!op.status.__isset.first_byte_unix || moved < op.status.first_byte_unix)
        op.status.__set_first_byte_unix(moved);
    }
    if (got.insert(s.slice).second) {
      np.bytes_received += s.bytes;
      bytes_moved_ += static_cast<uint64_t>(s.bytes);
      slices_moved_++;
    }
  }
  np.slices_received = static_cast<int32_t>(got.size());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - op.start).count();
  np.rate_bytes_per_s = secs > 0 ? static_cast<double>(np.bytes_received) / secs : 0;
  if (np.role == "target" && np.state == "waiting" && np.slices_received > 0) np.state = "receiving";
  if (r.done) {
    op.pending.erase(r.node);
    if (r.__isset.error) {
      np.state = "failed";
      np.__set_error(r.error);
      return FinishLocked(op, rpc::OperationState::FAILED, "node '" + r.node + "': " + r.error);
    }
    np.state = "complete";
    if (op.pending.empty()) return FinishLocked(op, rpc::OperationState::SUCCEEDED, "");
  }
  return Status::Ok();
}

void ClusterState::CheckLiveness() {
  std::lock_guard lock(mu_);
  for (auto& [id, op] : operations_) {
    if (op.status.state != rpc::OperationState::RUNNING) continue;
    for (const auto& node : op.pending) {
      auto it = nodes_.find(node);
      if (it == nodes_.end() || AliveLocked(it->second)) continue;
      auto& np = op.status.nodes[op.node_index[node]];
      np.state = "lost";
      np.__set_error("no heartbeat for " + std::to_string(config_.heartbeat_deadline) + " s");
      Status st = FinishLocked(op, rpc::OperationState::FAILED,
                               "node '" + node + "' was lost mid-operation (no heartbeat within " +
                                   std::to_string(config_.heartbeat_deadline) + " s)");
      if (!st.ok()) LOG(ERROR) << "coordinator: " << st.message();
      break;
    }
  }
}

Result<rpc::OperationStatus> ClusterState::GetOperation(const std::string& id) const {
  std::lock_guard lock(mu_);
  auto it = operations_.find(id);
  if (it == operations_.end()) return NotFound("getOperation: no operation '" + id + "'");
  return it->second.status;
}

}  // namespace modelcast::coord
