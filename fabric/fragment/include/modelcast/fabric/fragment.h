// A plan fragment: one node's share of a multicast plan, the unit the coordinator sends each
// agent and the plan executor runs. The planner builds fragments (planner::FragmentOf), the RPC
// layer maps them to and from the wire (rpc::ToWire / rpc::FromWire), and the fabric executes
// them; this header is the one definition they share.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "modelcast/common/status.h"

namespace modelcast::fabric {

// One transfer of one slice to or from `peer`, in the plan's tick order.
struct FragmentStep {
  uint32_t tick = 0;
  std::string peer;
  uint32_t slice = 0;

  bool operator==(const FragmentStep&) const = default;
};

struct PlanFragment {
  std::string node;
  std::vector<FragmentStep> sends;
  std::vector<FragmentStep> receives;
  std::vector<uint32_t> local_loads;  // slices this node loads from its own tiers (the store runs them)

  // Peers this node exchanges slices with, sorted.
  std::vector<std::string> Peers() const;
  // Checks the fragment against a model of `num_slices` slices: every slice in range, every
  // peer named and not this node, no slice received twice. The error names the node, the model
  // and what is wrong.
  Status Validate(const std::string& model, uint32_t num_slices) const;

  bool operator==(const PlanFragment&) const = default;
};

}  // namespace modelcast::fabric
