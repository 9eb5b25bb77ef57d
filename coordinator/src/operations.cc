// Scale-out operations: choosing sources and targets, planning, dispatching fragments to the
// agents, and tracking their progress to the end. Repairs are in repair.cc.
#include <thrift/protocol/TMultiplexedProtocol.h>

#include <algorithm>
#include <cctype>
#include <cmath>

#include <glog/logging.h>

#include "Agent.h"
#include "inventory.h"
#include "cluster_state.h"
#include "modelcast/planner/planner.h"
#include "modelcast/rpc/errors.h"
#include "modelcast/rpc/fragment_wire.h"

namespace modelcast::coordinator {

using planner::FindAlgorithm;
using planner::MakePlan;
using planner::ModelShape;

Status ClusterState::CheckScaleLocked(const char* method, const std::string& model, int32_t replicas) const {
  if (!models_.count(model)) return NotFound(std::string(method) + ": unknown model '" + model + "'");
  if (replicas < 1) {
    return InvalidArgument(std::string(method) + ": replicas must be at least 1, got " + std::to_string(replicas));
  }
  if (static_cast<size_t>(replicas) > members_.size()) {
    return ResourceExhausted(std::string(method) + ": " + std::to_string(replicas) + " replicas, but cluster '" +
                             cluster_.name + "' has " + std::to_string(members_.size()) + " nodes");
  }
  if (const Operation* running = ops_.RunningFor(model)) {
    return FailedPrecondition(std::string(method) + ": model '" + model + "' already has operation " +
                              running->status.id + " running");
  }
  return Status::Ok();
}

std::vector<std::string> ClusterState::RankTargetsLocked(const std::string& model, uint32_t nslices,
                                                         const std::set<std::string>& exclude,
                                                         const std::set<std::string>& allowed) const {
  struct Candidate {
    std::string name;
    int tier;  // 2: a whole copy in host memory, 1: none, 0: a whole copy on SSD only
    uint32_t held;
    int64_t gpu_free;
  };
  std::vector<Candidate> c;
  for (const auto& [name, n] : members_.nodes()) {
    if (!members_.Alive(n) || exclude.count(name) || (!allowed.empty() && !allowed.count(name))) continue;
    if (instances_.Has(model, name)) continue;  // serving (or loading) it already
    const Tier whole = CompleteTier(n.inventory, model, nslices);
    if (whole == Tier::kGpu) continue;  // a copy started outside modelcast: a source
    c.push_back({name, whole == Tier::kHost ? 2 : whole == Tier::kSsd ? 0 : 1, Held(n.inventory, model, nslices).Count(),
                 GpuFree(n.inventory)});
  }
  // Warm nodes first (a copy in host memory: the tiered store's point), nodes whose only copy
  // is on SSD last (an SSD is slower than the fabric, and they can send); among the others,
  // those holding more of the model first (they need less), then those with more free GPU memory.
  std::stable_sort(c.begin(), c.end(), [](const Candidate& a, const Candidate& b) {
    if (a.tier != b.tier) return a.tier > b.tier;
    if (a.held != b.held) return a.held > b.held;
    return a.gpu_free > b.gpu_free;
  });
  std::vector<std::string> out;
  for (const auto& x : c) out.push_back(x.name);
  return out;
}

Result<ScaleOutResult> ClusterState::ScaleOut(const ScaleOutArgs& args) {
  if (FindAlgorithm(args.algorithm) == nullptr) {
    return InvalidArgument("scaleOut: unknown algorithm '" + args.algorithm + "'");
  }
  if (!(args.deadline > 0)) return InvalidArgument("scaleOut: deadline_s must be positive");
  std::vector<Dispatch> dispatches;
  ScaleOutResult result;
  std::string id;
  {
    std::lock_guard lock(mu_);
    if (!args.dry_run) {
      // A request repeated (a retry, or a replay) with its idempotency key gets the operation
      // it started the first time; nothing is scaled twice.
      MC_ASSIGN_OR_RETURN(const Operation* prior,
                          ops_.Repeated(args.request_id, OperationKind::kScaleOut, args.model, "scaleOut"));
      if (prior != nullptr) {
        result.operation_id = prior->status.id;
        result.sources = prior->sources;
        result.targets = prior->targets;
        return result;
      }
    }
    MC_RETURN_IF_ERROR(CheckScaleLocked("scaleOut", args.model, args.replicas));
    const auto& manifest = *models_.at(args.model).manifest;
    const uint32_t nslices = static_cast<uint32_t>(manifest.slices.size());
    // Targets: the best nodes without an instance (a node with a whole copy in its store loads
    // it locally). Sources: every other live node with a whole copy (an SSD copy is loaded into
    // host memory by the agent before it sends).
    std::set<std::string> allowed;
    for (const auto& t : args.allowed_targets) {
      if (!members_.Has(t)) return InvalidArgument("scaleOut: target '" + t + "' is not a node of the cluster");
      allowed.insert(t);
    }
    // A node serving a full local instance holds every slice, verified: an operation that just
    // completed it knows so before the node's next heartbeat reports its inventory (an
    // autoscaler that scales out again at once must find it a source).
    const auto* serving = instances_.Of(args.model);
    auto whole = [&](const std::string& name) {
      if (serving) {
        auto it = serving->find(name);
        if (it != serving->end() && it->second.state == InstanceState::kLocal) return true;
      }
      return CompleteTier(members_.at(name).inventory, args.model, nslices) != Tier::kNone;
    };
    std::vector<std::string> holders;
    for (const auto& [name, n] : members_.nodes()) {
      if (members_.Alive(n) && whole(name)) holders.push_back(name);
    }
    if (holders.empty())
      return FailedPrecondition("scaleOut: no live node holds a whole copy of model '" + args.model + "'");
    std::vector<std::string> ranked = RankTargetsLocked(args.model, nslices, {}, allowed);
    // A target without a copy needs a source: if every holder would be a target, the last
    // holder ranked stays a source.
    auto split = [&](size_t n) {
      std::vector<std::string> t(ranked.begin(), ranked.begin() + static_cast<std::ptrdiff_t>(std::min(n, ranked.size())));
      std::vector<std::string> s;
      for (const auto& h : holders) {
        if (std::find(t.begin(), t.end(), h) == t.end()) s.push_back(h);
      }
      return std::make_pair(t, s);
    };
    auto [targets, sources] = split(static_cast<size_t>(args.replicas));
    const bool needs_source = std::any_of(targets.begin(), targets.end(), [&](const auto& t) { return !whole(t); });
    if (needs_source && sources.empty()) {
      for (size_t i = ranked.size(); i-- > 0;) {
        if (!whole(ranked[i]) || std::find(targets.begin(), targets.end(), ranked[i]) == targets.end()) continue;
        ranked.erase(ranked.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
      std::tie(targets, sources) = split(static_cast<size_t>(args.replicas));
    }
    if (targets.size() < static_cast<size_t>(args.replicas)) {
      return ResourceExhausted("scaleOut: " + std::to_string(args.replicas) + " new replicas of model '" + args.model +
                               "' asked, but only " + std::to_string(targets.size()) +
                               " live node(s) can take one (nodes serving it cannot, and one holding it must send)");
    }
    targets.resize(static_cast<size_t>(args.replicas));
    std::sort(targets.begin(), targets.end());
    Operation op;
    op.algorithm = args.algorithm;
    op.deadline = args.deadline;
    op.sources = sources;
    op.targets = targets;
    MC_ASSIGN_OR_RETURN(Plan plan, MakePlan(PlanRequestLocked(op, manifest), args.algorithm));
    result.sources = sources;
    result.targets = targets;
    if (args.dry_run) {  // no operation: the id says so
      result.operation_id = "dry-run";
      result.plan_json = plan.ToJson().dump();
      return result;
    }
    op.channel = ops_.NextChannel();
    if (op.channel == 0) return Unavailable("scaleOut: 255 operations are running; no fabric channel is free");
    ops_.Start(op, epoch_, OperationKind::kScaleOut, args.model, args.replicas);
    id = op.status.id;
    op.request_id = args.request_id;
    result.operation_id = id;
    MC_ASSIGN_OR_RETURN(dispatches, FragmentsLocked(op, plan));
    MC_RETURN_IF_ERROR(journal_->Append(OperationTable::StartRecord(op)));
    for (const auto& t : targets) instances_.Set(args.model, t, InstanceState::kLoading);
    ops_.Add(std::move(op));
    LOG(INFO) << "coordinator: " << id << ": scale-out of '" << args.model << "' to " << targets.size()
              << " node(s) from " << sources.size() << " source(s), " << plan.num_ticks << " ticks";
  }
  SendFragments(id, std::move(dispatches));
  return result;
}

PlanRequest ClusterState::PlanRequestLocked(const Operation& op, const model::Manifest& manifest) const {
  PlanRequest pr;
  pr.model = ModelShape::FromManifest(manifest);
  for (const auto& s : op.sources) {
    pr.nodes.push_back({s, members_.Nic(s), members_.at(s).config.pcie, Tier::kHost});
    pr.sources.push_back(static_cast<int32_t>(pr.nodes.size() - 1));
  }
  const uint32_t nslices = static_cast<uint32_t>(manifest.slices.size());
  for (const auto& t : op.targets) {
    // A target with a whole copy in its store loads it from there (host memory over PCIe, or SSD).
    const auto& node = members_.at(t);
    const Tier whole = CompleteTier(node.inventory, manifest.name, nslices);
    const double rate = whole == Tier::kHost ? node.config.pcie : whole == Tier::kSsd ? node.config.ssd : 0;
    pr.nodes.push_back({t, members_.Nic(t), rate, rate > 0 ? whole : Tier::kNone});
    pr.targets.push_back(static_cast<int32_t>(pr.nodes.size() - 1));
  }
  return pr;
}

Result<std::vector<ClusterState::Dispatch>> ClusterState::FragmentsLocked(Operation& op, const Plan& plan) {
  const Model& model = models_.at(op.status.model);
  const int32_t nslices = SlicesLocked(op.status.model);
  std::vector<rpc::PeerAddress> peers;
  for (const auto& n : plan.node_names) {
    if (op.lost.count(n)) continue;
    rpc::PeerAddress p;
    p.node = n;
    p.fabric_address = members_.at(n).fabric_address;
    peers.push_back(p);
  }
  std::vector<Dispatch> dispatches;
  op.pending.clear();
  for (size_t i = 0; i < plan.node_names.size(); ++i) {
    const std::string& n = plan.node_names[i];
    if (op.lost.count(n)) continue;
    const bool is_target = op.IsTarget(n);
    op.AddNode(n, is_target ? NodeRole::kTarget : NodeRole::kSource, nslices);
    MC_ASSIGN_OR_RETURN(auto frag, FragmentOf(plan, n));
    if (is_target) {
      auto order = frag.receives;
      std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.tick < b.tick; });
      auto& planned = op.planned[n];
      planned.clear();
      for (const auto& r : order) planned.push_back(static_cast<int32_t>(r.slice));
      op.planned_next[n] = 0;
    }
    if (frag.sends.empty() && frag.receives.empty() && frag.local_loads.empty()) continue;  // nothing to do
    Dispatch d;
    d.node = n;
    d.rpc_address = members_.at(n).rpc_address;
    auto& f = d.fragment;
    rpc::ToWire(frag, &f);
    f.operation_id = op.FragmentId();
    f.model = op.status.model;
    f.manifest_json = model.manifest_json;
    // A receiver's copy is a whole package: the tokenizer's files travel with the slices.
    if (!frag.receives.empty() && model.text_files) f.__set_text_files(*model.text_files);
    f.peers = peers;
    f.deadline_s = op.deadline;
    f.method = "auto";
    f.channel = op.channel;
    auto& np = op.progress(n);
    if (!is_target || np.state == NodeState::kFailed) {
      np.state = NodeState::kWaiting;
      np.error.reset();
    }
    op.pending.insert(n);
    dispatches.push_back(std::move(d));
  }
  return dispatches;
}

void ClusterState::SendFragments(const std::string& id, std::vector<Dispatch> dispatches) {
  // Every node gets its fragment; one that cannot be reached or refuses is taken as lost and
  // the operation is repaired around it.
  // A fragment whose attempt a repair has overtaken is not sent (and one that gets there after
  // the repair cancelled it is refused by its agent): the repair decides about its node.
  auto superseded = [&](const Operation& op, const Dispatch& d) {
    return !op.running() || op.FragmentId() != d.fragment.operation_id || op.repairing;
  };
  for (auto& d : dispatches) {
    d.fragment.header = rpc::MakeHeader(config_.security, "coordinator");
    {
      std::lock_guard lock(mu_);
      const Operation* op = ops_.Find(id);
      if (op == nullptr || superseded(*op, d)) return;
    }
    Status st = CallAgent(d.rpc_address, 10000, [&](rpc::AgentClient& agent) { agent.runFragment(d.fragment); });
    if (st.ok()) continue;
    std::lock_guard lock(mu_);
    Operation* op = ops_.Find(id);
    if (op == nullptr || superseded(*op, d)) return;
    if (st.code() == StatusCode::kFailedPrecondition) {
      // The node no longer holds what the plan read from it (evicted since its last heartbeat):
      // not a loss; the repair asks every node what it holds now and plans again.
      op->pending.erase(d.node);
      RepairLocked(*op, "node '" + d.node + "' refused its fragment: " + st.message());
      continue;
    }
    LoseLocked(*op, d.node, "dispatching its fragment: " + st.message());
    RepairLocked(*op, "node '" + d.node + "' could not take its fragment: " + st.message());
  }
}

Status ClusterState::CallAgent(const std::string& rpc_address, int timeout_ms,
                               const std::function<void(rpc::AgentClient&)>& call) const {
  MC_ASSIGN_OR_RETURN(auto addr, SplitAddress(rpc_address));
  MC_ASSIGN_OR_RETURN(auto conn, rpc::Connect(addr.first, addr.second, config_.security, timeout_ms));
  rpc::AgentClient agent(conn->protocol);
  return rpc::CallStatus([&] { call(agent); });
}

Status ClusterState::FinishLocked(Operation& op, OperationState state, const std::string& error) {
  if (!op.running()) return Status::Ok();
  ops_.Finish(op, state, error);
  // Kept finished operations need no per-slice record (a large model has many slices).
  op.planned.clear();
  op.planned_next.clear();
  op.landed_unix.clear();
  // What the links carried: stragglers are planned at what they did from now on.
  members_.JudgeLinks(op.status.id, op.BestLinks());
  // Targets that did not end with the model are no instances; those that did are journaled
  // with the end of the operation.
  std::vector<std::string> loaded;
  if (op.status.kind == OperationKind::kScaleOut) {
    for (const auto& t : op.targets) {
      auto& np = op.progress(t);
      if (np.state == NodeState::kComplete) {
        loaded.push_back(t);
        continue;
      }
      instances_.Remove(op.status.model, t);
      // A target cut short says how far it got (a lost one already says why).
      if (np.state != NodeState::kLost && np.state != NodeState::kFailed) {
        np.state = NodeState::kFailed;
        np.error = "incomplete: " + std::to_string(np.slices_received) + " of " + std::to_string(np.slices_total) +
                   " slices when the operation ended";
      }
    }
  }
  LOG(INFO) << "coordinator: " << op.status.id << " " << (state == OperationState::kSucceeded ? "succeeded" : "failed")
            << (error.empty() ? "" : ": " + error);
  MC_RETURN_IF_ERROR(journal_->Append(OperationTable::FinishRecord(op, loaded)));
  if (Status st = MaybeCompactLocked(); !st.ok()) LOG(WARNING) << "coordinator: " << st.message();
  return Status::Ok();
}

Status ClusterState::SettleLocked(Operation& op) {
  if (!op.pending.empty() || op.repairing) return Status::Ok();
  int complete = 0;
  std::vector<std::string> short_of;
  for (const auto& t : op.targets) {
    const auto& np = op.progress(t);
    if (np.state == NodeState::kComplete) {
      complete++;
    } else {
      short_of.push_back(t + " (" + InSentence(np.state) + (np.error ? ": " + *np.error : "") + ")");
    }
  }
  if (complete >= op.status.replicas) return FinishLocked(op, OperationState::kSucceeded, "");
  std::string error = std::to_string(complete) + " of " + std::to_string(op.status.replicas) +
                      " replicas loaded; not loaded:";
  for (const auto& s : short_of) error += " " + s;
  if (short_of.empty()) error += " no spare node stood in for the lost";
  return FinishLocked(op, OperationState::kFailed, error);
}

Status ClusterState::Progress(const ProgressUpdate& r) {
  std::lock_guard lock(mu_);
  const auto dot = r.operation_id.find(".r");
  Operation* found = ops_.Find(r.operation_id.substr(0, dot));
  if (found == nullptr) return NotFound("reportProgress: no operation '" + r.operation_id + "'");
  Operation& op = *found;
  if (!op.node_index.count(r.node)) {
    return InvalidArgument("reportProgress: node '" + r.node + "' takes no part in " + r.operation_id);
  }
  auto& np = op.progress(r.node);
  const bool target = np.role == NodeRole::kTarget;
  // What this node measured of its links, as sender and as receiver (any attempt's).
  const auto measured = [&](const std::vector<ProgressUpdate::Link>& samples, bool receiver) {
    for (const auto& l : samples) {
      if (!op.node_index.count(l.peer) || l.bytes <= 0 || !(l.busy_s > 0) || !std::isfinite(l.busy_s)) continue;
      auto& [bytes, seconds] = op.links[receiver ? std::pair(l.peer, r.node) : std::pair(r.node, l.peer)][receiver];
      bytes += static_cast<uint64_t>(l.bytes);
      seconds += l.busy_s;
    }
  };
  if (r.done) {
    measured(r.sent_to, false);
    measured(r.received_from, true);
  }
  auto& got = op.received[r.node];
  auto& totals = ops_.totals();
  for (const auto& s : r.slices) {
    if (target && r.started_unix) {
      const double moved = *r.started_unix + s.started;
      if (!op.status.first_byte_unix || moved < *op.status.first_byte_unix) op.status.first_byte_unix = moved;
    }
    if (got.insert(s.slice).second) {
      if (target && r.started_unix) op.landed_unix[r.node][s.slice] = *r.started_unix + s.finished;
      np.bytes_received += s.bytes;
      totals.bytes_moved += static_cast<uint64_t>(s.bytes);
      totals.slices_moved++;
    }
  }
  if (target) np.slices_received = std::max(np.slices_received, static_cast<int32_t>(got.size()));
  if (auto plan = op.planned.find(r.node); target && plan != op.planned.end()) {
    // Past what it holds of its plan, so that what it holds next is looked for from there.
    auto& next = op.planned_next[r.node];
    while (next < plan->second.size() && got.count(plan->second[next])) ++next;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - op.start).count();
  np.rate_bytes_per_s = secs > 0 ? static_cast<double>(np.bytes_received) / secs : 0;
  if (target && np.state == NodeState::kWaiting && np.slices_received > 0) np.state = NodeState::kReceiving;
  // A target holding every slice serves as a whole instance at once, though its fragment may
  // still be forwarding to others (to a straggler fed from spare capacity, say): its end waits
  // for theirs, its own copy need not.
  if (target && !np.complete_unix && np.slices_total > 0 && static_cast<int32_t>(got.size()) >= np.slices_total &&
      op.running() && !op.lost.count(r.node)) {
    np.complete_unix = UnixNow();
    instances_.Set(op.status.model, r.node, InstanceState::kLocal, /*journal=*/false);
  }
  if (target && !r.slices.empty()) {
    FirstPipelineLandedLocked(op);
    PokeServing();
  }
  // The end of a fragment counts only for the current attempt; older ones were cancelled.
  if (!r.done || r.operation_id != op.FragmentId() || !op.running()) return Status::Ok();
  op.pending.erase(r.node);
  if (op.adopt) op.ended_while_adopting[r.node] = !r.error;
  if (r.corrupt_slices > 0) np.corrupt_slices = np.corrupt_slices.value_or(0) + r.corrupt_slices;
  if (r.error) {
    if (op.repairing) return Status::Ok();  // cancelled by the repair under way
    if (r.store_failure) {
      // Its own store refused (full, unreadable, or a slice it could not record): what it
      // reported received is not to be trusted further, and another attempt would meet the
      // same refusal. Planned around, as a lost node is; a spare stands in for a target.
      LoseLocked(op, r.node, "its store refused: " + *r.error);
      RepairLocked(op, "node '" + r.node + "': its store refused: " + *r.error);
      return Status::Ok();
    }
    np.state = NodeState::kFailed;
    np.error = *r.error;
    RepairLocked(op, "node '" + r.node + "': " + *r.error);
    return Status::Ok();
  }
  np.state = NodeState::kComplete;
  if (target) {
    if (!np.complete_unix) np.complete_unix = UnixNow();
    np.slices_received = np.slices_total;
    instances_.Set(op.status.model, r.node, InstanceState::kLocal, /*journal=*/false);
  }
  // Found running after a restart and not reconciled with its agents yet: who else still runs
  // is not known (nothing pending is journaled), so the end waits for the reconciliation.
  if (op.adopt) return Status::Ok();
  return SettleLocked(op);
}

Result<OperationStatus> ClusterState::GetOperation(const std::string& id) const {
  std::lock_guard lock(mu_);
  const Operation* op = ops_.Find(id);
  if (op == nullptr) {
    return NotFound("getOperation: no operation '" + id + "' (finished ones are kept: the last " +
                    std::to_string(OperationTable::kKept) + ")");
  }
  return op->status;
}

}  // namespace modelcast::coordinator

namespace modelcast::coordinator {

void ClusterState::FirstPipelineLandedLocked(Operation& op) {
  if (op.first_pipeline.empty() || op.status.first_pipeline_blocks_s) return;
  const auto& manifest = *models_.at(op.status.model).manifest;
  double last = 0;
  for (const auto& [node, first, end] : op.first_pipeline) {
    auto landed = op.landed_unix.find(node);
    std::vector<uint32_t> blocks;
    for (uint32_t b = first; b < end; ++b) blocks.push_back(b);
    // A tied LM head reads the embedding, which block 0 holds.
    if (end == manifest.blocks.size() && first > 0 && manifest.config.tie_word_embeddings) blocks.push_back(0);
    for (uint32_t b : blocks) {
      const auto& block = manifest.blocks[b];
      for (uint32_t s = block.first_slice; s < block.first_slice + block.num_slices; ++s) {
        if (landed == op.landed_unix.end()) return;
        auto it = landed->second.find(static_cast<int32_t>(s));
        if (it == landed->second.end()) return;
        last = std::max(last, it->second);
      }
    }
  }
  op.status.first_pipeline_blocks_s = std::max(0.0, last - op.status.created_unix);
}

}  // namespace modelcast::coordinator
