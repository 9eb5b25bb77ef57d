// modelcast-sim: plans a scale-out with the real planner and replays it on a simulated
// cluster described by a cluster YAML. Prints a table and, as its last line, one JSON object.
#include <chrono>
#include <cstdio>
#include <sstream>

#include <nlohmann/json.hpp>

#include "modelcast/common/args.h"
#include "modelcast/common/logging.h"
#include "modelcast/common/units.h"
#include "modelcast/planner/planner.h"
#include "modelcast/sim/simulator.h"

using namespace modelcast;

namespace {

int Fail(const Status& s) {
  std::fprintf(stderr, "modelcast-sim: %s\n", s.message().c_str());
  return 1;
}

std::vector<std::string> SplitAlgorithms(const std::string& list) {
  if (list == "all") return planner::AlgorithmNames();
  std::vector<std::string> out;
  std::stringstream ss(list);
  for (std::string item; std::getline(ss, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  InitLogging(argv[0], 1);
  sim::ScenarioFlags flags;
  std::string algo = "lambdapipe", overhead;
  int64_t batch = 16;
  bool json_only = false, timeline = false;
  ArgParser p("modelcast-sim",
              "Plans a scale-out with modelcast's planner and replays it on a simulated cluster:\n"
              "completion time, time to first pipeline and first full instance, serving capacity over time.");
  flags.Declare(p);
  p.Flag("algo", &algo,
         "lambdapipe, unicast, binary-tree, binomial-whole, chain, local, a comma list, or all [lambdapipe]");
  p.Flag("batch", &batch, "decode batch per serving unit, for capacity [16]");
  p.Flag("overhead", &overhead, "coordination time per slice transfer, e.g. 20us [the cluster's]");
  p.Flag("timeline", &timeline, "print the capacity timeline of each algorithm");
  p.Flag("json", &json_only, "print only the JSON line");
  Status s = p.Parse(argc, argv);
  if (!s.ok()) {
    std::fprintf(stderr, "modelcast-sim: %s (see --help)\n", s.message().c_str());
    return 2;
  }
  if (p.help_requested()) {
    std::fputs(p.Usage().c_str(), stdout);
    return 0;
  }
  auto sc = sim::BuildScenario(flags);
  if (!sc.ok()) return Fail(sc.status());
  const planner::ClusterConfig* cluster = &sc->cluster;
  const sim::ModelSpec* spec = &sc->model;
  sim::SimOptions opts;
  opts.batch = batch;
  if (!overhead.empty()) {
    auto d = ParseDuration(overhead);
    if (!d.ok()) return Fail(d.status().WithContext("--overhead"));
    opts.per_transfer_overhead = *d;
  }

  const auto& req = sc->request;
  if (!json_only) {
    std::printf(
        "cluster %s: %zu nodes; model %s: %s %s in %u slices of %s, %u blocks; %zu source(s) -> %zu target(s); "
        "%lld GPU(s) per instance\n",
        cluster->name.c_str(), cluster->nodes.size(), spec->name.c_str(), FormatBytes(spec->bytes).c_str(),
        std::string(DTypeShortName(spec->dtype)).c_str(), req.model.num_slices(),
        FormatBytes(req.model.MaxSliceBytes()).c_str(), req.model.num_blocks(), req.sources.size(), req.targets.size(),
        static_cast<long long>(sc->gpus_per_instance));
  }
  nlohmann::json out;
  out["cluster"] = cluster->name;
  out["model"] = spec->name;
  out["model_bytes"] = spec->bytes;
  out["slices"] = req.model.num_slices();
  out["blocks"] = req.model.num_blocks();
  out["sources"] = req.sources.size();
  out["targets"] = req.targets.size();
  out["gpus_per_instance"] = sc->gpus_per_instance;
  out["instances_per_node"] = cluster->nodes.front().gpus / sc->gpus_per_instance;
  out["batch"] = batch;
  out["instance_tokens_per_s"] = sim::InstanceTokensPerSecond(*sc, batch);
  out["prefill_tokens_per_s"] = sim::PrefillTokensPerSecond(*sc);
  std::vector<sim::SimResult> results;
  for (const auto& name : SplitAlgorithms(algo)) {
    const auto t0 = std::chrono::steady_clock::now();
    auto plan = planner::MakePlan(req, name);
    if (!plan.ok()) return Fail(plan.status());
    const double plan_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    auto r = sim::Simulate(*sc, *plan, opts);
    if (!r.ok()) return Fail(r.status());
    nlohmann::json j = {{"completion_s", r->completion},
                        {"ideal_s", r->ideal},
                        {"ratio_to_ideal", r->completion / r->ideal},
                        {"first_serving_s", r->first_serving},
                        {"first_pipeline_s", r->first_pipeline},
                        {"first_full_s", r->first_full},
                        {"mean_full_s", r->mean_full},
                        {"base_tokens_per_s", r->base_capacity},
                        {"final_tokens_per_s", r->final_capacity},
                        {"plan_ms", plan_ms},
                        {"ticks", plan->num_ticks},
                        {"transfers", r->transfers}};
    nlohmann::json tl = nlohmann::json::array();
    for (const auto& c : r->capacity) tl.push_back({c.seconds, c.tokens_per_s, c.full_instances, c.pipelines});
    j["capacity"] = tl;
    out["results"][name] = j;
    results.push_back(*r);
    if (timeline && !json_only) {
      std::printf("\n%s capacity timeline (seconds, tokens/s, full instances, pipelines):\n", name.c_str());
      for (const auto& c : r->capacity)
        std::printf("  %9.3f  %12.0f  %4lld  %4lld\n", c.seconds, c.tokens_per_s,
                    static_cast<long long>(c.full_instances), static_cast<long long>(c.pipelines));
    }
  }
  if (!json_only) {
    const sim::SimResult* lp = nullptr;
    for (const auto& r : results) {
      if (r.algorithm == "lambdapipe") lp = &r;
    }
    std::printf("\nS/B (model bytes over a target's link): %s\n", FormatSeconds(results.front().ideal).c_str());
    std::printf("%-15s %11s %8s %14s %13s %13s %9s\n", "algorithm", "complete", "/(S/B)", "first serving", "first full",
                "mean full", lp ? "vs lp" : "");
    for (const auto& r : results) {
      char vs[32] = "";
      if (lp) std::snprintf(vs, sizeof(vs), "%.2fx", r.completion / lp->completion);
      std::printf("%-15s %11s %8.3f %14s %13s %13s %9s\n", r.algorithm.c_str(), FormatSeconds(r.completion).c_str(),
                  r.completion / r.ideal, r.first_serving >= 0 ? FormatSeconds(r.first_serving).c_str() : "never",
                  FormatSeconds(r.first_full).c_str(), FormatSeconds(r.mean_full).c_str(), vs);
    }
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
