#include "modelcast/sim/scenario.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "modelcast/model/checkpoint.h"
#include "modelcast/model/package.h"

namespace modelcast::sim {
namespace fs = std::filesystem;

Result<ModelSpec> LoadModelSpec(const std::string& spec, int64_t blocks, uint64_t slice_bytes) {
  ModelSpec m;
  std::error_code ec;
  const fs::path path(spec);
  if (fs::exists(path / model::kManifestFile, ec)) {
    MC_ASSIGN_OR_RETURN(model::Package pkg, model::Package::Open(path));
    m.name = pkg.manifest().name;
    m.config = pkg.manifest().config;
    m.dtype = pkg.manifest().dtype;
    m.shape = coord::ModelShape::FromManifest(pkg.manifest());
    m.bytes = m.shape.TotalBytes();
    return m;
  }
  if (fs::is_directory(path, ec) || path.filename() == "config.json") {
    const fs::path config = fs::is_directory(path, ec) ? path / "config.json" : path;
    MC_ASSIGN_OR_RETURN(m.config, model::LlamaConfig::FromFile(config));
    m.name = fs::absolute(config).parent_path().filename().string();
  } else {
    MC_ASSIGN_OR_RETURN(m.config, coord::KnownModelConfig(spec));
    m.name = spec;
  }
  m.dtype = m.config.torch_dtype;
  m.bytes = m.config.ParameterCount() * DTypeSize(m.dtype);
  if (blocks <= 0) blocks = std::min<int64_t>(m.config.num_hidden_layers, 32);
  if (slice_bytes == 0) {
    const double want = static_cast<double>(m.bytes) / 2048.0;
    slice_bytes = std::clamp<uint64_t>(static_cast<uint64_t>(want) / 4096 * 4096, 4ull << 20, 256ull << 20);
  }
  MC_ASSIGN_OR_RETURN(m.shape, coord::ModelShape::FromConfig(m.name, m.config, m.dtype, blocks, slice_bytes));
  return m;
}

Result<Scenario> BuildScenario(const coord::ClusterConfig& cluster, const ModelSpec& model, const ScenarioOptions& o) {
  Scenario sc;
  sc.cluster = cluster;
  sc.model = model;
  const int64_t n = static_cast<int64_t>(cluster.nodes.size());
  if (o.sources < 0) return InvalidArgument("--sources must not be negative");
  if (o.targets < 0) return InvalidArgument("--targets must not be negative");
  const int64_t targets = o.targets == 0 ? n - o.sources : o.targets;
  if (targets < 1)
    return InvalidArgument("no targets: cluster '" + cluster.name + "' has " + std::to_string(n) + " nodes and " +
                           std::to_string(o.sources) + " sources");
  if (o.sources + targets > n) {
    return InvalidArgument(std::to_string(o.sources) + " sources and " + std::to_string(targets) + " targets need " +
                           std::to_string(o.sources + targets) + " nodes; cluster '" + cluster.name + "' has " +
                           std::to_string(n));
  }
  // GPUs per instance: the weights plus a fifth for the KV cache and activations.
  const uint64_t gpu_memory = cluster.nodes.front().gpu_memory;
  sc.gpus_per_instance = std::max<int64_t>(
      1, static_cast<int64_t>(std::ceil(1.2 * static_cast<double>(model.bytes) / static_cast<double>(gpu_memory))));
  for (const auto& node : cluster.nodes) {
    if (sc.gpus_per_instance > node.gpus) {
      return InvalidArgument("model '" + model.name + "' needs " + std::to_string(sc.gpus_per_instance) + " GPUs of " +
                             std::to_string(gpu_memory >> 30) + " GiB; node '" + node.name + "' has " +
                             std::to_string(node.gpus));
    }
  }
  coord::PlanRequest& r = sc.request;
  r.model = model.shape;
  r.locality = o.locality;
  const int64_t local_count = o.local_count < 0 ? targets : std::min(o.local_count, targets);
  for (int64_t i = 0; i < n; ++i) {
    const coord::NodeConfig& c = cluster.nodes[i];
    coord::PlanNode p;
    p.name = c.name;
    p.nic = c.nic;
    if (i < o.sources) {
      p.holds = coord::Tier::kGpu;
      r.sources.push_back(static_cast<int32_t>(i));
    } else if (i < o.sources + targets) {
      if (o.local_tier != coord::Tier::kNone && i - o.sources < local_count) {
        p.holds = o.local_tier;
        p.local_rate = o.local_tier == coord::Tier::kHost ? c.pcie : std::min(c.ssd, c.pcie);
      }
      r.targets.push_back(static_cast<int32_t>(i));
    }
    r.nodes.push_back(p);
  }
  return sc;
}

}  // namespace modelcast::sim
