#include <glog/logging.h>

#include <algorithm>

#include "cluster_state.h"
#include "etcd_client.h"
#include "etcd_log.h"
#include "inventory.h"
#include "modelcast/common/checksum.h"
#include "modelcast/common/file_util.h"

namespace modelcast::coordinator {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The coordinator's record log, timed: every write is made while the state's lock is held, so no
// heartbeat is heard meanwhile, and the nodes are not blamed for it (Membership::Deaf).
class DeafWhileWriting final : public RecordLog {
 public:
  DeafWhileWriting(std::unique_ptr<RecordLog> log, Membership* members) : log_(std::move(log)), members_(members) {}
  Status Append(const json& record) override {
    return Timed([&] { return log_->Append(record); });
  }
  Status Compact(const std::vector<json>& records) override {
    return Timed([&] { return log_->Compact(records); });
  }
  uint64_t records() const override { return log_->records(); }
  uint64_t bytes() const override { return log_->bytes(); }

 private:
  template <typename F>
  Status Timed(F&& write) {
    const auto t0 = std::chrono::steady_clock::now();
    Status st = write();
    const auto took = std::chrono::steady_clock::now() - t0;
    members_->Deaf(took);
    if (took > std::chrono::milliseconds(500)) {
      LOG(WARNING) << "coordinator: a state write took " << std::chrono::duration<double>(took).count()
                   << " s; no heartbeat was heard meanwhile, and none is missed for it";
    }
    return st;
  }
  std::unique_ptr<RecordLog> log_;
  Membership* members_;
};

// Live nodes holding some of `model` in `tier` (0: SSD, 1: host memory, 2: GPU).
std::vector<std::string> Holders(const Membership& members, const std::string& model, int tier) {
  std::vector<std::string> out;
  for (const auto& [name, n] : members.nodes()) {
    if (!members.Alive(n)) continue;
    for (const auto& h : n.inventory.models) {
      if (h.model != model) continue;
      const auto& runs = tier == 0 ? h.ssd : tier == 1 ? h.host : h.gpu;
      if (!runs.empty()) out.push_back(name);
    }
  }
  return out;
}

}  // namespace

Result<CoordinatorConfig> CoordinatorConfig::FromConfig(const ConfigNode& node) {
  MC_RETURN_IF_ERROR(node.CheckKeys(
      {"address", "port", "state_dir", "heartbeat_interval", "heartbeat_deadline", "journal_compact_records", "security",
       "metrics", "serving", "state"}));
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
  if (auto st = node.OptionalChild("state")) {
    MC_RETURN_IF_ERROR(st->CheckKeys({"etcd"}));
    MC_ASSIGN_OR_RETURN(ConfigNode etcd, st->Child("etcd"));
    MC_RETURN_IF_ERROR(etcd.CheckKeys({"endpoints", "prefix", "timeout", "lease"}));
    MC_ASSIGN_OR_RETURN(ConfigNode eps, etcd.Child("endpoints"));
    if (!eps.IsSequence()) return eps.Error("must be a list of host:port");
    MC_ASSIGN_OR_RETURN(auto items, eps.Elements());
    for (const auto& e : items) {
      MC_ASSIGN_OR_RETURN(std::string ep, e.AsString());
      c.etcd_endpoints.push_back(ep);
    }
    if (c.etcd_endpoints.empty()) return eps.Error("must name at least one etcd member");
    // Checked here, so that a malformed list is named with its line, not at the first call.
    if (auto client = EtcdClient::Create(c.etcd_endpoints); !client.ok()) return eps.Error(client.status().message());
    MC_ASSIGN_OR_RETURN(c.etcd_prefix, etcd.GetString("prefix"));
    if (c.etcd_prefix.empty() || c.etcd_prefix.front() != '/' || c.etcd_prefix.back() == '/') {
      return etcd.Child("prefix")->Error("must start with '/' and not end with it");
    }
    MC_ASSIGN_OR_RETURN(c.etcd_timeout, etcd.GetDuration("timeout", c.etcd_timeout));
    if (!(c.etcd_timeout > 0 && c.etcd_timeout <= 60)) return etcd.Child("timeout")->Error("must be more than 0, at most 60s");
    MC_ASSIGN_OR_RETURN(double lease, etcd.GetDuration("lease", static_cast<double>(c.etcd_lease)));
    if (!(lease >= 1 && lease <= 600) || lease != static_cast<double>(static_cast<int64_t>(lease))) {
      return etcd.Child("lease")->Error("must be whole seconds, 1s to 600s");
    }
    c.etcd_lease = static_cast<int64_t>(lease);
  }
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
      {"fabric", "http", "max_batch", "queue_timeout", "max_stages", "step_timeout", "pipelines", "lookahead", "emulate"}));
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
  MC_ASSIGN_OR_RETURN(c.lookahead, node.GetDuration("lookahead", c.lookahead));
  if (!(c.lookahead >= 0 && c.lookahead <= 60)) return node.Child("lookahead")->Error("must be 0 to 60s");
  if (auto e = node.OptionalChild("emulate")) {
    MC_RETURN_IF_ERROR(e->CheckKeys({"step", "token"}));
    MC_ASSIGN_OR_RETURN(c.emulated_step, e->GetDuration("step", 0));
    MC_ASSIGN_OR_RETURN(c.emulated_token, e->GetDuration("token", 0));
    if (!(c.emulated_step >= 0 && c.emulated_step <= 10)) return e->Child("step")->Error("must be 0 to 10s");
    if (!(c.emulated_token >= 0 && c.emulated_token <= 1)) return e->Child("token")->Error("must be 0 to 1s");
  }
  return c;
}

ClusterState::ClusterState(planner::ClusterConfig cluster, CoordinatorConfig config)
    : cluster_(std::move(cluster)),
      config_(std::move(config)),
      members_(cluster_, config_.heartbeat_deadline),
      instances_([this] { PokeServing(); }) {}

Result<std::unique_ptr<ClusterState>> ClusterState::Open(const planner::ClusterConfig& cluster,
                                                         const CoordinatorConfig& config, const EtcdFence& fence) {
  std::unique_ptr<ClusterState> s(new ClusterState(cluster, config));
  std::error_code ec;
  fs::create_directories(config.state_dir, ec);
  if (ec) return IOError("coordinator: cannot create state_dir " + config.state_dir.string() + ": " + ec.message());
  JournalOpenReport report;
  const auto replay = [&](const json& r) { return s->Replay(r); };
  if (!config.etcd_endpoints.empty()) {
    MC_ASSIGN_OR_RETURN(std::shared_ptr<EtcdClient> etcd, EtcdClient::Create(config.etcd_endpoints, config.etcd_timeout));
    // An etcd nobody answers is an error at start, naming the members tried.
    MC_ASSIGN_OR_RETURN(auto version, etcd->Version());
    MC_ASSIGN_OR_RETURN(auto log, EtcdLog::Open(etcd, config.etcd_prefix, replay, &report));
    if (!fence.key.empty()) log->Fence(fence.key, fence.create_revision);
    s->journal_ = std::make_unique<DeafWhileWriting>(std::move(log), &s->members_);
    LOG(INFO) << "coordinator: state in etcd " << version << " under '" << config.etcd_prefix << "/'";
  } else {
    MC_ASSIGN_OR_RETURN(auto journal, Journal::Open(config.state_dir / "coordinator.journal", replay, {}, &report));
    s->journal_ = std::make_unique<DeafWhileWriting>(std::move(journal), &s->members_);
  }
  s->instances_.AttachJournal(s->journal_.get());
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
    for (auto& [id, op] : s->ops_.all()) {
      if (!op.running()) continue;
      resumed++;
      op.start = std::chrono::steady_clock::now();
      if (op.status.kind == OperationKind::kScaleOut) {
        op.adopt = true;
        for (const auto& t : op.targets) {
          if (!op.lost.count(t)) s->instances_.Set(op.status.model, t, InstanceState::kLoading);
        }
      } else {
        std::vector<std::pair<std::string, std::string>> release;
        for (const auto& t : op.targets) release.emplace_back(t, s->members_.at(t).rpc_address);
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

// Replaying these gives the state as it is: the epoch, the models, every operation kept, then
// the instances as they are now.
std::vector<json> ClusterState::SnapshotLocked() const {
  std::vector<json> records;
  records.push_back({{"op", "epoch"}, {"epoch", epoch_}});
  for (const auto& [name, m] : models_) records.push_back(RegisterRecordLocked(name, m));
  ops_.Snapshot(records);
  instances_.Snapshot(records);
  return records;
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
    return Status::Ok();
  }
  if (op == "register_model") {
    MC_ASSIGN_OR_RETURN(Registration reg, ParseRegistration(r));
    auto files = r.contains("text_files") ? reg.text_files : LoadTextFilesLocked(reg.name, reg.manifest);
    models_[reg.name] = Model{std::make_shared<const model::Manifest>(std::move(reg.manifest)), reg.manifest_json,
                              reg.keep_alive, files};
    return Status::Ok();
  }
  const OperationTable::ReplayContext ctx{
      [this](const std::string& model) -> std::optional<int32_t> {
        if (!models_.count(model)) return std::nullopt;
        return SlicesLocked(model);
      },
      [this](const std::string& node) { return members_.Has(node); }};
  MC_ASSIGN_OR_RETURN(bool operation, ops_.Replay(r, ctx));
  if (operation) {
    if (op != "finish") return Status::Ok();
    // The targets that became instances when it finished.
    const Operation& o = *ops_.Find(r.at("id").get<std::string>());
    for (const auto& node : r.value("instances", std::vector<std::string>{})) {
      instances_.Restore({o.status.model, node, InstanceState::kLocal, std::nullopt, *o.status.finished_unix});
    }
    return Status::Ok();
  }
  MC_ASSIGN_OR_RETURN(bool instance, instances_.Replay(r));
  if (instance) return Status::Ok();
  return InvalidArgument("unknown journal record '" + op + "'");
}

ModelReport ClusterState::ReportLocked(const std::string& name, const Model& m) const {
  ModelReport r;
  r.name = name;
  r.manifest = m.manifest;
  r.keep_alive = m.keep_alive;
  if (const auto* by_node = instances_.Of(name)) {
    for (const auto& [node, inst] : *by_node) {
      if (inst.state == InstanceState::kLocal) r.instances++;
      if (inst.state == InstanceState::kLoading || inst.state == InstanceState::kPipeline) r.loading++;
    }
  }
  r.ssd_holders = Holders(members_, name, 0);
  r.host_holders = Holders(members_, name, 1);
  r.gpu_holders = Holders(members_, name, 2);
  for (const auto& [n, node] : members_.nodes()) {
    if (!members_.Alive(node)) continue;
    for (const auto& h : node.inventory.models) {
      if (h.model == name && h.__isset.ssd_error) r.ssd_errors[n] = h.ssd_error;
    }
  }
  return r;
}

namespace {

fs::path TextFileDir(const fs::path& state_dir, const std::string& model) { return state_dir / "models" / model; }

// The file `f` as the manifest lists it, or why `bytes` is not it.
Status CheckTextFile(const model::TextFileEntry& f, const std::string& bytes, const std::string& model) {
  if (bytes.size() != f.bytes || Xxh3(bytes.data(), bytes.size()) != f.xxh3) {
    return InvalidArgument("registerModel: " + f.name + " of model '" + model +
                           "' differs from its manifest's size and checksum");
  }
  return Status::Ok();
}

}  // namespace

Result<ModelReport> ClusterState::RegisterModel(const std::string& name, const std::string& manifest_json,
                                                std::optional<double> keep_alive, const TextFiles& text_files) {
  if (name.empty()) return InvalidArgument("registerModel: the model name is empty");
  if (name.find('/') != std::string::npos || name[0] == '.') {
    return InvalidArgument("registerModel: the model name '" + name + "' has a '/' or starts with '.'");
  }
  MC_ASSIGN_OR_RETURN(model::Manifest m, model::Manifest::Parse(manifest_json, "model '" + name + "' manifest"));
  if (m.name != name) {
    return InvalidArgument("registerModel: the manifest is of model '" + m.name + "', not '" + name + "'");
  }
  if (keep_alive && !(*keep_alive >= 0)) return InvalidArgument("registerModel: keep_alive_s must not be negative");
  for (const auto& [file, bytes] : text_files) {
    auto it = std::find_if(m.text_files.begin(), m.text_files.end(), [&](const auto& f) { return f.name == file; });
    if (it == m.text_files.end()) {
      return InvalidArgument("registerModel: " + file + " is not among the text files model '" + name +
                             "''s manifest lists");
    }
    MC_RETURN_IF_ERROR(CheckTextFile(*it, bytes, name));
  }
  for (const auto& f : m.text_files) {
    if (!text_files.count(f.name)) {
      return InvalidArgument("registerModel: model '" + name + "''s manifest lists " + f.name +
                             ", which the request does not carry");
    }
  }
  const double ka = keep_alive.value_or(300);
  std::lock_guard lock(mu_);
  auto it = models_.find(name);
  if (it != models_.end()) {
    if (it->second.manifest->Serialize() == m.Serialize() && it->second.keep_alive == ka) {
      return ReportLocked(name, it->second);  // the same registration again: nothing to do
    }
    return AlreadyExists("model '" + name + "' is already registered with a different manifest or keep-alive");
  }
  // The text files first (a restart reads them back), then the journal record; with the state
  // in etcd they are in the record.
  std::shared_ptr<const TextFiles> files;
  if (!text_files.empty()) files = std::make_shared<const TextFiles>(text_files);
  if (!text_files.empty() && config_.etcd_endpoints.empty()) {
    const fs::path dir = TextFileDir(config_.state_dir, name);
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return IOError("registerModel: cannot create " + dir.string() + ": " + ec.message());
    for (const auto& [file, bytes] : text_files) MC_RETURN_IF_ERROR(WriteFileAtomic(dir / file, bytes));
  }
  Model entry{std::make_shared<const model::Manifest>(std::move(m)), manifest_json, ka, std::move(files)};
  MC_RETURN_IF_ERROR(journal_->Append(RegisterRecordLocked(name, entry)));
  models_[name] = std::move(entry);
  LOG(INFO) << "coordinator: registered model '" << name << "'";
  return ReportLocked(name, models_.at(name));
}

std::shared_ptr<const ClusterState::TextFiles> ClusterState::LoadTextFilesLocked(const std::string& name,
                                                                                 const model::Manifest& m) const {
  if (m.text_files.empty()) return nullptr;
  auto files = std::make_shared<TextFiles>();
  for (const auto& f : m.text_files) {
    const fs::path path = TextFileDir(config_.state_dir, name) / f.name;
    auto bytes = ReadFileToString(path, 1ull << 30);
    Status st = bytes.ok() ? CheckTextFile(f, *bytes, name) : bytes.status();
    if (!st.ok()) {
      LOG(WARNING) << "coordinator: model '" << name << "' is served without its text files: " << path.string()
                   << ": " << st.message();
      return nullptr;
    }
    (*files)[f.name] = std::move(*bytes);
  }
  return files;
}

json ClusterState::RegisterRecordLocked(const std::string& name, const Model& m) const {
  json r{{"op", "register_model"}, {"name", name}, {"manifest", m.manifest_json}, {"keep_alive", m.keep_alive}};
  if (!config_.etcd_endpoints.empty() && m.text_files) {
    json files = json::object();
    for (const auto& [file, bytes] : *m.text_files) files[file] = Base64Encode(bytes);
    r["text_files"] = std::move(files);
  }
  return r;
}

Result<ClusterState::Registration> ClusterState::ParseRegistration(const json& r) {
  Registration reg;
  try {
    reg.name = r.at("name").get<std::string>();
    reg.manifest_json = r.at("manifest").get<std::string>();
    reg.keep_alive = r.at("keep_alive").get<double>();
  } catch (const json::exception& e) {
    return Corruption(std::string("a model's registration record: ") + e.what());
  }
  MC_ASSIGN_OR_RETURN(reg.manifest, model::Manifest::Parse(reg.manifest_json, "journaled manifest"));
  if (!r.contains("text_files") || reg.manifest.text_files.empty()) return reg;
  const auto& recorded = r.at("text_files");
  auto files = std::make_shared<TextFiles>();
  for (const auto& f : reg.manifest.text_files) {
    if (!recorded.is_object() || !recorded.contains(f.name) || !recorded.at(f.name).is_string()) {
      return Corruption("model '" + reg.name + "''s registration record lacks its text file " + f.name);
    }
    auto bytes = Base64Decode(recorded.at(f.name).get<std::string>());
    if (!bytes.ok()) return Corruption("model '" + reg.name + "''s text file " + f.name + ": " + bytes.status().message());
    MC_RETURN_IF_ERROR(CheckTextFile(f, *bytes, reg.name));
    (*files)[f.name] = std::move(*bytes);
  }
  reg.text_files = files;
  return reg;
}

std::shared_ptr<const ClusterState::TextFiles> ClusterState::FindTextFiles(const std::string& model) const {
  std::lock_guard lock(mu_);
  auto it = models_.find(model);
  return it == models_.end() ? nullptr : it->second.text_files;
}

std::vector<ModelReport> ClusterState::ListModels() const {
  std::lock_guard lock(mu_);
  std::vector<ModelReport> out;
  for (const auto& [name, m] : models_) out.push_back(ReportLocked(name, m));
  return out;
}

Status ClusterState::Join(const JoinArgs& args) {
  std::lock_guard lock(mu_);
  MC_RETURN_IF_ERROR(members_.Join(args));
  // Reconcile: an instance the journal places here whose weights the node no longer holds
  // (its store was wiped, or it restarted without them) is gone.
  std::vector<std::string> gone;
  for (const auto& [model, by_node] : instances_.all()) {
    auto it = by_node.find(args.node);
    if (it == by_node.end() || it->second.state == InstanceState::kLoading) continue;
    if (CompleteTier(args.inventory, model, static_cast<uint32_t>(SlicesLocked(model))) == Tier::kNone) {
      gone.push_back(model);
    }
  }
  for (const auto& model : gone) {
    LOG(WARNING) << "coordinator: node '" << args.node << "' rejoined without model '" << model
                 << "': its instance is gone";
    instances_.Remove(model, args.node);
  }
  return Status::Ok();
}

Result<bool> ClusterState::Heartbeat(const HeartbeatArgs& args) {
  std::lock_guard lock(mu_);
  return members_.Heartbeat(args, epoch_);
}

std::string ClusterState::RenderMetrics() const {
  std::lock_guard lock(mu_);
  rpc::MetricsText m;
  int alive = 0;
  for (const auto& [name, n] : members_.nodes()) alive += members_.Alive(n);
  m.Gauge("modelcast_nodes", "Nodes in the cluster config", static_cast<double>(members_.size()));
  m.Gauge("modelcast_nodes_alive", "Nodes whose agent heartbeats within the deadline", alive);
  m.Gauge("modelcast_models", "Registered models", static_cast<double>(models_.size()));
  std::map<std::string, int> states;
  for (const auto& [id, op] : ops_.all()) states[NameOf(op.status.state)]++;
  for (const auto& [state, count] : states) {
    m.Gauge("modelcast_operations", "Operations known to the coordinator, by state", count, "state=\"" + state + "\"");
  }
  const auto& t = ops_.totals();
  m.Counter("modelcast_bytes_moved_total", "Bytes that targets reported received", static_cast<double>(t.bytes_moved));
  m.Counter("modelcast_slices_moved_total", "Slices that targets reported received",
            static_cast<double>(t.slices_moved));
  m.Counter("modelcast_operation_seconds_total", "Wall time of finished operations", t.seconds);
  m.Counter("modelcast_operations_finished_total", "Operations finished (succeeded or failed)",
            static_cast<double>(t.finished));
  m.Counter("modelcast_operation_errors_total", "Operations that failed", static_cast<double>(t.errors));
  m.Gauge("modelcast_journal_records", "Records in the coordinator's journal", static_cast<double>(journal_->records()));
  m.Gauge("modelcast_journal_bytes", "Size of the coordinator's journal", static_cast<double>(journal_->bytes()));
  m.Counter("modelcast_journal_compactions_total", "Times the journal was rewritten as a snapshot",
            static_cast<double>(compactions_));
  m.Counter("modelcast_rpc_refused_total", "Calls refused for missing or wrong credentials",
            static_cast<double>(refused_.load()));
  return m.text();
}

ClusterReport ClusterState::GetStatus() const {
  std::lock_guard lock(mu_);
  ClusterReport s;
  s.cluster = cluster_.name;
  for (const auto& [name, n] : members_.nodes()) s.nodes.push_back(members_.Report(name));
  for (const auto& [name, m] : models_) s.models.push_back(ReportLocked(name, m));
  return s;
}

}  // namespace modelcast::coordinator
