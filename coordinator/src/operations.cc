// Scale-out operations: choosing sources and targets, planning, dispatching fragments to the
// agents, and tracking their progress to the end. Repairs are in repair.cc.
#include <thrift/protocol/TMultiplexedProtocol.h>

#include <algorithm>
#include <cctype>
#include <cmath>

#include <glog/logging.h>

#include "Agent.h"
#include "inventory.h"
#include "modelcast/coordinator/daemon.h"
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
  if (static_cast<size_t>(replicas) > nodes_.size()) {
    return ResourceExhausted(std::string(method) + ": " + std::to_string(replicas) + " replicas, but cluster '" +
                             cluster_.name + "' has " + std::to_string(nodes_.size()) + " nodes");
  }
  for (const auto& [id, op] : operations_) {
    if (op.status.model == model && op.status.state == rpc::OperationState::RUNNING) {
      return FailedPrecondition(std::string(method) + ": model '" + model + "' already has operation " + id +
                                " running");
    }
  }
  return Status::Ok();
}

int ClusterState::NextChannelLocked() {
  std::set<int> busy;
  for (const auto& [id, op] : operations_) {
    if (op.status.state == rpc::OperationState::RUNNING) busy.insert(op.channel);
  }
  // Round robin, so that a channel comes back only after 254 others (an agent drops the tail
  // of a finished operation's messages for a few seconds after it closes the channel).
  for (int i = 0; i < 255; ++i) {
    last_channel_ = last_channel_ % 255 + 1;
    if (!busy.count(last_channel_)) return last_channel_;
  }
  return 0;
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
  const auto it = instances_.find(model);
  std::vector<Candidate> c;
  for (const auto& [name, n] : nodes_) {
    if (!AliveLocked(n) || exclude.count(name) || (!allowed.empty() && !allowed.count(name))) continue;
    if (it != instances_.end() && it->second.count(name)) continue;  // serving (or loading) it already
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

Result<rpc::ScaleOutResponse> ClusterState::ScaleOut(const rpc::ScaleOutRequest& req) {
  const std::string algorithm =
      req.__isset.options && req.options.__isset.algorithm ? req.options.algorithm : "lambdapipe";
  if (FindAlgorithm(algorithm) == nullptr) return InvalidArgument("scaleOut: unknown algorithm '" + algorithm + "'");
  const double deadline = req.__isset.options && req.options.__isset.deadline_s ? req.options.deadline_s : 600;
  if (!(deadline > 0)) return InvalidArgument("scaleOut: deadline_s must be positive");
  const bool dry_run = req.__isset.options && req.options.__isset.dry_run && req.options.dry_run;
  std::vector<Dispatch> dispatches;
  rpc::ScaleOutResponse resp;
  std::string id;
  {
    std::lock_guard lock(mu_);
    if (!dry_run) {
      // A request repeated (a retry, or a replay) with its idempotency key gets the operation
      // it started the first time; nothing is scaled twice.
      MC_ASSIGN_OR_RETURN(const Operation* prior,
                          RepeatedLocked(req.header, rpc::OperationKind::SCALE_OUT, req.model, "scaleOut"));
      if (prior != nullptr) {
        resp.operation_id = prior->status.id;
        resp.sources = prior->sources;
        resp.targets = prior->targets;
        return resp;
      }
    }
    MC_RETURN_IF_ERROR(CheckScaleLocked("scaleOut", req.model, req.replicas));
    const auto& manifest = *models_.at(req.model).manifest;
    const uint32_t nslices = static_cast<uint32_t>(manifest.slices.size());
    // Targets: the best nodes without an instance (a node with a whole copy in its store loads
    // it locally). Sources: every other live node with a whole copy (an SSD copy is loaded into
    // host memory by the agent before it sends).
    std::set<std::string> allowed;
    if (req.__isset.options && req.options.__isset.targets) {
      for (const auto& t : req.options.targets) {
        if (!nodes_.count(t)) return InvalidArgument("scaleOut: target '" + t + "' is not a node of the cluster");
        allowed.insert(t);
      }
    }
    auto whole = [&](const std::string& name) {
      return CompleteTier(nodes_.at(name).inventory, req.model, nslices) != Tier::kNone;
    };
    std::vector<std::string> holders;
    for (const auto& [name, n] : nodes_) {
      if (AliveLocked(n) && whole(name)) holders.push_back(name);
    }
    if (holders.empty())
      return FailedPrecondition("scaleOut: no live node holds a whole copy of model '" + req.model + "'");
    std::vector<std::string> ranked = RankTargetsLocked(req.model, nslices, {}, allowed);
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
    auto [targets, sources] = split(static_cast<size_t>(req.replicas));
    const bool needs_source = std::any_of(targets.begin(), targets.end(), [&](const auto& t) { return !whole(t); });
    if (needs_source && sources.empty()) {
      for (size_t i = ranked.size(); i-- > 0;) {
        if (!whole(ranked[i]) || std::find(targets.begin(), targets.end(), ranked[i]) == targets.end()) continue;
        ranked.erase(ranked.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
      std::tie(targets, sources) = split(static_cast<size_t>(req.replicas));
    }
    if (targets.size() < static_cast<size_t>(req.replicas)) {
      return ResourceExhausted("scaleOut: " + std::to_string(req.replicas) + " new replicas of model '" + req.model +
                               "' asked, but only " + std::to_string(targets.size()) +
                               " live node(s) can take one (nodes serving it cannot, and one holding it must send)");
    }
    targets.resize(static_cast<size_t>(req.replicas));
    std::sort(targets.begin(), targets.end());
    Operation op;
    op.algorithm = algorithm;
    op.deadline = deadline;
    op.sources = sources;
    op.targets = targets;
    MC_ASSIGN_OR_RETURN(Plan plan, MakePlan(PlanRequestLocked(op, manifest), algorithm));
    resp.sources = sources;
    resp.targets = targets;
    if (dry_run) {  // no operation: the id says so
      resp.operation_id = "dry-run";
      resp.__set_plan_json(plan.ToJson().dump());
      return resp;
    }
    op.channel = NextChannelLocked();
    if (op.channel == 0) return Unavailable("scaleOut: 255 operations are running; no fabric channel is free");
    id = StartOperationLocked(op, rpc::OperationKind::SCALE_OUT, req.model, req.replicas);
    if (req.header.__isset.request_id) op.request_id = req.header.request_id;
    resp.operation_id = id;
    MC_ASSIGN_OR_RETURN(dispatches, FragmentsLocked(op, plan));
    MC_RETURN_IF_ERROR(journal_->Append(OperationRecord(op)));
    for (const auto& t : targets) SetInstanceLocked(req.model, t, rpc::InstanceState::LOADING);
    operations_.emplace(id, std::move(op));
    LOG(INFO) << "coordinator: " << id << ": scale-out of '" << req.model << "' to " << targets.size()
              << " node(s) from " << sources.size() << " source(s), " << plan.num_ticks << " ticks";
  }
  SendFragments(id, std::move(dispatches));
  return resp;
}

PlanRequest ClusterState::PlanRequestLocked(const Operation& op, const model::Manifest& manifest) const {
  PlanRequest pr;
  pr.model = ModelShape::FromManifest(manifest);
  for (const auto& s : op.sources) {
    const auto& cfg = nodes_.at(s).config;
    pr.nodes.push_back({s, NicLocked(s), cfg.pcie, Tier::kHost});
    pr.sources.push_back(static_cast<int32_t>(pr.nodes.size() - 1));
  }
  const uint32_t nslices = static_cast<uint32_t>(manifest.slices.size());
  for (const auto& t : op.targets) {
    // A target with a whole copy in its store loads it from there (host memory over PCIe, or SSD).
    const auto& cfg = nodes_.at(t).config;
    const Tier whole = CompleteTier(nodes_.at(t).inventory, manifest.name, nslices);
    const double rate = whole == Tier::kHost ? cfg.pcie : whole == Tier::kSsd ? cfg.ssd : 0;
    pr.nodes.push_back({t, NicLocked(t), rate, rate > 0 ? whole : Tier::kNone});
    pr.targets.push_back(static_cast<int32_t>(pr.nodes.size() - 1));
  }
  return pr;
}

Result<const ClusterState::Operation*> ClusterState::RepeatedLocked(const rpc::RequestHeader& header,
                                                                   rpc::OperationKind::type kind,
                                                                   const std::string& model, const char* method) const {
  if (!header.__isset.request_id || header.request_id.empty()) return nullptr;
  for (const auto& [id, op] : operations_) {
    if (op.request_id != header.request_id) continue;
    if (op.status.kind != kind || op.status.model != model) {
      return InvalidArgument(std::string(method) + ": request_id '" + header.request_id + "' already named " + id +
                             " (a " + (op.status.kind == rpc::OperationKind::SCALE_OUT ? "scale-out" : "scale-in") +
                             " of '" + op.status.model + "')");
    }
    return &op;
  }
  return nullptr;
}

double ClusterState::NicLocked(const std::string& node) const {
  const Node& n = nodes_.at(node);
  return n.measured_nic > 0 ? std::min(n.measured_nic, n.config.nic) : n.config.nic;
}

// A straggler is found from what the ends of each link measured: a node's best link (in or out) is what
// it can do at least; every link of a degraded node is slow, while a healthy node fed by a slow
// one still has fast links. Each node's best, as a fraction of its configured rate, is compared
// with the median node's: one far below is planned at that fraction of its configured rate.
void ClusterState::JudgeLinksLocked(Operation& op) {
  std::map<std::string, double> best;
  for (const auto& [link, ends] : op.links) {
    double rate = 0;  // the lower of the two ends' figures (each can only overstate it)
    for (const auto& [bytes, seconds] : ends) {
      if (bytes < kMinLinkSample || !(seconds > 0)) continue;
      const double r = static_cast<double>(bytes) / seconds;
      rate = rate > 0 ? std::min(rate, r) : r;
    }
    if (rate <= 0) continue;
    for (const std::string& n : {link.first, link.second}) best[n] = std::max(best[n], rate);
  }
  std::map<std::string, double> fraction;
  for (const auto& [name, rate] : best) {
    if (op.node_index.count(name)) op.status.nodes[op.node_index.at(name)].__set_link_bytes_per_s(rate);
    auto it = nodes_.find(name);
    if (it != nodes_.end() && it->second.config.nic > 0) fraction[name] = rate / it->second.config.nic;
  }
  if (fraction.size() < 3) return;  // no majority to judge against
  std::vector<double> f;
  for (const auto& [name, x] : fraction) f.push_back(x);
  std::nth_element(f.begin(), f.begin() + static_cast<std::ptrdiff_t>(f.size() / 2), f.end());
  const double median = f[f.size() / 2];
  for (const auto& [name, x] : fraction) {
    Node& n = nodes_.at(name);
    if (x < kSlowLink * median) {
      n.measured_nic = n.config.nic * x / median;
      LOG(WARNING) << "coordinator: " << op.status.id << ": node '" << name << "' is a straggler: its links carried at most "
                   << best[name] * 8 / 1e6 << " Mbit/s, " << x / median
                   << " of the other nodes' (relative to their configured rates); planning it at "
                   << n.measured_nic * 8 / 1e6 << " Mbit/s until a multicast measures it faster";
    } else if (n.measured_nic > 0) {
      n.measured_nic = 0;
      LOG(INFO) << "coordinator: " << op.status.id << ": node '" << name << "' measured back at "
                << best[name] * 8 / 1e6 << " Mbit/s: planning it at its configured rate again";
    }
  }
}

std::string ClusterState::StartOperationLocked(Operation& op, rpc::OperationKind::type kind, const std::string& model,
                                              int32_t replicas) {
  // Finished operations are kept for getOperation, the newest kKeptOperations of them: a
  // coordinator that scales all day must not grow without bound.
  std::vector<std::pair<double, std::string>> finished;
  for (const auto& [id, o] : operations_) {
    if (o.status.state != rpc::OperationState::RUNNING && o.status.state != rpc::OperationState::PENDING) {
      finished.emplace_back(o.status.__isset.finished_unix ? o.status.finished_unix : o.status.created_unix, id);
    }
  }
  if (finished.size() >= kKeptOperations) {
    std::sort(finished.begin(), finished.end());
    for (size_t i = 0; i + kKeptOperations <= finished.size(); ++i) operations_.erase(finished[i].second);
  }
  op.start = std::chrono::steady_clock::now();
  op.status.id = "op-" + std::to_string(epoch_) + "-" + std::to_string(next_operation_++);
  op.status.kind = kind;
  op.status.model = model;
  op.status.replicas = replicas;
  op.status.state = rpc::OperationState::RUNNING;
  op.status.created_unix = UnixNow();
  op.status.__set_started_unix(op.status.created_unix);
  op.status.replans = 0;
  return op.status.id;
}

void ClusterState::AddProgressEntry(Operation& op, const std::string& node, rpc::NodeRole::type role,
                                    int32_t nslices) {
  if (op.node_index.count(node)) return;
  rpc::NodeProgress np;
  np.node = node;
  np.role = role;
  np.slices_total = role == rpc::NodeRole::TARGET ? nslices : 0;
  np.slices_received = 0;
  np.bytes_received = 0;
  np.rate_bytes_per_s = 0;
  np.state = role == rpc::NodeRole::RELEASE ? rpc::NodeState::DRAINING : rpc::NodeState::WAITING;
  op.node_index[node] = op.status.nodes.size();
  op.status.nodes.push_back(np);
}

Result<std::vector<ClusterState::Dispatch>> ClusterState::FragmentsLocked(Operation& op, const Plan& plan) {
  const Model& model = models_.at(op.status.model);
  const uint32_t nslices = static_cast<uint32_t>(model.manifest->slices.size());
  std::vector<rpc::PeerAddress> peers;
  for (const auto& n : plan.node_names) {
    if (op.lost.count(n)) continue;
    rpc::PeerAddress p;
    p.node = n;
    p.fabric_address = nodes_.at(n).fabric_address;
    peers.push_back(p);
  }
  std::vector<Dispatch> dispatches;
  op.pending.clear();
  for (size_t i = 0; i < plan.node_names.size(); ++i) {
    const std::string& n = plan.node_names[i];
    if (op.lost.count(n)) continue;
    const bool is_target = std::find(op.targets.begin(), op.targets.end(), n) != op.targets.end();
    AddProgressEntry(op, n, is_target ? rpc::NodeRole::TARGET : rpc::NodeRole::SOURCE, static_cast<int32_t>(nslices));
    MC_ASSIGN_OR_RETURN(auto frag, FragmentOf(plan, n));
    if (frag.sends.empty() && frag.receives.empty() && frag.local_loads.empty()) continue;  // nothing to do
    Dispatch d;
    d.node = n;
    d.rpc_address = nodes_.at(n).rpc_address;
    auto& f = d.fragment;
    rpc::ToWire(frag, &f);
    f.operation_id = op.FragmentId();
    f.model = op.status.model;
    f.manifest_json = model.manifest_json;
    f.peers = peers;
    f.deadline_s = op.deadline;
    f.method = "auto";
    f.channel = op.channel;
    auto& np = op.status.nodes[op.node_index[n]];
    if (!is_target || np.state == rpc::NodeState::FAILED) {
      np.state = rpc::NodeState::WAITING;
      np.__isset.error = false;
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
    return op.status.state != rpc::OperationState::RUNNING || op.FragmentId() != d.fragment.operation_id ||
           op.repairing;
  };
  for (auto& d : dispatches) {
    d.fragment.header = rpc::MakeHeader(config_.security, "coordinator");
    {
      std::lock_guard lock(mu_);
      auto it = operations_.find(id);
      if (it == operations_.end() || superseded(it->second, d)) return;
    }
    Status st = CallAgent(d.rpc_address, 10000, [&](rpc::AgentClient& agent) { agent.runFragment(d.fragment); });
    if (st.ok()) continue;
    std::lock_guard lock(mu_);
    auto it = operations_.find(id);
    if (it == operations_.end()) return;
    Operation& op = it->second;
    if (superseded(op, d)) return;
    if (st.code() == StatusCode::kFailedPrecondition) {
      // The node no longer holds what the plan read from it (evicted since its last heartbeat):
      // not a loss; the repair asks every node what it holds now and plans again.
      op.pending.erase(d.node);
      RepairLocked(op, "node '" + d.node + "' refused its fragment: " + st.message());
      continue;
    }
    LoseLocked(op, d.node, "dispatching its fragment: " + st.message());
    RepairLocked(op, "node '" + d.node + "' could not take its fragment: " + st.message());
  }
}

Status ClusterState::CallAgent(const std::string& rpc_address, int timeout_ms,
                               const std::function<void(rpc::AgentClient&)>& call) const {
  MC_ASSIGN_OR_RETURN(auto addr, SplitAddress(rpc_address));
  MC_ASSIGN_OR_RETURN(auto conn, rpc::Connect(addr.first, addr.second, config_.security, timeout_ms));
  rpc::AgentClient agent(conn->protocol);
  return rpc::CallStatus([&] { call(agent); });
}

Status ClusterState::FinishLocked(Operation& op, rpc::OperationState::type state, const std::string& error) {
  if (op.status.state != rpc::OperationState::RUNNING) return Status::Ok();
  op.status.state = state;
  op.status.__set_finished_unix(UnixNow());
  operations_finished_++;
  if (state != rpc::OperationState::SUCCEEDED) operation_errors_++;
  operation_seconds_ += op.status.finished_unix - op.status.created_unix;
  if (!error.empty()) op.status.__set_error(error);
  JudgeLinksLocked(op);
  // Targets that did not end with the model are no instances; those that did are journaled
  // with the end of the operation.
  std::vector<std::string> loaded;
  if (op.status.kind == rpc::OperationKind::SCALE_OUT) {
    for (const auto& t : op.targets) {
      auto& np = op.status.nodes[op.node_index[t]];
      if (np.state == rpc::NodeState::COMPLETE) {
        loaded.push_back(t);
        continue;
      }
      RemoveInstanceLocked(op.status.model, t);
      // A target cut short says how far it got (a lost one already says why).
      if (np.state != rpc::NodeState::LOST && np.state != rpc::NodeState::FAILED) {
        np.state = rpc::NodeState::FAILED;
        np.__set_error("incomplete: " + std::to_string(np.slices_received) + " of " +
                       std::to_string(np.slices_total) + " slices when the operation ended");
      }
    }
  }
  LOG(INFO) << "coordinator: " << op.status.id << " "
            << (state == rpc::OperationState::SUCCEEDED ? "succeeded" : "failed")
            << (error.empty() ? "" : ": " + error);
  MC_RETURN_IF_ERROR(journal_->Append({{"op", "finish"},
                                       {"id", op.status.id},
                                       {"state", static_cast<int>(state)},
                                       {"error", error},
                                       {"instances", loaded},
                                       {"finished", op.status.finished_unix}}));
  if (Status st = MaybeCompactLocked(); !st.ok()) LOG(WARNING) << "coordinator: " << st.message();
  return Status::Ok();
}

Status ClusterState::SettleLocked(Operation& op) {
  if (!op.pending.empty() || op.repairing) return Status::Ok();
  int complete = 0;
  std::vector<std::string> short_of;
  for (const auto& t : op.targets) {
    const auto& np = op.status.nodes[op.node_index[t]];
    if (np.state == rpc::NodeState::COMPLETE) {
      complete++;
    } else {
      // The state's name (the IDL's), in lower case inside a sentence: "node-2 (lost: ...)".
      std::string state = rpc::to_string(np.state);
      std::transform(state.begin(), state.end(), state.begin(), [](unsigned char c) { return std::tolower(c); });
      short_of.push_back(t + " (" + state + (np.__isset.error ? ": " + np.error : "") + ")");
    }
  }
  if (complete >= op.status.replicas) return FinishLocked(op, rpc::OperationState::SUCCEEDED, "");
  std::string error = std::to_string(complete) + " of " + std::to_string(op.status.replicas) +
                      " replicas loaded; not loaded:";
  for (const auto& s : short_of) error += " " + s;
  if (short_of.empty()) error += " no spare node stood in for the lost";
  return FinishLocked(op, rpc::OperationState::FAILED, error);
}

Status ClusterState::Progress(const rpc::ProgressReport& r) {
  std::lock_guard lock(mu_);
  const auto dot = r.operation_id.find(".r");
  const std::string base = r.operation_id.substr(0, dot);
  auto it = operations_.find(base);
  if (it == operations_.end()) return NotFound("reportProgress: no operation '" + r.operation_id + "'");
  Operation& op = it->second;
  auto ni = op.node_index.find(r.node);
  if (ni == op.node_index.end()) {
    return InvalidArgument("reportProgress: node '" + r.node + "' takes no part in " + r.operation_id);
  }
  auto& np = op.status.nodes[ni->second];
  // What this node measured of its links, as sender and as receiver (any attempt's).
  const auto measured = [&](const std::vector<rpc::LinkSample>& samples, bool receiver) {
    for (const auto& l : samples) {
      if (!op.node_index.count(l.peer) || l.bytes <= 0 || !(l.busy_s > 0) || !std::isfinite(l.busy_s)) continue;
      auto& [bytes, seconds] = op.links[receiver ? std::pair(l.peer, r.node) : std::pair(r.node, l.peer)][receiver];
      bytes += static_cast<uint64_t>(l.bytes);
      seconds += l.busy_s;
    }
  };
  if (r.done && r.__isset.sent_to) measured(r.sent_to, false);
  if (r.done && r.__isset.received_from) measured(r.received_from, true);
  auto& got = op.received[r.node];
  for (const auto& s : r.slices) {
    if (np.role == rpc::NodeRole::TARGET && r.__isset.started_unix) {
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
  if (np.role == rpc::NodeRole::TARGET) np.slices_received = std::max(np.slices_received, static_cast<int32_t>(got.size()));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - op.start).count();
  np.rate_bytes_per_s = secs > 0 ? static_cast<double>(np.bytes_received) / secs : 0;
  if (np.role == rpc::NodeRole::TARGET && np.state == rpc::NodeState::WAITING && np.slices_received > 0) np.state = rpc::NodeState::RECEIVING;
  // A target holding every slice serves as a whole instance at once, though its fragment may
  // still be forwarding to others (to a straggler fed from spare capacity, say): its end waits
  // for theirs, its own copy need not.
  if (np.role == rpc::NodeRole::TARGET && !np.__isset.complete_unix && np.slices_total > 0 &&
      static_cast<int32_t>(got.size()) >= np.slices_total && op.status.state == rpc::OperationState::RUNNING &&
      !op.lost.count(r.node)) {
    np.__set_complete_unix(UnixNow());
    SetInstanceLocked(op.status.model, r.node, rpc::InstanceState::LOCAL, /*journal=*/false);
  }
  if (np.role == rpc::NodeRole::TARGET && !r.slices.empty()) PokeServing();
  // The end of a fragment counts only for the current attempt; older ones were cancelled.
  if (!r.done || r.operation_id != op.FragmentId() || op.status.state != rpc::OperationState::RUNNING) {
    return Status::Ok();
  }
  op.pending.erase(r.node);
  if (r.__isset.corrupt_slices && r.corrupt_slices > 0) {
    np.__set_corrupt_slices((np.__isset.corrupt_slices ? np.corrupt_slices : 0) + r.corrupt_slices);
  }
  if (r.__isset.error) {
    if (op.repairing) return Status::Ok();  // cancelled by the repair under way
    if (r.__isset.failure && r.failure == rpc::FragmentFailure::STORE) {
      // Its own store refused (full, unreadable, or a slice it could not record): what it
      // reported received is not to be trusted further, and another attempt would meet the
      // same refusal. Planned around, as a lost node is; a spare stands in for a target.
      LoseLocked(op, r.node, "its store refused: " + r.error);
      RepairLocked(op, "node '" + r.node + "': its store refused: " + r.error);
      return Status::Ok();
    }
    np.state = rpc::NodeState::FAILED;
    np.__set_error(r.error);
    RepairLocked(op, "node '" + r.node + "': " + r.error);
    return Status::Ok();
  }
  np.state = rpc::NodeState::COMPLETE;
  if (np.role == rpc::NodeRole::TARGET) {
    if (!np.__isset.complete_unix) np.__set_complete_unix(UnixNow());
    np.slices_received = np.slices_total;
    SetInstanceLocked(op.status.model, r.node, rpc::InstanceState::LOCAL, /*journal=*/false);
  }
  // Found running after a restart and not reconciled with its agents yet: who else still runs
  // is not known (nothing pending is journaled), so the end waits for the reconciliation.
  if (op.adopt) return Status::Ok();
  return SettleLocked(op);
}

Result<rpc::OperationStatus> ClusterState::GetOperation(const std::string& id) const {
  std::lock_guard lock(mu_);
  auto it = operations_.find(id);
  if (it == operations_.end()) {
    return NotFound("getOperation: no operation '" + id + "' (finished ones are kept: the last " +
                    std::to_string(kKeptOperations) + ")");
  }
  return it->second.status;
}

}  // namespace modelcast::coordinator
