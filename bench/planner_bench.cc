// bench/planner_bench: the planner's speed, and its plans' quality in the simulator.
//
// 1. Planning 1,024 targets x 256 slices with lambdapipe (K = 1 and K = 4), median of
//    repetitions, against planning the same transfers as a pipelined chain in the same run
//    (the simplest schedule with the same number of transfers: what merely emitting them
//    costs). Target: <= 50 ms.
// 2. Simulated lambdapipe completion over S/B (model bytes over a target's link) for
//    multicasts of n = 8, 64 and 1,024 nodes with 64 and 256 slices. Target: <= 1.10 at 64.
// 3. On the λScale paper's testbed, Llama-2-70B and 13B, one and two running copies: every
//    algorithm's completion time and time to first serving, as ratios against lambdapipe.
// Prints tables, then one JSON line.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>

#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "modelcast/common/args.h"
#include "modelcast/common/logging.h"
#include "modelcast/common/units.h"
#include "modelcast/planner/planner.h"
#include "modelcast/sim/simulator.h"

using namespace modelcast;
namespace fs = std::filesystem;

namespace {
using modelcast::bench::Die;

template <typename T>
T Must(Result<T> r) {
  if (!r.ok()) Die(r.status());
  return std::move(r).value();
}

double MedianMs(int reps, const std::function<void()>& f) {
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

sim::Scenario MakeScenario(const planner::ClusterConfig& c, const std::string& model, int64_t sources, int64_t targets,
                           uint64_t slices, planner::Tier local = planner::Tier::kNone) {
  auto cfg = Must(planner::KnownModelConfig(model));
  const uint64_t bytes = cfg.ParameterCount() * 2;
  uint64_t slice = 4096;
  if (slices > 0) slice = (bytes / slices + 4095) / 4096 * 4096;
  auto spec = Must(sim::LoadModelSpec(model, 0, slices > 0 ? slice : 0));
  sim::ScenarioOptions o;
  o.sources = sources;
  o.targets = targets;
  o.local_tier = local;
  return Must(sim::BuildScenario(c, spec, o));
}

}  // namespace

int main(int argc, char** argv) {
  modelcast::bench::ProgramName() = "planner_bench";
  InitLogging(argv[0], 1);
  std::string configs = MODELCAST_SOURCE_DIR "/cluster-configs";
  int64_t reps = 9;
  ArgParser p("planner_bench", "Planner speed and simulated plan quality (see the header of bench/planner_bench.cc).");
  p.Flag("configs", &configs, "directory of cluster YAMLs [the source tree's cluster-configs]");
  p.Flag("reps", &reps, "repetitions of each planning measurement [9]");
  Status s = p.Parse(argc, argv);
  if (!s.ok()) Die(s);
  if (p.help_requested()) {
    std::fputs(p.Usage().c_str(), stdout);
    return 0;
  }
  nlohmann::json out;
  out["bench"] = "planner_bench";

  // 1. Planning speed.
  const auto large = Must(planner::ClusterConfig::Load(fs::path(configs) / "large-1024.yaml"));
  std::printf("planning 1024 targets x 256 slices (median of %lld)\n", static_cast<long long>(reps));
  std::printf("  %-18s %10s %10s %12s %10s\n", "", "median ms", "cold ms", "transfers", "vs chain");
  for (int64_t k : {1, 4}) {
    const sim::Scenario sc = MakeScenario(large, "llama-2-13b", k, 1024 - k, 256);
    // Same target count for both K: drop the extra sources' targets.
    planner::PlanRequest req = sc.request;
    size_t transfers = 0;
    const double cold = MedianMs(1, [&] { (void)Must(planner::MakePlan(req, "lambdapipe")); });
    const double lp = MedianMs(static_cast<int>(reps),
                               [&] { transfers = Must(planner::MakePlan(req, "lambdapipe")).transfers.size(); });
    const double chain = MedianMs(static_cast<int>(reps), [&] { (void)Must(planner::MakePlan(req, "chain")); });
    Status v = planner::ValidatePlan(req, Must(planner::MakePlan(req, "lambdapipe")));
    if (!v.ok()) Die(v);
    std::printf("  lambdapipe, K=%lld %10.1f %10.1f %12zu %9.2fx\n", static_cast<long long>(k), lp, cold, transfers,
                lp / chain);
    out["planning"]["k" + std::to_string(k)] = {
        {"lambdapipe_ms", lp},    {"first_call_ms", cold},         {"chain_ms", chain},
        {"transfers", transfers}, {"targets", req.targets.size()}, {"slices", req.model.num_slices()}};
  }

  // 2. Completion over S/B.
  struct Case {
    const char* config;
    int64_t nodes;
  };
  std::printf("\nsimulated completion / (S/B), llama-2-13b, one source (chain: NCCL-style pipelined chain)\n");
  std::printf("  %-6s %-22s %12s %12s %12s\n", "nodes", "cluster", "lp, 64 sl.", "lp, 256 sl.", "chain, 64 sl.");
  for (const Case c : {Case{"lambdascale-testbed.yaml", 8}, Case{"h100-64.yaml", 64}, Case{"large-1024.yaml", 1024}}) {
    const auto cluster = Must(planner::ClusterConfig::Load(fs::path(configs) / c.config));
    std::printf("  %-6lld %-22s", static_cast<long long>(c.nodes), cluster.name.c_str());
    for (const auto& [algo, slices] :
         std::vector<std::pair<std::string, uint64_t>>{{"lambdapipe", 64}, {"lambdapipe", 256}, {"chain", 64}}) {
      const sim::Scenario sc = MakeScenario(cluster, "llama-2-13b", 1, c.nodes - 1, slices);
      const auto plan = Must(planner::MakePlan(sc.request, algo));
      const auto r = Must(sim::Simulate(sc, plan, {}));
      std::printf(" %12.3f", r.completion / r.ideal);
      out["completion_over_sb"][std::to_string(c.nodes)][algo + "_" + std::to_string(slices)] = r.completion / r.ideal;
      out["completion_over_sb"][std::to_string(c.nodes)]["slices_" + std::to_string(slices)] =
          sc.request.model.num_slices();
    }
    std::printf("\n");
  }

  // 3. The paper's testbed, every algorithm.
  const auto testbed = Must(planner::ClusterConfig::Load(fs::path(configs) / "lambdascale-testbed.yaml"));
  for (const char* model : {"llama-2-70b", "llama-2-13b"}) {
    for (int64_t k : {1, 2}) {
      const sim::Scenario sc = MakeScenario(testbed, model, k, 12 - k, 0);
      std::printf("\n%s on %s, %lld running cop%s -> %zu targets (%u slices); ratios against lambdapipe\n", model,
                  testbed.name.c_str(), static_cast<long long>(k), k == 1 ? "y" : "ies", sc.request.targets.size(),
                  sc.request.model.num_slices());
      std::printf("  %-15s %11s %8s %14s %8s\n", "algorithm", "complete", "ratio", "first serving", "ratio");
      std::vector<sim::SimResult> results;
      for (const auto& algo : planner::AlgorithmNames()) {
        // ServerlessLLM's setting: every target holds the model on its own SSD.
        const sim::Scenario with_ssd = MakeScenario(testbed, model, k, 12 - k, 0, planner::Tier::kSsd);
        const sim::Scenario& use = algo == "local" ? with_ssd : sc;
        const auto plan = Must(planner::MakePlan(use.request, algo));
        results.push_back(Must(sim::Simulate(use, plan, {})));
      }
      const auto& lp = results.front();
      for (const auto& r : results) {
        std::printf("  %-15s %11s %8.2f %14s %8.2f\n", r.algorithm.c_str(), FormatSeconds(r.completion).c_str(),
                    r.completion / lp.completion, FormatSeconds(r.first_serving).c_str(),
                    r.first_serving / lp.first_serving);
        out["testbed"][model]["k" + std::to_string(k)][r.algorithm] = {
            {"completion_s", r.completion},
            {"first_serving_s", r.first_serving},
            {"first_pipeline_s", r.first_pipeline},
            {"completion_ratio", r.completion / lp.completion},
            {"first_serving_ratio", r.first_serving / lp.first_serving}};
      }
    }
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
