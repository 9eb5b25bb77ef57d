// Fuzzes the plan JSON that agents and modelcast-fabric-node read: nlohmann's parser, then
// Plan::FromJson. Whatever is accepted must refer only to nodes, slices, blocks and ticks that
// exist (the fabric indexes by them), and must survive a serialize/parse round trip unchanged.
#include <cstdint>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "modelcast/planner/plan.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace modelcast;
  const auto j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  auto plan = planner::Plan::FromJson(j);
  if (!plan.ok()) {
    if (plan.status().message().empty()) std::abort();  // a refusal names what is wrong
    return 0;
  }
  const auto nodes = static_cast<int64_t>(plan->node_names.size());
  for (const auto& t : plan->transfers) {
    if (t.src < 0 || t.src >= nodes || t.dst < 0 || t.dst >= nodes) std::abort();
    if (t.slice >= plan->num_slices || t.end() > plan->num_ticks || t.end() <= t.tick) std::abort();
  }
  if (static_cast<int64_t>(plan->full_at.size()) != nodes) std::abort();
  (void)plan->FirstPipelineTick();
  (void)plan->FirstFullTick();
  (void)plan->LastFullTick();
  const auto text = plan->ToJson().dump();
  auto again = planner::Plan::FromJson(nlohmann::json::parse(text));
  if (!again.ok() || again->ToJson().dump() != text) std::abort();
  return 0;
}
