#include "instance_table.h"

#include <glog/logging.h>

#include "inventory.h"

namespace modelcast::coordinator {
using nlohmann::json;

void InstanceTable::Record(const json& record) const {
  if (journal_ == nullptr) return;
  Status st = journal_->Append(record);
  if (!st.ok()) LOG(ERROR) << "coordinator: journaling an instance: " << st.message();
}

void InstanceTable::Set(const std::string& model, const std::string& node, InstanceState state, bool journal) {
  auto& inst = instances_[model][node];
  if (inst.node == node && inst.state == state) return;
  inst.model = model;
  inst.node = node;
  inst.state = state;
  inst.since_unix = UnixNow();
  if (state != InstanceState::kPipeline) inst.pipeline_id.reset();
  changed_();
  if (state == InstanceState::kLoading || !journal) return;
  Record({{"op", "instance"},
           {"model", model},
           {"node", node},
           {"state", static_cast<int>(state)},
           {"since", inst.since_unix}});
}

void InstanceTable::Remove(const std::string& model, const std::string& node) {
  auto m = instances_.find(model);
  if (m == instances_.end() || !m->second.count(node)) return;
  const bool journaled = m->second.at(node).state != InstanceState::kLoading;
  m->second.erase(node);
  if (m->second.empty()) instances_.erase(m);
  changed_();
  if (journaled) Record({{"op", "instance_removed"}, {"model", model}, {"node", node}});
}

bool InstanceTable::SetPipeline(const std::string& model, const std::vector<std::string>& nodes,
                                const std::string& pipeline_id) {
  auto m = instances_.find(model);
  if (m == instances_.end()) return false;
  for (const auto& n : nodes) {
    auto it = m->second.find(n);
    if (it == m->second.end()) continue;
    Instance& inst = it->second;
    if (!pipeline_id.empty() && inst.state == InstanceState::kLoading) {
      inst.state = InstanceState::kPipeline;
      inst.pipeline_id = pipeline_id;
      inst.since_unix = UnixNow();
    } else if (pipeline_id.empty() && inst.state == InstanceState::kPipeline) {
      inst.state = InstanceState::kLoading;
      inst.pipeline_id.reset();
    }
  }
  return true;
}

const InstanceTable::ByNode* InstanceTable::Of(const std::string& model) const {
  auto it = instances_.find(model);
  return it == instances_.end() ? nullptr : &it->second;
}

bool InstanceTable::Has(const std::string& model, const std::string& node) const {
  const ByNode* m = Of(model);
  return m != nullptr && m->count(node) > 0;
}

std::vector<Instance> InstanceTable::List(const std::string& model) const {
  std::vector<Instance> out;
  if (const ByNode* m = Of(model)) {
    for (const auto& [node, inst] : *m) out.push_back(inst);
  }
  return out;
}

void InstanceTable::Restore(Instance instance) {
  const std::string model = instance.model, node = instance.node;
  instances_[model][node] = std::move(instance);
}

Result<bool> InstanceTable::Replay(const json& r) {
  const std::string op = r.value("op", "");
  if (op == "instance") {
    Instance inst;
    inst.model = r.at("model").get<std::string>();
    inst.node = r.at("node").get<std::string>();
    const int state = r.at("state").get<int>();
    if (state < static_cast<int>(InstanceState::kLoading) || state > static_cast<int>(InstanceState::kDraining)) {
      return InvalidArgument("journal instance of model " + inst.model + " on " + inst.node + " has unknown state " +
                             std::to_string(state));
    }
    inst.state = static_cast<InstanceState>(state);
    inst.since_unix = r.at("since").get<double>();
    Restore(std::move(inst));
    return true;
  }
  if (op == "instance_removed") {
    auto it = instances_.find(r.at("model").get<std::string>());
    if (it != instances_.end()) {
      it->second.erase(r.at("node").get<std::string>());
      if (it->second.empty()) instances_.erase(it);
    }
    return true;
  }
  return false;
}

void InstanceTable::Snapshot(std::vector<json>& records) const {
  for (const auto& [model, by_node] : instances_) {
    for (const auto& [node, inst] : by_node) {
      records.push_back({{"op", "instance"},
                         {"model", model},
                         {"node", node},
                         {"state", static_cast<int>(inst.state)},
                         {"since", inst.since_unix}});
    }
  }
}

}  // namespace modelcast::coordinator
