#include "operation_table.h"

#include <algorithm>

#include "inventory.h"

namespace modelcast::coordinator {
using nlohmann::json;

bool Operation::IsTarget(const std::string& node) const {
  return std::find(targets.begin(), targets.end(), node) != targets.end();
}

void Operation::AddNode(const std::string& node, NodeRole role, int32_t nslices) {
  if (node_index.count(node)) return;
  NodeProgress np;
  np.node = node;
  np.role = role;
  np.slices_total = role == NodeRole::kTarget ? nslices : 0;
  np.state = role == NodeRole::kRelease ? NodeState::kDraining : NodeState::kWaiting;
  node_index[node] = status.nodes.size();
  status.nodes.push_back(std::move(np));
}

std::map<std::string, double> Operation::BestLinks() {
  std::map<std::string, double> best;
  for (const auto& [link, ends] : links) {
    double rate = 0;  // the lower of the two ends' figures (each can only overstate it)
    for (const auto& [bytes, seconds] : ends) {
      if (bytes < kMinLinkSample || !(seconds > 0)) continue;
      const double r = static_cast<double>(bytes) / seconds;
      rate = rate > 0 ? std::min(rate, r) : r;
    }
    if (rate <= 0) continue;
    for (const std::string& n : {link.first, link.second}) best[n] = std::max(best[n], rate);
  }
  for (const auto& [name, rate] : best) {
    if (node_index.count(name)) progress(name).link_bytes_per_s = rate;
  }
  return best;
}

Operation* OperationTable::Find(const std::string& id) {
  auto it = ops_.find(id);
  return it == ops_.end() ? nullptr : &it->second;
}

const Operation* OperationTable::Find(const std::string& id) const {
  auto it = ops_.find(id);
  return it == ops_.end() ? nullptr : &it->second;
}

void OperationTable::Start(Operation& op, int64_t epoch, OperationKind kind, const std::string& model,
                           int32_t replicas) {
  // A coordinator that scales all day must not grow without bound.
  std::vector<std::pair<double, std::string>> finished;
  for (const auto& [id, o] : ops_) {
    if (!Unfinished(o.status.state)) finished.emplace_back(o.status.finished_unix.value_or(o.status.created_unix), id);
  }
  if (finished.size() >= kKept) {
    std::sort(finished.begin(), finished.end());
    for (size_t i = 0; i + kKept <= finished.size(); ++i) ops_.erase(finished[i].second);
  }
  op.start = std::chrono::steady_clock::now();
  op.status.id = "op-" + std::to_string(epoch) + "-" + std::to_string(next_++);
  op.status.kind = kind;
  op.status.model = model;
  op.status.replicas = replicas;
  op.status.state = OperationState::kRunning;
  op.status.created_unix = UnixNow();
  op.status.started_unix = op.status.created_unix;
  op.status.replans = 0;
}

Operation& OperationTable::Add(Operation op) {
  const std::string id = op.status.id;
  return ops_[id] = std::move(op);
}

int OperationTable::NextChannel() {
  std::set<int> busy;
  for (const auto& [id, op] : ops_) {
    if (op.running()) busy.insert(op.channel);
  }
  // Round robin, so that a channel comes back only after 254 others (an agent drops the tail
  // of a finished operation's messages for a few seconds after it closes the channel).
  for (int i = 0; i < 255; ++i) {
    last_channel_ = last_channel_ % 255 + 1;
    if (!busy.count(last_channel_)) return last_channel_;
  }
  return 0;
}

const Operation* OperationTable::RunningFor(const std::string& model) const {
  for (const auto& [id, op] : ops_) {
    if (op.status.model == model && op.running()) return &op;
  }
  return nullptr;
}

Result<const Operation*> OperationTable::Repeated(const std::string& request_id, OperationKind kind,
                                                  const std::string& model, const char* method) const {
  if (request_id.empty()) return nullptr;
  for (const auto& [id, op] : ops_) {
    if (op.request_id != request_id) continue;
    if (op.status.kind != kind || op.status.model != model) {
      return InvalidArgument(std::string(method) + ": request_id '" + request_id + "' already named " + id + " (a " +
                             (op.status.kind == OperationKind::kScaleOut ? "scale-out" : "scale-in") + " of '" +
                             op.status.model + "')");
    }
    return &op;
  }
  return nullptr;
}

void OperationTable::Finish(Operation& op, OperationState state, const std::string& error) {
  op.status.state = state;
  op.status.finished_unix = UnixNow();
  totals_.finished++;
  if (state != OperationState::kSucceeded) totals_.errors++;
  totals_.seconds += *op.status.finished_unix - op.status.created_unix;
  if (!error.empty()) op.status.error = error;
}

json OperationTable::StartRecord(const Operation& op) {
  return {{"op", "operation"},
          {"kind", op.status.kind == OperationKind::kScaleIn ? "scale_in" : "scale_out"},
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

json OperationTable::ReplanRecord(const Operation& op) {
  return {{"op", "replan"},
          {"id", op.status.id},
          {"attempt", op.attempt},
          {"channel", op.channel},
          {"targets", op.targets},
          {"lost", std::vector<std::string>(op.lost.begin(), op.lost.end())}};
}

json OperationTable::FinishRecord(const Operation& op, const std::vector<std::string>& instances) {
  return {{"op", "finish"},
          {"id", op.status.id},
          {"state", static_cast<int>(op.status.state)},
          {"error", op.status.error.value_or("")},
          {"instances", instances},
          {"finished", op.status.finished_unix.value_or(op.status.created_unix)}};
}

Result<bool> OperationTable::Replay(const json& r, const ReplayContext& ctx) {
  const std::string kind = r.value("op", "");
  if (kind == "operation") {
    Operation o;
    o.status.id = r.at("id").get<std::string>();
    const bool scale_in = r.value("kind", "scale_out") == "scale_in";
    o.status.kind = scale_in ? OperationKind::kScaleIn : OperationKind::kScaleOut;
    o.status.model = r.at("model").get<std::string>();
    const auto nslices = ctx.slices_of(o.status.model);
    if (!nslices) return InvalidArgument("journal operation of unknown model " + o.status.model);
    o.status.replicas = r.at("replicas").get<int32_t>();
    o.status.state = OperationState::kRunning;
    o.status.created_unix = r.at("created").get<double>();
    o.status.started_unix = o.status.created_unix;
    o.sources = r.value("sources", std::vector<std::string>{});
    o.targets = r.at("targets").get<std::vector<std::string>>();
    o.algorithm = r.value("algorithm", "lambdapipe");
    o.deadline = r.value("deadline", 600.0);
    o.channel = r.value("channel", 0);
    o.request_id = r.value("request_id", "");
    last_channel_ = std::max(last_channel_, o.channel);
    for (const auto* list : {&o.sources, &o.targets}) {
      for (const auto& n : *list) {
        if (!ctx.has_node(n)) return InvalidArgument("journal operation " + o.status.id + " names unknown node " + n);
        o.AddNode(n, scale_in ? NodeRole::kRelease : list == &o.sources ? NodeRole::kSource : NodeRole::kTarget,
                  *nslices);
      }
    }
    Add(std::move(o));
    return true;
  }
  if (kind == "replan") {
    Operation* o = Find(r.at("id").get<std::string>());
    if (o == nullptr) return InvalidArgument("journal replans unknown operation " + r.at("id").dump());
    o->attempt = r.at("attempt").get<int>();
    o->status.replans = o->attempt;
    o->channel = r.at("channel").get<int>();
    last_channel_ = std::max(last_channel_, o->channel);
    o->targets = r.at("targets").get<std::vector<std::string>>();
    const int32_t nslices = ctx.slices_of(o->status.model).value_or(0);
    for (const auto& n : o->targets) {
      if (!ctx.has_node(n)) return InvalidArgument("journal replan names unknown node " + n);
      o->AddNode(n, NodeRole::kTarget, nslices);
    }
    for (const auto& n : r.at("lost").get<std::vector<std::string>>()) {
      if (!o->node_index.count(n)) return InvalidArgument("journal replan loses unknown node " + n);
      o->lost.insert(n);
      o->progress(n).state = NodeState::kLost;
    }
    return true;
  }
  if (kind == "finish") {
    Operation* o = Find(r.at("id").get<std::string>());
    if (o == nullptr) return InvalidArgument("journal finishes unknown operation " + r.at("id").dump());
    const int state = r.at("state").get<int>();
    if (state < static_cast<int>(OperationState::kPending) || state > static_cast<int>(OperationState::kCancelled)) {
      return InvalidArgument("journal finishes operation " + o->status.id + " in unknown state " +
                             std::to_string(state));
    }
    o->status.state = static_cast<OperationState>(state);
    o->status.finished_unix = r.at("finished").get<double>();
    if (!r.at("error").get<std::string>().empty()) o->status.error = r.at("error").get<std::string>();
    return true;
  }
  return false;
}

void OperationTable::Snapshot(std::vector<json>& records) const {
  std::vector<const Operation*> ops;
  for (const auto& [id, o] : ops_) ops.push_back(&o);
  std::sort(ops.begin(), ops.end(),
            [](const Operation* a, const Operation* b) { return a->status.created_unix < b->status.created_unix; });
  for (const Operation* o : ops) {
    records.push_back(StartRecord(*o));
    if (o->attempt > 0) records.push_back(ReplanRecord(*o));
    // A finish replays no instances here: those it made may have gone since (the instance
    // table's own records say what is now).
    if (!Unfinished(o->status.state)) records.push_back(FinishRecord(*o, {}));
  }
}

}  // namespace modelcast::coordinator
