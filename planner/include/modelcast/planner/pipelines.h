// Execute-while-load: which groups of partially-loaded nodes can serve together.
//
// A pipeline is an ordered list of stages (node, block range) covering every block exactly
// once, each node serving only blocks it holds completely. FormPipelines builds as many
// disjoint pipelines as it can: each with the fewest stages it can find (fewer network hops),
// by a greedy longest-run-first search with depth-first repair, and with stage boundaries
// moved within what each node holds so that stages carry about the same number of layers.
#pragma once

#include <cstdint>
#include <vector>

#include "modelcast/planner/model_shape.h"
#include "modelcast/planner/plan.h"
#include "modelcast/planner/slice_set.h"

namespace modelcast::planner {

struct NodeBlocks {
  int32_t node = 0;
  SliceSet blocks;  // complete blocks the node holds
};

std::vector<Pipeline> FormPipelines(const ModelShape& model, const std::vector<NodeBlocks>& nodes, int max_stages);

// Checks that `p` covers every block exactly once, in order, with non-empty stages whose
// nodes hold their blocks; used by the plan validator and by tests.
Status ValidatePipeline(const ModelShape& model, const Pipeline& p, const std::vector<SliceSet>& blocks_held);

}  // namespace modelcast::planner
