#include "modelcast/coord/plan.h"

#include <algorithm>
#include <cmath>
#include <set>

namespace modelcast::coord {

using nlohmann::json;

int64_t Plan::FirstPipelineTick() const {
  for (const auto& set : pipelines) {
    if (!set.pipelines.empty()) return set.tick;
  }
  return -1;
}

int64_t Plan::FirstFullTick() const {
  int64_t best = -1;
  for (int32_t f : full_at) {
    if (f >= 0 && (best < 0 || f < best)) best = f;
  }
  return best;
}

int64_t Plan::LastFullTick() const {
  int64_t worst = -1;
  for (int32_t f : full_at) worst = std::max<int64_t>(worst, f);
  return worst;
}

json Plan::ToJson() const {
  json j;
  j["algorithm"] = algorithm;
  j["nodes"] = node_names;
  j["slices"] = num_slices;
  j["blocks"] = num_blocks;
  j["reference_rate"] = reference_rate;
  j["tick_seconds"] = tick_seconds;
  j["ticks"] = num_ticks;
  json tr = json::array();
  for (const auto& t : transfers) {
    tr.push_back({t.tick, t.src, t.dst, t.slice, TierName(t.tier), t.duration});
  }
  j["transfer_fields"] = {"tick", "src", "dst", "slice", "tier", "duration"};
  j["transfers"] = std::move(tr);
  json ps = json::array();
  for (const auto& set : pipelines) {
    json list = json::array();
    for (const auto& p : set.pipelines) {
      json stages = json::array();
      for (const auto& s : p.stages) stages.push_back({s.node, s.first_block, s.end_block});
      list.push_back(std::move(stages));
    }
    ps.push_back({{"tick", set.tick}, {"pipelines", std::move(list)}});
  }
  j["pipelines"] = std::move(ps);
  j["full_at"] = full_at;
  j["notes"] = notes;
  if (!lost_slices.empty()) j["lost_slices"] = lost_slices;
  return j;
}

Result<Plan> Plan::FromJson(const json& j) {
  // Plans travel to agents: read defensively, with errors naming the field.
  Plan p;
  try {
    if (!j.is_object()) return InvalidArgument("plan: expected a JSON object");
    p.algorithm = j.at("algorithm").get<std::string>();
    p.node_names = j.at("nodes").get<std::vector<std::string>>();
    p.num_slices = j.at("slices").get<uint32_t>();
    p.num_blocks = j.at("blocks").get<uint32_t>();
    p.reference_rate = j.at("reference_rate").get<double>();
    p.tick_seconds = j.at("tick_seconds").get<double>();
    p.num_ticks = j.at("ticks").get<uint32_t>();
    for (const auto& t : j.at("transfers")) {
      if (!t.is_array() || t.size() != 6)
        return InvalidArgument("plan: a transfer is not [tick, src, dst, slice, tier, duration]");
      MC_ASSIGN_OR_RETURN(Tier tier, ParseTier(t[4].get<std::string>()));
      p.transfers.push_back({t[0].get<uint32_t>(), t[1].get<int32_t>(), t[2].get<int32_t>(), t[3].get<uint32_t>(), tier,
                             t[5].get<uint32_t>()});
    }
    for (const auto& set : j.at("pipelines")) {
      PipelineSet ps;
      ps.tick = set.at("tick").get<uint32_t>();
      for (const auto& pl : set.at("pipelines")) {
        Pipeline pipe;
        for (const auto& st : pl) {
          if (!st.is_array() || st.size() != 3)
            return InvalidArgument("plan: a stage is not [node, first_block, end_block]");
          pipe.stages.push_back({st[0].get<int32_t>(), st[1].get<uint32_t>(), st[2].get<uint32_t>()});
        }
        ps.pipelines.push_back(std::move(pipe));
      }
      p.pipelines.push_back(std::move(ps));
    }
    p.full_at = j.at("full_at").get<std::vector<int32_t>>();
    p.notes = j.value("notes", std::vector<std::string>{});
    p.lost_slices = j.value("lost_slices", std::vector<uint32_t>{});
  } catch (const json::exception& e) {
    return InvalidArgument(std::string("plan: ") + e.what());
  }
  MC_RETURN_IF_ERROR(p.CheckReferences());
  return p;
}

// The fabric and the coordinator index nodes, slices and blocks by what a plan says: every
// reference must exist before a plan read from elsewhere is used.
Status Plan::CheckReferences() const {
  const auto nodes = static_cast<int64_t>(node_names.size());
  if (nodes == 0) return InvalidArgument("plan: no nodes");
  std::set<std::string> names;
  for (const auto& n : node_names) {
    if (n.empty() || !names.insert(n).second) return InvalidArgument("plan: node names must be unique and non-empty");
  }
  if (!(std::isfinite(reference_rate) && reference_rate >= 0) || !(std::isfinite(tick_seconds) && tick_seconds >= 0)) {
    return InvalidArgument("plan: reference_rate and tick_seconds must be finite and not negative");
  }
  auto node_ok = [&](int64_t n) { return n >= 0 && n < nodes; };
  for (size_t i = 0; i < transfers.size(); ++i) {
    const Transfer& t = transfers[i];
    const std::string what = "plan: transfer " + std::to_string(i) + " ";
    if (!node_ok(t.src) || !node_ok(t.dst)) {
      return InvalidArgument(what + "names node " + std::to_string(node_ok(t.src) ? t.dst : t.src) + " of " +
                             std::to_string(nodes));
    }
    if (t.slice >= num_slices) {
      return InvalidArgument(what + "names slice " + std::to_string(t.slice) + " of " + std::to_string(num_slices));
    }
    if (t.duration == 0 || uint64_t{t.tick} + t.duration > num_ticks) {
      return InvalidArgument(what + "does not end within the plan's " + std::to_string(num_ticks) + " ticks");
    }
  }
  for (const auto& set : pipelines) {
    for (const auto& pipe : set.pipelines) {
      for (const auto& st : pipe.stages) {
        if (!node_ok(st.node) || st.first_block >= st.end_block || st.end_block > num_blocks) {
          return InvalidArgument("plan: a pipeline stage at tick " + std::to_string(set.tick) + " names node " +
                                 std::to_string(st.node) + ", blocks [" + std::to_string(st.first_block) + ", " +
                                 std::to_string(st.end_block) + ") of " + std::to_string(nodes) + " nodes and " +
                                 std::to_string(num_blocks) + " blocks");
        }
      }
    }
  }
  if (static_cast<int64_t>(full_at.size()) != nodes) {
    return InvalidArgument("plan: full_at has " + std::to_string(full_at.size()) + " entries for " +
                           std::to_string(nodes) + " nodes");
  }
  for (int32_t f : full_at) {
    if (f < -1) return InvalidArgument("plan: full_at holds " + std::to_string(f));
  }
  for (uint32_t s : lost_slices) {
    if (s >= num_slices) return InvalidArgument("plan: lost slice " + std::to_string(s) + " of " + std::to_string(num_slices));
  }
  return Status::Ok();
}

}  // namespace modelcast::coord
