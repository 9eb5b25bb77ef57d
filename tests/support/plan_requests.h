// Plan requests for planner and simulator tests.
#pragma once

#include <random>
#include <string>
#include <vector>

#include "modelcast/planner/plan.h"

namespace modelcast::testing {

// A model of `slices` slices in `blocks` blocks (as even as possible), one layer per block
// unless `layers_per_block` is given; slices of 1 MiB except the last of each block, which
// is shorter.
planner::ModelShape UniformModel(uint32_t slices, uint32_t blocks, uint32_t layers_per_block = 1);

// `sources` GPU-resident sources then `targets` targets, all on `nic` bytes/s links.
planner::PlanRequest SimpleRequest(uint32_t targets, uint32_t sources, const planner::ModelShape& model, double nic = 50e9);

uint32_t CeilLog2(uint64_t x);

}  // namespace modelcast::testing
