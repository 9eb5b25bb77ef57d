// The planner: a pure function from (model slices, sources, targets, link rates) to a plan.
// No sockets, no threads, no clocks: the same request always gives the same plan.
//
// Algorithms, selectable by name, all behind PlanAlgorithm:
//   lambdapipe      binomial pipeline on a circulant graph (round-optimal for any node count),
//                   k-way over the sources, locality-aware, stragglers fed from spare links
//   unicast         each source sends the whole model to its targets in turn
//   binary-tree     FaaSNet: a binary tree, each node forwarding every slice to two children
//   binomial-whole  binomial tree moving the whole model per hop (store and forward)
//   chain           pipelined chain, as NCCL broadcasts
//   local           every target loads its own SSD/host copy (ServerlessLLM); targets
//                   without one are sent the model by unicast
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "modelcast/common/status.h"
#include "modelcast/planner/plan.h"
#include "modelcast/planner/slice_set.h"

namespace modelcast::planner {

class PlanAlgorithm {
 public:
  virtual ~PlanAlgorithm() = default;
  virtual std::string_view name() const = 0;
  // The request has been validated by the caller (MakePlan does it).
  virtual Result<Plan> Make(const PlanRequest& request) const = 0;
};

std::vector<std::string> AlgorithmNames();
// Null when unknown.
const PlanAlgorithm* FindAlgorithm(std::string_view name);

// Checks the request (targets non-empty and distinct, no target that is also a source,
// sources holding the model, positive link rates, a valid model shape) and plans.
Result<Plan> MakePlan(const PlanRequest& request, std::string_view algorithm);
Status ValidateRequest(const PlanRequest& request);

// The rest of a scale-out after failures. `holdings[n]` is what node n holds now (a source's
// whole model included); `failed` nodes are gone. Every surviving node holding the whole
// model is a source and the surviving targets complete through a new multicast, skipping
// what they already hold; when no survivor holds the whole model, every survivor holding a
// slice sends it. Slices no survivor holds are listed in Plan::lost_slices (the surviving
// targets then receive everything else).
Result<Plan> Replan(const PlanRequest& request, const std::vector<SliceSet>& holdings,
                    const std::vector<int32_t>& failed);

// Checks a plan against its request: every target ends with every slice (received exactly
// once, or held from the start), nobody sends a slice before holding it, no link carries
// more than its rate in any tick, every listed pipeline is valid at its tick, and full_at
// agrees with the transfers. With `initial` holdings (a replan), those count as held at
// tick 0 and `failed` nodes must take no part.
Status ValidatePlan(const PlanRequest& request, const Plan& plan);
Status ValidatePlan(const PlanRequest& request, const Plan& plan, const std::vector<SliceSet>& initial,
                    const std::vector<int32_t>& failed);

}  // namespace modelcast::planner
