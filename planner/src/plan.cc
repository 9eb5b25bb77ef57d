#include "modelcast/planner/plan.h"

#include <algorithm>
#include <cmath>
#include <set>

namespace modelcast::planner {

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

namespace {

// An integer field within [lo, hi]; anything else (a float, a string, a number out of range,
// which nlohmann would convert with undefined behaviour) is refused naming the field.
Result<int64_t> Int(const json& v, const std::string& what, int64_t lo, int64_t hi) {
  bool ok = false;
  int64_t x = 0;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    ok = u <= static_cast<uint64_t>(hi);
    x = ok ? static_cast<int64_t>(u) : 0;
  } else if (v.is_number_integer()) {
    x = v.get<int64_t>();
    ok = x >= lo && x <= hi;
  }
  if (!ok || x < lo) {
    return InvalidArgument("plan: " + what + " must be an integer from " + std::to_string(lo) + " to " +
                           std::to_string(hi) + ", got " + v.dump().substr(0, 40));
  }
  return x;
}

constexpr int64_t kU32 = 0xffffffffll;
constexpr int64_t kI32 = 0x7fffffffll;

}  // namespace

Result<Plan> Plan::FromJson(const json& j) {
  // Plans travel to agents: read defensively, with errors naming the field.
  Plan p;
  try {
    if (!j.is_object()) return InvalidArgument("plan: expected a JSON object");
    p.algorithm = j.at("algorithm").get<std::string>();
    p.node_names = j.at("nodes").get<std::vector<std::string>>();
    MC_ASSIGN_OR_RETURN(const int64_t slices, Int(j.at("slices"), "slices", 0, kU32));
    MC_ASSIGN_OR_RETURN(const int64_t blocks, Int(j.at("blocks"), "blocks", 0, kU32));
    MC_ASSIGN_OR_RETURN(const int64_t ticks, Int(j.at("ticks"), "ticks", 0, kU32));
    p.num_slices = static_cast<uint32_t>(slices);
    p.num_blocks = static_cast<uint32_t>(blocks);
    p.num_ticks = static_cast<uint32_t>(ticks);
    p.reference_rate = j.at("reference_rate").get<double>();
    p.tick_seconds = j.at("tick_seconds").get<double>();
    for (const auto& t : j.at("transfers")) {
      if (!t.is_array() || t.size() != 6)
        return InvalidArgument("plan: a transfer is not [tick, src, dst, slice, tier, duration]");
      MC_ASSIGN_OR_RETURN(Tier tier, ParseTier(t[4].get<std::string>()));
      MC_ASSIGN_OR_RETURN(const int64_t tick, Int(t[0], "a transfer's tick", 0, kU32));
      MC_ASSIGN_OR_RETURN(const int64_t src, Int(t[1], "a transfer's src", -kI32 - 1, kI32));
      MC_ASSIGN_OR_RETURN(const int64_t dst, Int(t[2], "a transfer's dst", -kI32 - 1, kI32));
      MC_ASSIGN_OR_RETURN(const int64_t slice, Int(t[3], "a transfer's slice", 0, kU32));
      MC_ASSIGN_OR_RETURN(const int64_t duration, Int(t[5], "a transfer's duration", 0, kU32));
      p.transfers.push_back({static_cast<uint32_t>(tick), static_cast<int32_t>(src), static_cast<int32_t>(dst),
                             static_cast<uint32_t>(slice), tier, static_cast<uint32_t>(duration)});
    }
    for (const auto& set : j.at("pipelines")) {
      PipelineSet ps;
      MC_ASSIGN_OR_RETURN(const int64_t tick, Int(set.at("tick"), "a pipeline set's tick", 0, kU32));
      ps.tick = static_cast<uint32_t>(tick);
      for (const auto& pl : set.at("pipelines")) {
        Pipeline pipe;
        for (const auto& st : pl) {
          if (!st.is_array() || st.size() != 3)
            return InvalidArgument("plan: a stage is not [node, first_block, end_block]");
          MC_ASSIGN_OR_RETURN(const int64_t node, Int(st[0], "a stage's node", -kI32 - 1, kI32));
          MC_ASSIGN_OR_RETURN(const int64_t first, Int(st[1], "a stage's first block", 0, kU32));
          MC_ASSIGN_OR_RETURN(const int64_t end, Int(st[2], "a stage's end block", 0, kU32));
          pipe.stages.push_back({static_cast<int32_t>(node), static_cast<uint32_t>(first), static_cast<uint32_t>(end)});
        }
        ps.pipelines.push_back(std::move(pipe));
      }
      p.pipelines.push_back(std::move(ps));
    }
    for (const auto& f : j.at("full_at")) {
      MC_ASSIGN_OR_RETURN(const int64_t tick, Int(f, "full_at", -1, kI32));
      p.full_at.push_back(static_cast<int32_t>(tick));
    }
    p.notes = j.value("notes", std::vector<std::string>{});
    if (j.contains("lost_slices")) {
      for (const auto& s : j.at("lost_slices")) {
        MC_ASSIGN_OR_RETURN(const int64_t slice, Int(s, "a lost slice", 0, kU32));
        p.lost_slices.push_back(static_cast<uint32_t>(slice));
      }
    }
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

}  // namespace modelcast::planner

namespace modelcast::planner {

Result<fabric::PlanFragment> FragmentOf(const Plan& plan, const std::string& node) {
  const auto it = std::find(plan.node_names.begin(), plan.node_names.end(), node);
  if (it == plan.node_names.end()) return NotFound("the plan has no node '" + node + "'");
  const auto me = static_cast<int32_t>(it - plan.node_names.begin());
  fabric::PlanFragment f;
  f.node = node;
  for (const auto& t : plan.transfers) {
    if (t.local()) {
      if (t.dst == me) f.local_loads.push_back(t.slice);
      continue;
    }
    if (t.src == me) f.sends.push_back({t.tick, plan.node_names.at(t.dst), t.slice});
    if (t.dst == me) f.receives.push_back({t.tick, plan.node_names.at(t.src), t.slice});
  }
  return f;
}

}  // namespace modelcast::planner
