// The plan validator: every property a plan must have, checked from the transfers alone.
#include <algorithm>
#include <set>

#include "modelcast/planner/pipelines.h"
#include "modelcast/planner/planner.h"
#include "plan_builder.h"

namespace modelcast::planner {
namespace {

constexpr double kSlack = 1e-4;

struct Ledger {
  std::vector<double> send, recv, local;
};

void Book(std::vector<double>& v, uint32_t tick, uint32_t d, double share) {
  if (v.size() < tick + d) v.resize(tick + d, 0);
  for (uint32_t t = tick; t < tick + d; ++t) v[t] += share;
}

}  // namespace

Status ValidatePlan(const PlanRequest& request, const Plan& plan) { return ValidatePlan(request, plan, {}, {}); }

Status ValidatePlan(const PlanRequest& req, const Plan& plan, const std::vector<SliceSet>& initial,
                    const std::vector<int32_t>& failed) {
  const ModelShape& m = req.model;
  const uint32_t s = m.num_slices();
  const size_t nodes = req.nodes.size();
  if (plan.num_slices != s || plan.num_blocks != m.num_blocks())
    return InvalidArgument("plan is for a different model shape");
  if (plan.full_at.size() != nodes) return InvalidArgument("plan's full_at does not list every node");
  if (!(plan.tick_seconds > 0) || !(plan.reference_rate > 0)) return InvalidArgument("plan has no tick length");
  const std::set<int32_t> gone(failed.begin(), failed.end());
  const std::set<uint32_t> lost(plan.lost_slices.begin(), plan.lost_slices.end());

  std::vector<std::vector<uint32_t>> arrival(nodes, std::vector<uint32_t>(s, kNever));
  for (int32_t src : req.sources) {
    if (!gone.count(src)) std::fill(arrival[src].begin(), arrival[src].end(), 0);
  }
  for (size_t n = 0; n < initial.size() && n < nodes; ++n) {
    if (gone.count(static_cast<int32_t>(n))) continue;
    for (uint32_t x = initial[n].Next(0); x < s; x = initial[n].Next(x + 1)) arrival[n][x] = 0;
  }
  std::vector<Ledger> use(nodes);
  uint32_t last = 0;
  uint32_t prev_tick = 0;
  for (size_t i = 0; i < plan.transfers.size(); ++i) {
    const Transfer& t = plan.transfers[i];
    const std::string where = "transfer " + std::to_string(i) + " (tick " + std::to_string(t.tick) + ", slice " +
                              std::to_string(t.slice) + ", " + std::to_string(t.src) + " -> " + std::to_string(t.dst) +
                              ")";
    if (t.tick < prev_tick) return InvalidArgument(where + ": transfers are not in tick order");
    prev_tick = t.tick;
    if (t.src < 0 || t.dst < 0 || static_cast<size_t>(t.src) >= nodes || static_cast<size_t>(t.dst) >= nodes) {
      return InvalidArgument(where + ": unknown node");
    }
    if (t.slice >= s) return InvalidArgument(where + ": no such slice");
    if (t.duration == 0) return InvalidArgument(where + ": zero duration");
    if (gone.count(t.src) || gone.count(t.dst)) return InvalidArgument(where + ": involves a failed node");
    if (t.local()) {
      const PlanNode& n = req.nodes[t.src];
      if (n.holds == Tier::kNone || n.local_rate <= 0)
        return InvalidArgument(where + ": local load on a node without a local copy");
    } else if (arrival[t.src][t.slice] > t.tick) {
      return InvalidArgument(where + ": the sender does not hold the slice yet");
    }
    if (arrival[t.dst][t.slice] != kNever)
      return InvalidArgument(where + ": the receiver already has (or is getting) the slice");
    arrival[t.dst][t.slice] = t.end();
    last = std::max(last, t.end());
    const double bytes = static_cast<double>(m.slice_bytes[t.slice]);
    const double rate = bytes / (t.duration * plan.tick_seconds);
    if (t.local()) {
      Book(use[t.src].local, t.tick, t.duration, rate / req.nodes[t.src].local_rate);
    } else {
      Book(use[t.src].send, t.tick, t.duration, rate / req.nodes[t.src].nic);
      Book(use[t.dst].recv, t.tick, t.duration, rate / req.nodes[t.dst].nic);
    }
  }
  if (plan.num_ticks != last) {
    return InvalidArgument("plan says " + std::to_string(plan.num_ticks) + " ticks, its transfers end at " +
                           std::to_string(last));
  }
  for (size_t n = 0; n < nodes; ++n) {
    for (const auto* v : {&use[n].send, &use[n].recv, &use[n].local}) {
      for (size_t t = 0; t < v->size(); ++t) {
        if ((*v)[t] > 1 + kSlack) {
          return InvalidArgument("node '" + req.nodes[n].name + "' uses " + std::to_string((*v)[t]) +
                                 " times its link rate at tick " + std::to_string(t));
        }
      }
    }
  }
  // Every surviving target ends with every slice (but the lost ones); full_at agrees.
  std::vector<std::vector<uint32_t>> block_done(nodes);
  for (int32_t n : req.targets) {
    if (gone.count(n)) continue;
    uint32_t full = 0;
    for (uint32_t x = 0; x < s; ++x) {
      if (arrival[n][x] == kNever && !lost.count(x)) {
        return InvalidArgument("target '" + req.nodes[n].name + "' never receives slice " + std::to_string(x));
      }
      full = std::max(full, arrival[n][x]);
    }
    const int32_t want = full == kNever ? -1 : static_cast<int32_t>(full);
    if (plan.full_at[n] != want) {
      return InvalidArgument("plan says target '" + req.nodes[n].name + "' is full at tick " +
                             std::to_string(plan.full_at[n]) + ", its transfers say " + std::to_string(want));
    }
    block_done[n].assign(m.num_blocks(), 0);
    for (uint32_t b = 0; b < m.num_blocks(); ++b) {
      for (uint32_t x = m.block_first_slice[b]; x < m.block_first_slice[b + 1]; ++x) {
        block_done[n][b] = std::max(block_done[n][b], arrival[n][x]);
      }
    }
  }
  // Every pipeline is valid at its tick and no node serves in two.
  uint32_t prev = 0;
  for (size_t i = 0; i < plan.pipelines.size(); ++i) {
    const PipelineSet& set = plan.pipelines[i];
    if (i > 0 && set.tick <= prev) return InvalidArgument("pipeline sets are not in tick order");
    prev = set.tick;
    std::vector<SliceSet> held(nodes, SliceSet(m.num_blocks()));
    for (size_t n = 0; n < nodes; ++n) {
      for (uint32_t b = 0; b < block_done[n].size(); ++b) {
        if (block_done[n][b] <= set.tick) held[n].Set(b);
      }
    }
    std::set<int32_t> busy;
    for (const Pipeline& p : set.pipelines) {
      MC_RETURN_IF_ERROR(ValidatePipeline(m, p, held).WithContext("pipeline at tick " + std::to_string(set.tick)));
      for (const Stage& st : p.stages) {
        if (!busy.insert(st.node).second) {
          return InvalidArgument("node " + std::to_string(st.node) + " serves in two pipelines at tick " +
                                 std::to_string(set.tick));
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace modelcast::planner
