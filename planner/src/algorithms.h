// The planning algorithms (see planner.h for what each does).
#pragma once

#include <vector>

#include "modelcast/planner/plan.h"
#include "modelcast/planner/slice_set.h"

namespace modelcast::planner {

// `initial` (replan): what each node already holds; transfers of those slices are skipped.
Result<Plan> PlanLambdaPipe(const PlanRequest& request, const std::vector<SliceSet>* initial);
Result<Plan> PlanUnicast(const PlanRequest& request);
Result<Plan> PlanBinaryTree(const PlanRequest& request);
Result<Plan> PlanBinomialWhole(const PlanRequest& request);
Result<Plan> PlanChain(const PlanRequest& request);
Result<Plan> PlanLocal(const PlanRequest& request);

// The slowest rate among the sources and targets: the tick of the baselines.
double SlowestRate(const PlanRequest& request);

}  // namespace modelcast::planner
