// The systems modelcast is compared with, planned in the same tick model so that every
// comparison runs the same engine (plan validation, simulator, pipelines).
#include <algorithm>
#include <cmath>

#include "algorithms.h"
#include "plan_builder.h"
#include "schedulers.h"

namespace modelcast::planner {

double SlowestRate(const PlanRequest& req) {
  double rate = INFINITY;
  for (int32_t n : req.sources) rate = std::min(rate, req.nodes[n].nic);
  for (int32_t n : req.targets) rate = std::min(rate, req.nodes[n].nic);
  return std::isfinite(rate) ? rate : 1.0;
}

namespace {

std::vector<std::deque<QueuedSend>> EmptyQueues(const PlanRequest& req) {
  return std::vector<std::deque<QueuedSend>>(req.nodes.size());
}

void SendAll(std::deque<QueuedSend>& q, int32_t dst, uint32_t slices, bool whole_model) {
  for (uint32_t x = 0; x < slices; ++x) q.push_back({dst, x, whole_model});
}

}  // namespace

Result<Plan> PlanUnicast(const PlanRequest& req) {
  PlanBuilder b(req, "unicast", SlowestRate(req));
  auto queues = EmptyQueues(req);
  const auto groups = RoundRobin(req.targets, req.sources.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    for (int32_t t : groups[g]) SendAll(queues[req.sources[g]], t, b.slices(), false);
  }
  MC_RETURN_IF_ERROR(RunQueues(b, std::move(queues)));
  return b.Finish();
}

// FaaSNet's function trees: binary trees (one per source) in which every node forwards each
// slice to its two children as soon as it has it, so each child gets half the parent's link.
Result<Plan> PlanBinaryTree(const PlanRequest& req) {
  PlanBuilder b(req, "binary-tree", SlowestRate(req));
  auto queues = EmptyQueues(req);
  const auto groups = RoundRobin(req.targets, req.sources.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    std::vector<int32_t> tree = {req.sources[g]};
    tree.insert(tree.end(), groups[g].begin(), groups[g].end());
    for (size_t i = 0; i < tree.size(); ++i) {
      for (uint32_t x = 0; x < b.slices(); ++x) {
        for (size_t c : {2 * i + 1, 2 * i + 2}) {
          if (c < tree.size()) queues[tree[i]].push_back({tree[c], x, false});
        }
      }
    }
  }
  MC_RETURN_IF_ERROR(RunQueues(b, std::move(queues)));
  return b.Finish();
}

// A binomial tree moving the whole model per hop: in each round every node holding the
// model sends all of it to one new node, which forwards only once it has all of it.
Result<Plan> PlanBinomialWhole(const PlanRequest& req) {
  PlanBuilder b(req, "binomial-whole", SlowestRate(req));
  auto queues = EmptyQueues(req);
  std::vector<int32_t> holders = req.sources;
  size_t next = 0;
  while (next < req.targets.size()) {
    std::vector<int32_t> added;
    for (int32_t h : holders) {
      if (next >= req.targets.size()) break;
      const int32_t t = req.targets[next++];
      SendAll(queues[h], t, b.slices(), true);
      added.push_back(t);
    }
    holders.insert(holders.end(), added.begin(), added.end());
  }
  MC_RETURN_IF_ERROR(RunQueues(b, std::move(queues)));
  return b.Finish();
}

// A pipelined chain per source (how NCCL broadcasts along a ring): each node forwards every
// slice to the next as soon as it has it.
Result<Plan> PlanChain(const PlanRequest& req) {
  PlanBuilder b(req, "chain", SlowestRate(req));
  auto queues = EmptyQueues(req);
  const auto groups = RoundRobin(req.targets, req.sources.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    int32_t prev = req.sources[g];
    for (int32_t t : groups[g]) {
      SendAll(queues[prev], t, b.slices(), false);
      prev = t;
    }
  }
  MC_RETURN_IF_ERROR(RunQueues(b, std::move(queues)));
  return b.Finish();
}

// ServerlessLLM: every target loads the model from its own SSD (or host memory); a target
// without a local copy has it sent by a source, one target after another.
Result<Plan> PlanLocal(const PlanRequest& req) {
  PlanBuilder b(req, "local", SlowestRate(req));
  std::vector<int32_t> local, remote;
  for (int32_t t : req.targets) {
    const PlanNode& n = req.nodes[t];
    (n.holds != Tier::kNone && n.local_rate > 0 ? local : remote).push_back(t);
  }
  LoadLocally(b, local, nullptr);
  if (!remote.empty()) {
    auto queues = EmptyQueues(req);
    const auto groups = RoundRobin(remote, req.sources.size());
    for (size_t g = 0; g < groups.size(); ++g) {
      for (int32_t t : groups[g]) SendAll(queues[req.sources[g]], t, b.slices(), false);
    }
    MC_RETURN_IF_ERROR(RunQueues(b, std::move(queues)));
    b.Note("local: " + std::to_string(remote.size()) +
           " target(s) hold no local copy and are sent the model by unicast");
  }
  return b.Finish();
}

}  // namespace modelcast::planner
