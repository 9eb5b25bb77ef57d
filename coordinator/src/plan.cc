#include "modelcast/coord/plan.h"

#include <algorithm>

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
  return p;
}

}  // namespace modelcast::coord
