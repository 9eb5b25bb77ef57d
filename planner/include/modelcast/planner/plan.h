// A plan: who sends which slice to whom at each tick, which groups of receivers can serve as
// pipelines at each tick, and when each target becomes a full local instance.
//
// Time is in ticks. A tick is the time one full slice takes over the plan's reference link
// (`tick_seconds`). A transfer occupies its sender's and receiver's links from `tick` for
// `duration` ticks (1 unless a slow link is involved); the receiver holds the slice, and may
// forward it, from tick `tick + duration` on. A transfer whose source is its destination is
// a local load (SSD or host memory to GPU) and uses no network link.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "modelcast/common/status.h"
#include "modelcast/common/tier.h"
#include "modelcast/planner/model_shape.h"
#include "modelcast/planner/slice_set.h"
#include "modelcast/fabric/fragment.h"

namespace modelcast::planner {

// Where a copy of the model (or a slice) lives on a node, slowest to fastest.
using ::modelcast::ParseTier;
using ::modelcast::Tier;
using ::modelcast::TierName;

// A node as the planner sees it.
struct PlanNode {
  std::string name;
  double nic = 0;            // bytes/s, each direction
  double local_rate = 0;     // bytes/s at which it loads its own copy into GPU memory; 0: no local copy
  Tier holds = Tier::kNone;  // the fastest tier holding a complete copy of the model
};

struct PlanRequest {
  ModelShape model;
  std::vector<PlanNode> nodes;
  std::vector<int32_t> sources;  // copies that send over the network (must hold the model in GPU or host memory)
  std::vector<int32_t> targets;  // nodes that must end with the model in GPU memory
  // Let a target with a local copy load it instead of joining the multicast, when that is
  // expected to be faster.
  bool locality = true;
  // Longest pipeline formed during the load; 0 chooses max(4, number of sources).
  int max_pipeline_stages = 0;
};

struct Transfer {
  uint32_t tick = 0;
  int32_t src = 0;
  int32_t dst = 0;
  uint32_t slice = 0;
  Tier tier = Tier::kGpu;  // where `src` reads the slice from
  uint32_t duration = 1;

  uint32_t end() const { return tick + duration; }
  bool local() const { return src == dst; }
};

// A pipeline stage: `node` serves blocks [first_block, end_block).
struct Stage {
  int32_t node = 0;
  uint32_t first_block = 0;
  uint32_t end_block = 0;
};

struct Pipeline {
  std::vector<Stage> stages;  // in block order, covering every block exactly once
};

// The pipelines that can serve from `tick` until the next set's tick.
struct PipelineSet {
  uint32_t tick = 0;
  std::vector<Pipeline> pipelines;
};

struct Plan {
  std::string algorithm;
  std::vector<std::string> node_names;
  uint32_t num_slices = 0;
  uint32_t num_blocks = 0;
  double reference_rate = 0;           // bytes/s of the link a tick is measured on
  double tick_seconds = 0;             // largest slice / reference_rate
  uint32_t num_ticks = 0;              // when the last transfer ends
  std::vector<Transfer> transfers;     // sorted by tick, then source
  std::vector<PipelineSet> pipelines;  // by tick; a set is listed when the pipelines change
  std::vector<int32_t> full_at;        // per node: first tick holding every slice; -1 if not a target
  std::vector<std::string> notes;      // choices an operator should know about (locality, stragglers, fallbacks)
  std::vector<uint32_t> lost_slices;   // replan only: slices no surviving node holds

  // The first tick at which some pipeline (or, failing that, some full instance) can serve; -1 if never.
  int64_t FirstPipelineTick() const;
  int64_t FirstFullTick() const;
  int64_t LastFullTick() const;

  nlohmann::json ToJson() const;
  // Reads a plan defensively (plans travel to agents and tools): a field of the wrong type, or
  // a reference to a node, slice, block or tick that is not there, is refused naming it.
  static Result<Plan> FromJson(const nlohmann::json& j);
  Status CheckReferences() const;
};

// `node`'s share of `plan`: its sends and receives by tick, and the slices it loads from its
// own tiers. NotFound when the plan has no such node.
Result<fabric::PlanFragment> FragmentOf(const Plan& plan, const std::string& node);

}  // namespace modelcast::planner
