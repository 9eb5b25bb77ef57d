// The one mapping between a plan fragment (fabric::PlanFragment, what an agent executes) and
// its wire form, the steps of a RunFragmentRequest. The coordinator maps with ToWire; the agent
// with FromWire, which is where a fragment from the wire is checked, once.
#pragma once

#include <cstdint>
#include <string>

#include "Agent.h"
#include "modelcast/common/status.h"
#include "modelcast/fabric/fragment.h"

namespace modelcast::rpc {

// Sets req's sends, receives and local_loads from `fragment`.
void ToWire(const fabric::PlanFragment& fragment, RunFragmentRequest* req);

// The fragment `req` carries for `node`, checked against its model of `num_slices` slices: a
// negative tick or slice, a slice out of range, a bad peer or a slice received twice is
// InvalidArgument naming it.
Result<fabric::PlanFragment> FromWire(const RunFragmentRequest& req, const std::string& node, uint32_t num_slices);

}  // namespace modelcast::rpc
