// modelcast plan: the planner's plan for a scale-out on a cluster, as text, JSON or SVG.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>

#include "command.h"
#include "modelcast/common/units.h"
#include "modelcast/planner/plan_svg.h"
#include "modelcast/planner/planner.h"
#include "modelcast/sim/scenario.h"

namespace modelcast::cli {

void PrintPlanTiming(const planner::Plan& plan, const char* after) {
  std::printf("%u ticks of %s = %s; first pipeline at tick %lld, first full instance at tick %lld%s\n", plan.num_ticks,
              FormatSeconds(plan.tick_seconds).c_str(), FormatSeconds(plan.num_ticks * plan.tick_seconds).c_str(),
              static_cast<long long>(plan.FirstPipelineTick()), static_cast<long long>(plan.FirstFullTick()), after);
}

void PrintPlan(const planner::Plan& plan, int64_t show_ticks) {
  const auto& names = plan.node_names;
  std::printf("\n%6s  %s\n", "tick", "transfers (source -> receiver: slice; [local] = own copy)");
  size_t i = 0;
  for (uint32_t tick = 0; tick < plan.num_ticks && tick < show_ticks; ++tick) {
    std::string line;
    int shown = 0, more = 0;
    for (; i < plan.transfers.size() && plan.transfers[i].tick == tick; ++i) {
      const auto& t = plan.transfers[i];
      if (shown < 8) {
        line += (shown ? "  " : "") +
                (t.local() ? "[local] -> " + names[t.dst] : names[t.src] + " -> " + names[t.dst]) + ": " +
                std::to_string(t.slice);
        ++shown;
      } else {
        ++more;
      }
    }
    if (more) line += "  (+" + std::to_string(more) + " more)";
    std::printf("%6u  %s\n", tick, line.empty() ? "-" : line.c_str());
  }
  if (static_cast<int64_t>(plan.num_ticks) > show_ticks) {
    std::printf("   ...  (%lld more ticks; --ticks N shows more)\n",
                static_cast<long long>(plan.num_ticks - show_ticks));
  }
  std::printf("\npipelines (each: node[blocks] | ...):\n");
  int printed = 0;
  for (const auto& set : plan.pipelines) {
    if (printed++ == 12) {
      std::printf("  ... (%zu more changes)\n", plan.pipelines.size() - 12);
      break;
    }
    std::string line;
    for (size_t p = 0; p < set.pipelines.size() && p < 3; ++p) {
      line += p ? "   " : "";
      for (size_t s = 0; s < set.pipelines[p].stages.size(); ++s) {
        const auto& st = set.pipelines[p].stages[s];
        line += (s ? " | " : "") + names[st.node] + "[" + std::to_string(st.first_block) + "-" +
                std::to_string(st.end_block - 1) + "]";
      }
    }
    if (set.pipelines.size() > 3) line += "   (+" + std::to_string(set.pipelines.size() - 3) + " more)";
    std::printf("  tick %5u: %2zu  %s\n", set.tick, set.pipelines.size(), line.c_str());
  }
  if (plan.pipelines.empty()) std::printf("  none form before the targets are complete\n");
  std::map<int32_t, std::vector<std::string>> by_tick;
  for (size_t n = 0; n < plan.full_at.size(); ++n) {
    if (plan.full_at[n] >= 0) by_tick[plan.full_at[n]].push_back(names[n]);
  }
  std::printf("\nfull instances:\n");
  for (const auto& [tick, list] : by_tick) {
    std::string line;
    for (size_t k = 0; k < list.size() && k < 8; ++k) line += (k ? ", " : "") + list[k];
    if (list.size() > 8) line += " (+" + std::to_string(list.size() - 8) + " more)";
    std::printf("  tick %5d: %s\n", tick, line.c_str());
  }
  for (const auto& note : plan.notes) std::printf("note: %s\n", note.c_str());
}

int RunPlan(const std::vector<std::string>& args) {
  if (std::find(args.begin(), args.end(), "--dry-run") != args.end()) return RunLivePlan(args);
  sim::ScenarioFlags flags;
  std::string algo = "lambdapipe", svg;
  int64_t ticks = 30;
  bool json = false;
  ArgParser p("modelcast plan",
              "Plans a scale-out of a model on a cluster and shows who sends which slice to whom at each\n"
              "tick, when pipelines of partial receivers can serve, and when each target is a full instance.\n"
              "This form plans on a described cluster; `modelcast plan --dry-run MODEL -n N` asks the\n"
              "coordinator for its plan on the live cluster.");
  flags.Declare(p);
  p.Flag("algo", &algo, "lambdapipe, unicast, binary-tree, binomial-whole, chain or local [lambdapipe]");
  p.Flag("ticks", &ticks, "ticks to print [30]");
  p.Flag("svg", &svg, "also draw the plan as an SVG timeline into this file");
  p.Flag("json", &json, "print the whole plan as JSON instead of text");
  if (int rc = ParseOrExit("plan", p, args); rc >= 0) return rc;
  auto sc = sim::BuildScenario(flags);
  if (!sc.ok()) return Fail("plan", sc.status());
  const planner::ClusterConfig* cluster = &sc->cluster;
  const sim::ModelSpec* spec = &sc->model;
  auto plan = planner::MakePlan(sc->request, algo);
  if (!plan.ok()) return Fail("plan", plan.status());
  Status valid = planner::ValidatePlan(sc->request, *plan);
  if (!valid.ok()) return Fail("plan", Internal("the planner produced an invalid plan: " + valid.message()));
  if (!svg.empty()) {
    std::ofstream out(svg);
    out << planner::RenderPlanSvg(*plan);
    if (!out.good()) return Fail("plan", IOError("cannot write " + svg));
  }
  if (json) {
    std::printf("%s\n", plan->ToJson().dump().c_str());
    return kExitOk;
  }
  const auto& req = sc->request;
  std::printf("%s plan: %s (%s) from %zu source(s) to %zu target(s) on %s; %u slices of %s in %u blocks\n",
              plan->algorithm.c_str(), spec->name.c_str(), FormatBytes(spec->bytes).c_str(), req.sources.size(),
              req.targets.size(), cluster->name.c_str(), plan->num_slices,
              FormatBytes(req.model.MaxSliceBytes()).c_str(), plan->num_blocks);
  PrintPlanTiming(*plan, " (plan validated)");
  PrintPlan(*plan, ticks);
  if (!svg.empty()) std::printf("\nSVG timeline written to %s\n", svg.c_str());
  return kExitOk;
}

}  // namespace modelcast::cli
