// Schedulers the algorithms share.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "modelcast/planner/plan.h"
#include "modelcast/planner/slice_set.h"
#include "plan_builder.h"

namespace modelcast::planner {

// Greedy fill: from `start` on, tick by tick, each receiver with room on its link takes the
// lowest slice it lacks from a sender that holds it by then and has room on its own link for
// the whole transfer. Used to feed stragglers from spare capacity and to finish a replan when
// no survivor holds the whole model. Slices that no sender holds nor will hold are added to
// `lost` (sorted, unique) and skipped.
Status FillGreedy(PlanBuilder& b, const std::vector<int32_t>& receivers, const std::vector<int32_t>& senders,
                  uint32_t start, std::vector<uint32_t>* lost);

// A send a node makes in order. With `whole_model`, it starts only once the sender holds
// every slice (store-and-forward of the whole model).
struct QueuedSend {
  int32_t dst = 0;
  uint32_t slice = 0;
  bool whole_model = false;
};

// Runs each node's queue in order: a send starts as soon as the sender holds the slice and
// both links have room. Baselines (unicast, trees, chains) are queues.
Status RunQueues(PlanBuilder& b, std::vector<std::deque<QueuedSend>> queues);

// Targets that hold a local copy load it, slice by slice in block order, on their local link.
void LoadLocally(PlanBuilder& b, const std::vector<int32_t>& targets, const std::vector<SliceSet>* initial);

// Splits `nodes` into `groups` groups of sizes differing by at most one, round robin.
std::vector<std::vector<int32_t>> RoundRobin(const std::vector<int32_t>& nodes, size_t groups);

}  // namespace modelcast::planner
