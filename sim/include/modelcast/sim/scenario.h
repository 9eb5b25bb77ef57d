// A scale-out scenario: a cluster, a model, which nodes already run it (sources) and which
// must receive it (targets), and which targets hold a local copy. Builds the planner's
// request; shared by modelcast-sim, `modelcast plan` and the benchmarks.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "modelcast/common/args.h"
#include "modelcast/common/status.h"
#include "modelcast/planner/cluster.h"
#include "modelcast/planner/model_shape.h"
#include "modelcast/planner/plan.h"
#include "modelcast/model/llama_config.h"

namespace modelcast::sim {

struct ModelSpec {
  std::string name;
  model::LlamaConfig config;
  DType dtype = DType::kBF16;
  planner::ModelShape shape;
  uint64_t bytes = 0;
};

// `spec` is a known model name (planner::KnownModelNames), a size ("140GB" of bf16 weights, or
// "13e9-params": a Llama with Llama-2's proportions), an HF checkpoint directory or
// config.json, or a prepared package directory (whose manifest fixes the slices and
// blocks). For the first two, `blocks` (0: min(layers, 32)) and `slice_bytes` (0: about 512
// slices, a multiple of 4 KiB between 4 MiB and 256 MiB) shape the package.
Result<ModelSpec> LoadModelSpec(const std::string& spec, int64_t blocks, uint64_t slice_bytes);

struct ScenarioOptions {
  int64_t sources = 1;                          // the first `sources` nodes run the model (GPU copies)
  int64_t targets = 0;                          // the next `targets` nodes receive it; 0: all the others
  planner::Tier local_tier = planner::Tier::kNone;  // targets' own copy (host or ssd), if any
  int64_t local_count = -1;                     // how many targets hold it; -1: all
  bool locality = true;
};

struct Scenario {
  planner::ClusterConfig cluster;
  ModelSpec model;
  planner::PlanRequest request;
  int64_t gpus_per_instance = 1;  // GPUs one instance of the model needs
};

Result<Scenario> BuildScenario(const planner::ClusterConfig& cluster, const ModelSpec& model,
                               const ScenarioOptions& options);

// A scenario as `modelcast plan` and `modelcast-sim` take it on their command lines.
struct ScenarioFlags {
  std::string cluster_path, model, local_tier;
  int64_t targets = 0, sources = 1, blocks = 0;
  std::optional<int64_t> local_count;
  double slice_mib = 0;
  bool no_locality = false;

  // Declares --cluster, --model, --targets, --sources, --slice-mib, --blocks, --local-tier,
  // --local-count and --no-locality.
  void Declare(ArgParser& p);
};

// Loads the cluster and the model the flags name and builds the scenario; errors name the flag.
Result<Scenario> BuildScenario(const ScenarioFlags& flags);

}  // namespace modelcast::sim
