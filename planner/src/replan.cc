#include <algorithm>
#include <set>

#include "algorithms.h"
#include "modelcast/planner/planner.h"
#include "plan_builder.h"
#include "schedulers.h"

namespace modelcast::planner {

namespace {

// Targets that already held everything when the replan began are full from tick 0.
Plan MarkAlreadyFull(Plan p, const PlanRequest& request, const std::vector<SliceSet>& holdings,
                     const std::set<int32_t>& gone) {
  for (int32_t t : request.targets) {
    if (!gone.count(t) && holdings[t].Full()) p.full_at[t] = 0;
  }
  return p;
}

}  // namespace

Result<Plan> Replan(const PlanRequest& request, const std::vector<SliceSet>& holdings,
                    const std::vector<int32_t>& failed) {
  MC_RETURN_IF_ERROR(ValidateRequest(request));
  const uint32_t s = request.model.num_slices();
  if (holdings.size() != request.nodes.size()) {
    return InvalidArgument("replan: " + std::to_string(holdings.size()) + " holdings for " +
                           std::to_string(request.nodes.size()) + " nodes");
  }
  for (const auto& h : holdings) {
    if (h.size() != s) return InvalidArgument("replan: a holding set does not have one entry per slice");
  }
  std::set<int32_t> gone;
  for (int32_t f : failed) {
    if (f < 0 || static_cast<size_t>(f) >= request.nodes.size())
      return InvalidArgument("replan: failed node " + std::to_string(f) + " is not a node of the request");
    gone.insert(f);
  }
  // Who is left: sources and completed targets hold the whole model and send; the other
  // surviving targets still need slices.
  PlanRequest rest = request;
  rest.sources.clear();
  rest.targets.clear();
  std::vector<int32_t> survivors;
  for (int32_t n : request.sources) {
    if (!gone.count(n)) survivors.push_back(n);
  }
  for (int32_t n : request.targets) {
    if (!gone.count(n)) survivors.push_back(n);
  }
  for (int32_t n : survivors) {
    const bool is_target = std::find(request.targets.begin(), request.targets.end(), n) != request.targets.end();
    if (holdings[n].Full()) {
      rest.sources.push_back(n);
      rest.nodes[n].holds = std::max(rest.nodes[n].holds, is_target ? Tier::kGpu : request.nodes[n].holds);
    } else if (is_target) {
      rest.targets.push_back(n);
    }
  }
  if (rest.targets.empty()) {
    PlanBuilder b(request, "replan", SlowestRate(request));
    b.Note("replan: every surviving target already holds the whole model");
    return MarkAlreadyFull(b.Finish(), request, holdings, gone);
  }
  std::vector<SliceSet> held = holdings;  // what failed nodes held is gone with them
  for (int32_t f : gone) held[f] = SliceSet(s);
  if (!rest.sources.empty()) {
    // Every survivor holding the whole model roots a group; targets keep what they hold.
    MC_ASSIGN_OR_RETURN(Plan p, PlanLambdaPipe(rest, &held));
    p.algorithm = "replan";
    p.notes.push_back("replan: " + std::to_string(rest.sources.size()) + " surviving full copies feed " +
                      std::to_string(rest.targets.size()) + " targets; " + std::to_string(gone.size()) +
                      " node(s) failed");
    return MarkAlreadyFull(std::move(p), request, holdings, gone);
  }
  // No survivor holds everything: targets with a local copy load what they miss, and every
  // survivor that holds a slice sends it to the others.
  PlanBuilder b(rest, "replan", SlowestRate(rest));
  for (int32_t n : survivors) {
    for (uint32_t x = held[n].Next(0); x < s; x = held[n].Next(x + 1)) b.Hold(n, x);
  }
  std::vector<int32_t> local, network;
  for (int32_t t : rest.targets) {
    const PlanNode& n = rest.nodes[t];
    (n.holds != Tier::kNone && n.local_rate > 0 ? local : network).push_back(t);
  }
  LoadLocally(b, local, &held);
  std::vector<uint32_t> lost;
  MC_RETURN_IF_ERROR(FillGreedy(b, network, survivors, 0, &lost));
  Plan p = b.Finish();
  p.lost_slices = lost;
  p.notes.push_back("replan: no survivor holds the whole model; " + std::to_string(survivors.size()) +
                    " survivors send what they hold");
  if (!lost.empty())
    p.notes.push_back("replan: " + std::to_string(lost.size()) + " slice(s) are held by no survivor and are lost");
  return MarkAlreadyFull(std::move(p), request, holdings, gone);
}

}  // namespace modelcast::planner
