#include "support/plan_requests.h"

namespace modelcast::testing {

planner::ModelShape UniformModel(uint32_t slices, uint32_t blocks, uint32_t layers_per_block) {
  planner::ModelShape m;
  m.name = "uniform";
  if (blocks > slices) blocks = slices;
  for (uint32_t b = 0; b < blocks; ++b) {
    const uint32_t first = static_cast<uint32_t>(static_cast<uint64_t>(b) * slices / blocks);
    const uint32_t end = static_cast<uint32_t>(static_cast<uint64_t>(b + 1) * slices / blocks);
    m.block_first_slice.push_back(first);
    m.block_layers.push_back(layers_per_block);
    for (uint32_t x = first; x < end; ++x) m.slice_bytes.push_back(x + 1 == end ? (1u << 20) / 2 + 4096 : 1u << 20);
  }
  m.block_first_slice.push_back(slices);
  return m;
}

planner::PlanRequest SimpleRequest(uint32_t targets, uint32_t sources, const planner::ModelShape& model, double nic) {
  planner::PlanRequest r;
  r.model = model;
  for (uint32_t i = 0; i < sources + targets; ++i) {
    planner::PlanNode n;
    n.name = (i < sources ? "src-" : "t-") + std::to_string(i);
    n.nic = nic;
    n.holds = i < sources ? planner::Tier::kGpu : planner::Tier::kNone;
    r.nodes.push_back(n);
    (i < sources ? r.sources : r.targets).push_back(static_cast<int32_t>(i));
  }
  return r;
}

uint32_t CeilLog2(uint64_t x) {
  uint32_t q = 0;
  while ((1ull << q) < x) ++q;
  return q;
}

}  // namespace modelcast::testing
