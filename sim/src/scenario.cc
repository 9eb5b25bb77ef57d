#include "modelcast/sim/scenario.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "modelcast/common/units.h"
#include "modelcast/model/checkpoint.h"
#include "modelcast/model/package.h"

namespace modelcast::sim {
namespace fs = std::filesystem;

namespace {

// A Llama of about `params` parameters with Llama-2's proportions: hidden 4096 / 5120 / 8192
// for up to 10 B / 30 B / more, MLP 2.7x hidden, 128-wide heads (grouped 8:1 past 30 B), a
// 32,000-token vocabulary, and as many layers as the parameter count allows.
Result<model::LlamaConfig> LlamaOfSize(double params, const std::string& spec) {
  model::LlamaConfig c;
  c.hidden_size = params > 30e9 ? 8192 : params > 10e9 ? 5120 : 4096;
  c.intermediate_size = c.hidden_size * 27 / 10 / 256 * 256;
  c.num_attention_heads = c.hidden_size / 128;
  c.num_key_value_heads = params > 30e9 ? c.num_attention_heads / 8 : c.num_attention_heads;
  c.head_dim = 128;
  c.vocab_size = 32000;
  c.rms_norm_eps = 1e-5;
  const double h = static_cast<double>(c.hidden_size);
  const double kv = static_cast<double>(c.num_key_value_heads * c.head_dim);
  const double per_layer = 2 * h * h + 2 * h * kv + 3 * h * static_cast<double>(c.intermediate_size) + 2 * h;
  const double layers = std::round((params - 2 * static_cast<double>(c.vocab_size) * h) / per_layer);
  if (layers < 1) return InvalidArgument("model size '" + spec + "' is too small for a Llama layer");
  c.num_hidden_layers = static_cast<int64_t>(layers);
  c.torch_dtype = DType::kBF16;
  MC_RETURN_IF_ERROR(c.Validate(spec));
  return c;
}

}  // namespace

Result<ModelSpec> LoadModelSpec(const std::string& spec, int64_t blocks, uint64_t slice_bytes) {
  ModelSpec m;
  std::error_code ec;
  const fs::path path(spec);
  if (fs::exists(path / model::kManifestFile, ec)) {
    MC_ASSIGN_OR_RETURN(model::Package pkg, model::Package::Open(path));
    m.name = pkg.manifest().name;
    m.config = pkg.manifest().config;
    m.dtype = pkg.manifest().dtype;
    m.shape = planner::ModelShape::FromManifest(pkg.manifest());
    m.bytes = m.shape.TotalBytes();
    return m;
  }
  if (fs::is_directory(path, ec) || path.filename() == "config.json") {
    const fs::path config = fs::is_directory(path, ec) ? path / "config.json" : path;
    MC_ASSIGN_OR_RETURN(m.config, model::LlamaConfig::FromFile(config));
    m.name = fs::absolute(config).parent_path().filename().string();
  } else if (auto known = planner::KnownModelConfig(spec); known.ok()) {
    m.config = *known;
    m.name = spec;
  } else if (spec.size() > 7 && spec.ends_with("-params")) {  // "13e9-params"
    char* end = nullptr;
    const double params = std::strtod(spec.c_str(), &end);
    if (end != spec.c_str() + spec.size() - 7 || !(params > 0)) return InvalidArgument("bad model size '" + spec + "'");
    MC_ASSIGN_OR_RETURN(m.config, LlamaOfSize(params, spec));
    m.name = spec;
  } else if (auto bytes = ParseByteSize(spec); bytes.ok() && *bytes > 0) {  // "140GB": bf16 weights
    MC_ASSIGN_OR_RETURN(m.config, LlamaOfSize(static_cast<double>(*bytes) / 2, spec));
    m.name = spec;
  } else {
    return known.status();
  }
  m.dtype = m.config.torch_dtype;
  m.bytes = m.config.ParameterCount() * DTypeSize(m.dtype);
  if (blocks <= 0) blocks = std::min<int64_t>(m.config.num_hidden_layers, 32);
  if (slice_bytes == 0) {
    const double want = static_cast<double>(m.bytes) / 2048.0;
    slice_bytes = std::clamp<uint64_t>(static_cast<uint64_t>(want) / 4096 * 4096, 4ull << 20, 256ull << 20);
  }
  MC_ASSIGN_OR_RETURN(m.shape, planner::ModelShape::FromConfig(m.name, m.config, m.dtype, blocks, slice_bytes));
  return m;
}

Result<Scenario> BuildScenario(const planner::ClusterConfig& cluster, const ModelSpec& model, const ScenarioOptions& o) {
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
  planner::PlanRequest& r = sc.request;
  r.model = model.shape;
  r.locality = o.locality;
  const int64_t local_count = o.local_count < 0 ? targets : std::min(o.local_count, targets);
  for (int64_t i = 0; i < n; ++i) {
    const planner::NodeConfig& c = cluster.nodes[i];
    planner::PlanNode p;
    p.name = c.name;
    p.nic = c.nic;
    if (i < o.sources) {
      p.holds = planner::Tier::kGpu;
      r.sources.push_back(static_cast<int32_t>(i));
    } else if (i < o.sources + targets) {
      if (o.local_tier != planner::Tier::kNone && i - o.sources < local_count) {
        p.holds = o.local_tier;
        p.local_rate = o.local_tier == planner::Tier::kHost ? c.pcie : std::min(c.ssd, c.pcie);
      }
      r.targets.push_back(static_cast<int32_t>(i));
    }
    r.nodes.push_back(p);
  }
  return sc;
}

void ScenarioFlags::Declare(ArgParser& p) {
  p.Flag("cluster", &cluster_path, "cluster YAML (cluster-configs/)");
  p.Flag("model", &model,
         "llama-2-7b|13b|70b, llama-3-8b|70b, synth-*, a size (140GB, 13e9-params), an HF config.json or "
         "checkpoint, or a package");
  p.Flag("targets", &targets, "nodes to scale out to [all but the sources]");
  p.Flag("sources", &sources, "nodes already running the model (the first ones) [1]");
  p.Flag("slice-mib", &slice_mib, "slice size in MiB [about 2048 slices]");
  p.Flag("blocks", &blocks, "blocks of layers [min(layers, 32)]");
  p.Flag("local-tier", &local_tier, "targets hold their own copy in this tier: ssd or host");
  p.Flag("local-count", &local_count, "how many targets hold a local copy [all]");
  p.Flag("no-locality", &no_locality, "lambdapipe ignores local copies");
}

Result<Scenario> BuildScenario(const ScenarioFlags& f) {
  if (f.cluster_path.empty() || f.model.empty()) return InvalidArgument("--cluster and --model are required");
  if (f.slice_mib < 0) return InvalidArgument("--slice-mib must be positive");
  MC_ASSIGN_OR_RETURN(auto cluster, planner::ClusterConfig::Load(f.cluster_path));
  MC_ASSIGN_OR_RETURN(auto spec,
                      LoadModelSpec(f.model, f.blocks, static_cast<uint64_t>(f.slice_mib * 1048576.0) / 4096 * 4096));
  ScenarioOptions so;
  so.sources = f.sources;
  so.targets = f.targets;
  so.locality = !f.no_locality;
  if (!f.local_tier.empty()) {
    auto tier = planner::ParseTier(f.local_tier);
    if (!tier.ok() || (*tier != planner::Tier::kSsd && *tier != planner::Tier::kHost)) {
      return InvalidArgument("--local-tier must be ssd or host, not '" + f.local_tier + "'");
    }
    so.local_tier = *tier;
  }
  if (f.local_count) so.local_count = *f.local_count;
  return BuildScenario(cluster, spec, so);
}

}  // namespace modelcast::sim
