// Fuzzes the cluster YAML: the YAML parser under ConfigNode, then every key's checks. Whatever
// parses must describe a cluster the planner can use: nodes with unique, non-empty names, and
// finite, positive rates and sizes (bad input is refused with an error, never let through).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "modelcast/common/config.h"
#include "modelcast/planner/cluster.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace modelcast;
  auto root = ConfigNode::ParseString(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz/cluster.yaml");
  if (!root.ok()) return 0;
  auto c = planner::ClusterConfig::Parse(*root);
  if (!c.ok()) {
    if (c.status().message().empty()) std::abort();  // a refusal names what is wrong
    return 0;
  }
  if (c->nodes.empty()) std::abort();
  auto finite_positive = [](double x) { return std::isfinite(x) && x > 0; };
  if (!(std::isfinite(c->per_transfer_overhead) && c->per_transfer_overhead >= 0)) std::abort();
  for (size_t i = 0; i < c->nodes.size(); ++i) {
    const auto& n = c->nodes[i];
    if (n.name.empty() || c->FindNode(n.name) != static_cast<int>(i)) std::abort();
    if (!finite_positive(n.nic) || !finite_positive(n.pcie) || !finite_positive(n.ssd) ||
        !finite_positive(n.gpu_hbm) || !finite_positive(n.gpu_tflops))
      std::abort();
    if (n.gpus < 1 || n.gpu_memory == 0 || n.host_memory == 0) std::abort();
    if (!(std::isfinite(n.latency) && n.latency >= 0)) std::abort();
  }
  return 0;
}
