// The cluster simulator: replays a plan in continuous time on the scenario's cluster.
//
// Transfers are data-driven, not tick-synchronous: a transfer starts as soon as its sender
// holds the slice, every earlier transfer of the sender (in plan order) has started, its
// receiver's earlier receives (in plan order) have started, and both links have room for
// its rate. A one-tick transfer runs at link speed; a longer one at its planned share. It
// lasts per_transfer_overhead + bytes / rate, and the slice reaches the receiver one link
// latency later. Local loads run on the node's local
// link (SSD or host memory to GPU). From the arrival times the simulator derives when each
// target becomes a full instance, when pipelines can form (the planner's own pipeline
// former, on the simulated holdings), and the serving capacity over time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "modelcast/common/status.h"
#include "modelcast/planner/plan.h"
#include "modelcast/sim/scenario.h"

namespace modelcast::sim {

struct SimOptions {
  double per_transfer_overhead = -1;  // seconds; < 0: the cluster's
  int64_t batch = 16;                 // decode batch of each serving unit
};

struct CapacityPoint {
  double seconds = 0;
  double tokens_per_s = 0;  // decode capacity of new and existing serving units
  int64_t full_instances = 0;
  int64_t pipelines = 0;
};

struct SimResult {
  std::string algorithm;
  double ideal = 0;       // model bytes / a target's link rate: what any receiver needs
  double completion = 0;  // the last target becomes a full instance
  double first_full = -1;
  double mean_full = 0;
  double first_pipeline = -1;  // the first pipeline of partial receivers can serve; -1: never
  double first_serving = -1;   // the first new capacity of any kind
  double base_capacity = 0;    // tokens/s of the sources before the scale-out
  double final_capacity = 0;
  std::vector<CapacityPoint> capacity;  // a step function: each point holds until the next
  uint64_t transfers = 0;

  // Integral of new capacity (above the base) from 0 to t: token-seconds served by the scale-out.
  double NewTokensBy(double t) const;
};

Result<SimResult> Simulate(const Scenario& scenario, const planner::Plan& plan, const SimOptions& options);

// Decode throughput (tokens/s) of one full instance, and of a pipeline with the given
// stages, on the scenario's GPUs: memory-bound weights reads or compute, whichever is slower.
double InstanceTokensPerSecond(const Scenario& sc, int64_t batch);
// Prompt tokens/s one full instance prefills (compute-bound at half the GPUs' peak).
double PrefillTokensPerSecond(const Scenario& sc);
double PipelineTokensPerSecond(const Scenario& sc, const planner::Pipeline& p, int64_t batch, double overhead);

}  // namespace modelcast::sim
