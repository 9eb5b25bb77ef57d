#include <glog/logging.h>

#include "inventory.h"
#include "modelcast/common/checksum.h"
#include "modelcast/coordinator/daemon.h"

namespace modelcast::coordinator {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::vector<std::string> Holders(const std::map<std::string, rpc::NodeInventory>& inv, const std::string& model,
                                 int tier) {
  std::vector<std::string> out;
  for (const auto& [node, i] : inv) {
    for (const auto& h : i.models) {
      if (h.model != model) continue;
      const auto& runs = tier == 0 ? h.ssd : tier == 1 ? h.host : h.gpu;
      if (!runs.empty()) out.push_back(node);
    }
  }
  return out;
}

}  // namespace

Result<CoordinatorConfig> CoordinatorConfig::FromConfig(const ConfigNode& node) {
  MC_RETURN_IF_ERROR(node.CheckKeys(
      {"address", "port", "state_dir", "heartbeat_interval", "heartbeat_deadline", "journal_compact_records", "security",
       "metrics", "serving"}));
  CoordinatorConfig c;
  MC_ASSIGN_OR_RETURN(c.address, node.GetString("address", c.address));
  MC_ASSIGN_OR_RETURN(int64_t port, node.GetInt("port", c.port));
  if (port < 0 || port > 65535) return node.Child("port")->Error("must be between 0 and 65535");
  c.port = static_cast<int>(port);
  MC_ASSIGN_OR_RETURN(std::string dir, node.GetString("state_dir"));
  c.state_dir = dir;
  MC_ASSIGN_OR_RETURN(c.heartbeat_interval, node.GetDuration("heartbeat_interval", c.heartbeat_interval));
  MC_ASSIGN_OR_RETURN(c.heartbeat_deadline, node.GetDuration("heartbeat_deadline", c.heartbeat_deadline));
  if (!(c.heartbeat_interval > 0)) return node.Child("heartbeat_interval")->Error("must be more than 0");
  if (!(c.heartbeat_deadline > c.heartbeat_interval)) {
    return node.Child("heartbeat_deadline")->Error("must be longer than heartbeat_interval");
  }
  MC_ASSIGN_OR_RETURN(c.journal_compact_records, node.GetInt("journal_compact_records", c.journal_compact_records));
  if (c.journal_compact_records < 100) return node.Child("journal_compact_records")->Error("must be at least 100");
  MC_ASSIGN_OR_RETURN(ConfigNode sec, node.Child("security"));
  MC_ASSIGN_OR_RETURN(c.security, rpc::SecurityConfig::FromConfig(sec));
  if (auto m = node.OptionalChild("metrics")) {
    MC_ASSIGN_OR_RETURN(c.metrics, rpc::MetricsConfig::FromConfig(*m));
  }
  if (auto sv = node.OptionalChild("serving")) {
    MC_ASSIGN_OR_RETURN(c.serving, ServingConfig::FromConfig(*sv));
  }
  return c;
}

Result<ServingConfig> ServingConfig::FromConfig(const ConfigNode& node) {
  MC_RETURN_IF_ERROR(node.CheckKeys(
      {"fabric", "http", "max_batch", "queue_timeout", "max_stages", "step_timeout", "pipelines", "emulate"}));
  ServingConfig c;
  c.enabled = true;
  c.fabric.name = "router";
  if (auto f = node.OptionalChild("fabric")) {
    MC_RETURN_IF_ERROR(f->CheckKeys({"listen", "tls", "net_devices"}));
    MC_ASSIGN_OR_RETURN(c.fabric.listen_address, f->GetString("listen", c.fabric.listen_address));
    MC_ASSIGN_OR_RETURN(c.fabric.tls, f->GetString("tls", ""));
    MC_ASSIGN_OR_RETURN(c.fabric.net_devices, f->GetString("net_devices", ""));
  }
  if (auto h = node.OptionalChild("http")) {
    MC_RETURN_IF_ERROR(h->CheckKeys({"address", "port", "threads"}));
    MC_ASSIGN_OR_RETURN(c.http_address, h->GetString("address", c.http_address));
    MC_ASSIGN_OR_RETURN(int64_t port, h->GetInt("port", 0));
    if (port < 0 || port > 65535) return h->Child("port")->Error("must be between 0 and 65535");
    c.http_port = static_cast<int>(port);
    MC_ASSIGN_OR_RETURN(int64_t threads, h->GetInt("threads", c.http_threads));
    if (threads < 1 || threads > 65536) return h->Child("threads")->Error("must be between 1 and 65536");
    c.http_threads = static_cast<int>(threads);
  }
  MC_ASSIGN_OR_RETURN(int64_t batch, node.GetInt("max_batch", c.max_batch));
  if (batch < 1 || batch > 1024) return node.Child("max_batch")->Error("must be between 1 and 1024");
  c.max_batch = static_cast<int>(batch);
  MC_ASSIGN_OR_RETURN(c.queue_timeout, node.GetDuration("queue_timeout", c.queue_timeout));
  if (!(c.queue_timeout > 0)) return node.Child("queue_timeout")->Error("must be more than 0");
  MC_ASSIGN_OR_RETURN(int64_t stages, node.GetInt("max_stages", c.max_stages));
  if (stages < 1 || stages > 64) return node.Child("max_stages")->Error("must be between 1 and 64");
  c.max_stages = static_cast<int>(stages);
  MC_ASSIGN_OR_RETURN(c.step_timeout, node.GetDuration("step_timeout", c.step_timeout));
  if (!(c.step_timeout > 0)) return node.Child("step_timeout")->Error("must be more than 0");
  MC_ASSIGN_OR_RETURN(c.pipelines, node.GetBool("pipelines", c.pipelines));
  if (auto e = node.OptionalChild("emulate")) {
    MC_RETURN_IF_ERROR(e->CheckKeys({"step", "token"}));
    MC_ASSIGN_OR_RETURN(c.emulated_step, e->GetDuration("step", 0));
    MC_ASSIGN_OR_RETURN(c.emulated_token, e->GetDuration("token", 0));
    if (!(c.emulated_step >= 0 && c.emulated_step <= 10)) return e->Child("step")->Error("must be 0 to 10s");
    if (!(c.emulated_token >= 0 && c.emulated_token <= 1)) return e->Child("token")->Error("must be 0 to 1s");
  }
  return c;
}

Result<std::unique_ptr<ClusterState>> ClusterState::Open(const ClusterConfig& cluster,
                                                         const CoordinatorConfig& config) {
  std::unique_ptr<ClusterState> s(new ClusterState(cluster, config));
  for (const auto& n : cluster.nodes) s->nodes_[n.name].config = n;
  std::error_code ec;
  fs::create_directories(config.state_dir, ec);
  if (ec) return IOError("coordinator: cannot create state_dir " + config.state_dir.string() + ": " + ec.message());
  JournalOpenReport report;
  MC_ASSIGN_OR_RETURN(s->journal_, Journal::Open(
                                       config.state_dir / "coordinator.journal",
                                       [&](const json& r) { return s->Replay(r); }, {}, &report));
  s->epoch_++;
  MC_RETURN_IF_ERROR(s->journal_->Append({{"op", "epoch"}, {"epoch", s->epoch_}}));
  {
    std::lock_guard lock(s->mu_);
    MC_RETURN_IF_ERROR(s->MaybeCompactLocked());
  }
  s->opened_ = std::chrono::steady_clock::now();
  s->worker_ = std::make_unique<TaskPool>(1);
  // Operations that were running when the previous coordinator stopped are picked up again:
  // a scale-out is reconciled with its agents once they rejoin (CheckLiveness), a scale-in is
  // done again (demoting is idempotent). None is left orphaned.
  size_t resumed = 0;
  {
    std::lock_guard lock(s->mu_);
    for (auto& [id, op] : s->operations_) {
      if (op.status.state != rpc::OperationState::RUNNING) continue;
      resumed++;
      op.start = std::chrono::steady_clock::now();
      if (op.status.kind == rpc::OperationKind::SCALE_OUT) {
        op.adopt = true;
        for (const auto& t : op.targets) {
          if (!op.lost.count(t)) s->SetInstanceLocked(op.status.model, t, rpc::InstanceState::LOADING);
        }
      } else {
        std::vector<std::pair<std::string, std::string>> release;
        for (const auto& t : op.targets) release.emplace_back(t, s->nodes_.at(t).rpc_address);
        s->worker_->Post([self = s.get(), id = id, release] { self->RunScaleIn(id, release); });
      }
    }
  }
  LOG(INFO) << "coordinator: epoch " << s->epoch_ << ", " << s->models_.size() << " model(s) and " << resumed
            << " running operation(s) from " << report.records << " journal record(s)";
  return s;
}

ClusterState::~ClusterState() {
  closing_ = true;
  worker_.reset();  // the task running finishes; queued ones return at once
}

// Replaying these gives the state as it is: the epoch, the models, every operation kept (its
// start, its latest replan, its end), then the instances as they are now (a finish replays no
// instances here: those it made may have gone since).
std::vector<json> ClusterState::SnapshotLocked() const {
  std::vector<json> records;
  records.push_back({{"op", "epoch"}, {"epoch", epoch_}});
  for (const auto& [name, m] : models_) {
    records.push_back({{"op", "register_model"}, {"name", name}, {"manifest", m.manifest_json}, {"keep_alive", m.keep_alive}});
  }
  std::vector<const Operation*> ops;
  for (const auto& [id, o] : operations_) ops.push_back(&o);
  std::sort(ops.begin(), ops.end(),
            [](const Operation* a, const Operation* b) { return a->status.created_unix < b->status.created_unix; });
  for (const Operation* o : ops) {
    records.push_back(OperationRecord(*o));
    if (o->attempt > 0) {
      records.push_back({{"op", "replan"},
                         {"id", o->status.id},
                         {"attempt", o->attempt},
                         {"channel", o->channel},
                         {"targets", o->targets},
                         {"lost", std::vector<std::string>(o->lost.begin(), o->lost.end())}});
    }
    if (o->status.state != rpc::OperationState::RUNNING && o->status.state != rpc::OperationState::PENDING) {
      records.push_back({{"op", "finish"},
                         {"id", o->status.id},
                         {"state", static_cast<int>(o->status.state)},
                         {"error", o->status.__isset.error ? o->status.error : ""},
                         {"instances", json::array()},
                         {"finished", o->status.__isset.finished_unix ? o->status.finished_unix : o->status.created_unix}});
    }
  }
  for (const auto& [model, by_node] : instances_) {
    for (const auto& [node, inst] : by_node) {
      records.push_back({{"op", "instance"},
                         {"model", model},
                         {"node", node},
                         {"state", static_cast<int>(inst.state)},
                         {"since", inst.since_unix}});
    }
  }
  return records;
}

json ClusterState::OperationRecord(const Operation& op) {
  return {{"op", "operation"},
          {"kind", op.status.kind == rpc::OperationKind::SCALE_IN ? "scale_in" : "scale_out"},
          {"id", op.status.id},
          {"model", op.status.model},
          {"replicas", op.status.replicas},
          {"sources", op.sources},
          {"targets", op.targets},
          {"algorithm", op.algorithm},
          {"deadline", op.deadline},
          {"channel", op.channel},
          {"request_id", op.request_id},
          {"created", op.status.created_unix}};
}

// The journal grows with every operation; it is rewritten as a snapshot once it holds more
// than journal_compact_records records, or twice what the last snapshot held when that is more
// (so that a large state is not rewritten after every operation). The rewrite is atomic: a
// crash leaves the old journal or the new one.
Status ClusterState::MaybeCompactLocked() {
  const uint64_t limit =
      std::max<uint64_t>(static_cast<uint64_t>(config_.journal_compact_records), 2 * snapshot_records_);
  if (journal_->records() <= limit) return Status::Ok();
  const uint64_t records = journal_->records(), bytes = journal_->bytes();
  const auto snapshot = SnapshotLocked();
  MC_RETURN_IF_ERROR(journal_->Compact(snapshot));
  snapshot_records_ = snapshot.size();
  compactions_++;
  LOG(INFO) << "coordinator: journal compacted from " << records << " records (" << bytes << " bytes) to "
            << snapshot.size() << " (" << journal_->bytes() << " bytes)";
  return Status::Ok();
}

Status ClusterState::Replay(const json& r) {
  const std::string op = r.value("op", "");
  if (op == "epoch") {
    epoch_ = std::max<int64_t>(epoch_, r.at("epoch").get<int64_t>());
  } else if (op == "register_model") {
    const std::string text = r.at("manifest").get<std::string>();
    MC_ASSIGN_OR_RETURN(model::Manifest m, model::Manifest::Parse(text, "journaled manifest"));
    models_[r.at("name").get<std::string>()] =
        Model{std::make_shared<const model::Manifest>(std::move(m)), text, r.at("keep_alive").get<double>()};
  } else if (op == "operation") {
    Operation o;
    o.status.id = r.at("id").get<std::string>();
    const bool scale_in = r.value("kind", "scale_out") == "scale_in";
    o.status.kind = scale_in ? rpc::OperationKind::SCALE_IN : rpc::OperationKind::SCALE_OUT;
    o.status.model = r.at("model").get<std::string>();
    if (!models_.count(o.status.model)) return InvalidArgument("journal operation of unknown model " + o.status.model);
    o.status.replicas = r.at("replicas").get<int32_t>();
    o.status.state = rpc::OperationState::RUNNING;
    o.status.created_unix = r.at("created").get<double>();
    o.status.__set_started_unix(o.status.created_unix);
    o.status.replans = 0;
    o.sources = r.value("sources", std::vector<std::string>{});
    o.targets = r.at("targets").get<std::vector<std::string>>();
    o.algorithm = r.value("algorithm", "lambdapipe");
    o.deadline = r.value("deadline", 600.0);
    o.channel = r.value("channel", 0);
    o.request_id = r.value("request_id", "");
    last_channel_ = std::max(last_channel_, o.channel);
    const auto nslices = static_cast<int32_t>(models_.at(o.status.model).manifest->slices.size());
    for (const auto* list : {&o.sources, &o.targets}) {
      for (const auto& n : *list) {
        if (!nodes_.count(n)) return InvalidArgument("journal operation " + o.status.id + " names unknown node " + n);
        AddProgressEntry(o, n, scale_in ? rpc::NodeRole::RELEASE : list == &o.sources ? rpc::NodeRole::SOURCE : rpc::NodeRole::TARGET, nslices);
      }
    }
    operations_[o.status.id] = std::move(o);
  } else if (op == "replan") {
    auto it = operations_.find(r.at("id").get<std::string>());
    if (it == operations_.end()) return InvalidArgument("journal replans unknown operation " + r.at("id").dump());
    Operation& o = it->second;
    o.attempt = r.at("attempt").get<int>();
    o.status.replans = o.attempt;
    o.channel = r.at("channel").get<int>();
    last_channel_ = std::max(last_channel_, o.channel);
    o.targets = r.at("targets").get<std::vector<std::string>>();
    const auto nslices = static_cast<int32_t>(models_.at(o.status.model).manifest->slices.size());
    for (const auto& n : o.targets) {
      if (!nodes_.count(n)) return InvalidArgument("journal replan names unknown node " + n);
      AddProgressEntry(o, n, rpc::NodeRole::TARGET, nslices);
    }
    for (const auto& n : r.at("lost").get<std::vector<std::string>>()) {
      if (!o.node_index.count(n)) return InvalidArgument("journal replan loses unknown node " + n);
      o.lost.insert(n);
      o.status.nodes[o.node_index[n]].state = rpc::NodeState::LOST;
    }
  } else if (op == "instance") {
    rpc::Instance inst;
    inst.model = r.at("model").get<std::string>();
    inst.node = r.at("node").get<std::string>();
    inst.state = static_cast<rpc::InstanceState::type>(r.at("state").get<int>());
    inst.since_unix = r.at("since").get<double>();
    instances_[inst.model][inst.node] = inst;
  } else if (op == "instance_removed") {
    auto it = instances_.find(r.at("model").get<std::string>());
    if (it != instances_.end()) {
      it->second.erase(r.at("node").get<std::string>());
      if (it->second.empty()) instances_.erase(it);
    }
  } else if (op == "finish") {
    auto it = operations_.find(r.at("id").get<std::string>());
    if (it == operations_.end()) return InvalidArgument("journal finishes unknown operation " + r.at("id").dump());
    it->second.status.state = static_cast<rpc::OperationState::type>(r.at("state").get<int>());
    it->second.status.__set_finished_unix(r.at("finished").get<double>());
    for (const auto& node : r.value("instances", std::vector<std::string>{})) {
      rpc::Instance inst;
      inst.model = it->second.status.model;
      inst.node = node;
      inst.state = rpc::InstanceState::LOCAL;
      inst.since_unix = it->second.status.finished_unix;
      instances_[inst.model][node] = inst;
    }
    if (!r.at("error").get<std::string>().empty()) it->second.status.__set_error(r.at("error").get<std::string>());
  } else {
    return InvalidArgument("unknown journal record '" + op + "'");
  }
  return Status::Ok();
}

rpc::ModelInfo ClusterState::InfoLocked(const std::string& name, const Model& m) const {
  rpc::ModelInfo info;
  const auto& man = *m.manifest;
  info.summary.name = name;
  info.summary.dtype = std::string(DTypeShortName(man.dtype));
  info.summary.num_layers = man.config.num_hidden_layers;
  info.summary.num_blocks = static_cast<int32_t>(man.blocks.size());
  info.summary.num_slices = static_cast<int32_t>(man.slices.size());
  info.summary.slice_bytes = static_cast<int64_t>(man.slice_bytes);
  info.summary.total_bytes = static_cast<int64_t>(man.TotalBytes());
  info.summary.parameters = man.config.ParameterCount();
  info.keep_alive_s = m.keep_alive;
  info.instances = 0;
  info.loading = 0;
  if (auto it = instances_.find(name); it != instances_.end()) {
    for (const auto& [node, inst] : it->second) {
      if (inst.state == rpc::InstanceState::LOCAL) info.instances++;
      if (inst.state == rpc::InstanceState::LOADING || inst.state == rpc::InstanceState::PIPELINE) info.loading++;
    }
  }
  std::map<std::string, rpc::NodeInventory> inv;
  for (const auto& [n, node] : nodes_) {
    if (AliveLocked(node)) inv[n] = node.inventory;
  }
  info.ssd_holders = Holders(inv, name, 0);
  info.host_holders = Holders(inv, name, 1);
  info.gpu_holders = Holders(inv, name, 2);
  for (const auto& [n, i] : inv) {
    for (const auto& h : i.models) {
      if (h.model == name && h.__isset.ssd_error) info.ssd_errors[n] = h.ssd_error;
    }
  }
  if (!info.ssd_errors.empty()) info.__isset.ssd_errors = true;
  return info;
}

Result<rpc::ModelInfo> ClusterState::RegisterModel(const std::string& name, const std::string& manifest_json,
                                                   std::optional<double> keep_alive) {
  if (name.empty()) return InvalidArgument("registerModel: the model name is empty");
  MC_ASSIGN_OR_RETURN(model::Manifest m, model::Manifest::Parse(manifest_json, "model '" + name + "' manifest"));
  if (m.name != name) {
    return InvalidArgument("registerModel: the manifest is of model '" + m.name + "', not '" + name + "'");
  }
  if (keep_alive && !(*keep_alive >= 0)) return InvalidArgument("registerModel: keep_alive_s must not be negative");
  const double ka = keep_alive.value_or(300);
  std::lock_guard lock(mu_);
  auto it = models_.find(name);
  if (it != models_.end()) {
    if (it->second.manifest->Serialize() == m.Serialize() && it->second.keep_alive == ka) {
      return InfoLocked(name, it->second);  // the same registration again: nothing to do
    }
    return AlreadyExists("model '" + name + "' is already registered with a different manifest or keep-alive");
  }
  MC_RETURN_IF_ERROR(
      journal_->Append({{"op", "register_model"}, {"name", name}, {"manifest", manifest_json}, {"keep_alive", ka}}));
  auto& entry = models_[name];
  entry = Model{std::make_shared<const model::Manifest>(std::move(m)), manifest_json, ka};
  LOG(INFO) << "coordinator: registered model '" << name << "'";
  return InfoLocked(name, entry);
}

std::vector<rpc::ModelInfo> ClusterState::ListModels() const {
  std::lock_guard lock(mu_);
  std::vector<rpc::ModelInfo> out;
  for (const auto& [name, m] : models_) out.push_back(InfoLocked(name, m));
  return out;
}

bool ClusterState::AliveLocked(const Node& n) const {
  return n.joined && std::chrono::duration<double>(std::chrono::steady_clock::now() - n.last_heartbeat).count() <=
                         config_.heartbeat_deadline;
}

Status ClusterState::Join(const rpc::JoinRequest& req) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(req.node);
  if (it == nodes_.end()) {
    return NotFound("node '" + req.node + "' is not in cluster '" + cluster_.name + "' (" +
                    std::to_string(nodes_.size()) + " nodes in its config)");
  }
  if (req.rpc_address.empty()) return InvalidArgument("join: node '" + req.node + "' gave no rpc_address");
  Node& n = it->second;
  n.joined = true;
  n.rpc_address = req.rpc_address;
  n.fabric_address = req.fabric_address;
  n.serving_address = req.__isset.serving_address ? req.serving_address : req.fabric_address;
  n.inventory = req.inventory;
  n.last_heartbeat = std::chrono::steady_clock::now();
  n.last_heartbeat_unix = UnixNow();
  LOG(INFO) << "coordinator: node '" << req.node << "' joined from " << req.rpc_address;
  // Reconcile: an instance the journal places here whose weights the node no longer holds
  // (its store was wiped, or it restarted without them) is gone.
  std::vector<std::string> gone;
  for (const auto& [model, by_node] : instances_) {
    auto it = by_node.find(req.node);
    if (it == by_node.end() || it->second.state == rpc::InstanceState::LOADING) continue;
    const auto nslices = static_cast<uint32_t>(models_.at(model).manifest->slices.size());
    if (CompleteTier(req.inventory, model, nslices) == Tier::kNone) gone.push_back(model);
  }
  for (const auto& model : gone) {
    LOG(WARNING) << "coordinator: node '" << req.node << "' rejoined without model '" << model
                 << "': its instance is gone";
    RemoveInstanceLocked(model, req.node);
  }
  return Status::Ok();
}

Result<bool> ClusterState::Heartbeat(const rpc::HeartbeatRequest& req) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(req.node);
  if (it == nodes_.end()) return NotFound("node '" + req.node + "' is not in cluster '" + cluster_.name + "'");
  Node& n = it->second;
  if (!n.joined || req.epoch != epoch_) return false;
  n.last_heartbeat = std::chrono::steady_clock::now();
  n.last_heartbeat_unix = UnixNow();
  if (req.__isset.inventory) n.inventory = req.inventory;
  return true;
}

std::string ClusterState::RenderMetrics() const {
  std::lock_guard lock(mu_);
  rpc::MetricsText m;
  int alive = 0;
  for (const auto& [name, n] : nodes_) alive += AliveLocked(n);
  m.Gauge("modelcast_nodes", "Nodes in the cluster config", static_cast<double>(nodes_.size()));
  m.Gauge("modelcast_nodes_alive", "Nodes whose agent heartbeats within the deadline", alive);
  m.Gauge("modelcast_models", "Registered models", static_cast<double>(models_.size()));
  std::map<std::string, int> states;
  for (const auto& [id, op] : operations_) states[rpc::to_string(op.status.state)]++;
  for (const auto& [state, count] : states) {
    m.Gauge("modelcast_operations", "Operations known to the coordinator, by state", count, "state=\"" + state + "\"");
  }
  m.Counter("modelcast_bytes_moved_total", "Bytes that targets reported received", static_cast<double>(bytes_moved_));
  m.Counter("modelcast_slices_moved_total", "Slices that targets reported received",
            static_cast<double>(slices_moved_));
  m.Counter("modelcast_operation_seconds_total", "Wall time of finished operations", operation_seconds_);
  m.Counter("modelcast_operations_finished_total", "Operations finished (succeeded or failed)",
            static_cast<double>(operations_finished_));
  m.Counter("modelcast_operation_errors_total", "Operations that failed", static_cast<double>(operation_errors_));
  m.Gauge("modelcast_journal_records", "Records in the coordinator's journal", static_cast<double>(journal_->records()));
  m.Gauge("modelcast_journal_bytes", "Size of the coordinator's journal", static_cast<double>(journal_->bytes()));
  m.Counter("modelcast_journal_compactions_total", "Times the journal was rewritten as a snapshot",
            static_cast<double>(compactions_));
  m.Counter("modelcast_rpc_refused_total", "Calls refused for missing or wrong credentials",
            static_cast<double>(refused_.load()));
  return m.text();
}

rpc::ClusterStatus ClusterState::GetStatus() const {
  std::lock_guard lock(mu_);
  rpc::ClusterStatus s;
  s.cluster = cluster_.name;
  for (const auto& [name, n] : nodes_) {
    rpc::NodeStatus ns;
    ns.name = name;
    ns.rpc_address = n.rpc_address;
    ns.alive = AliveLocked(n);
    ns.last_heartbeat_unix = n.last_heartbeat_unix;
    ns.inventory = n.inventory;
    if (n.measured_nic > 0) ns.__set_measured_nic_bytes_per_s(n.measured_nic);
    s.nodes.push_back(std::move(ns));
  }
  for (const auto& [name, m] : models_) s.models.push_back(InfoLocked(name, m));
  return s;
}

}  // namespace modelcast::coordinator
