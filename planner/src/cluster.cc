#include "modelcast/planner/cluster.h"

#include <cstdio>
#include <set>

namespace modelcast::planner {
namespace {

constexpr int64_t kMaxNodes = 100000;

// Reads the node keys present in `n` over the values already in `node`.
Status ApplyNodeKeys(const ConfigNode& n, NodeConfig* node) {
  if (n.Has("address")) {
    MC_ASSIGN_OR_RETURN(node->address, n.GetString("address"));
  }
  if (n.Has("port")) {
    MC_ASSIGN_OR_RETURN(node->port, n.GetInt("port"));
    if (node->port <= 0 || node->port > 65535) return n.Child("port")->Error("must be a TCP port (1-65535)");
  }
  if (n.Has("gpus")) {
    MC_ASSIGN_OR_RETURN(node->gpus, n.GetInt("gpus"));
    if (node->gpus < 1 || node->gpus > 64) return n.Child("gpus")->Error("must be between 1 and 64");
  }
  if (n.Has("gpu_memory")) {
    MC_ASSIGN_OR_RETURN(node->gpu_memory, n.GetBytes("gpu_memory"));
  }
  if (n.Has("gpu_hbm")) {
    MC_ASSIGN_OR_RETURN(node->gpu_hbm, n.GetByteRate("gpu_hbm"));
  }
  if (n.Has("gpu_tflops")) {
    MC_ASSIGN_OR_RETURN(node->gpu_tflops, n.GetDouble("gpu_tflops"));
  }
  if (n.Has("host_memory")) {
    MC_ASSIGN_OR_RETURN(node->host_memory, n.GetBytes("host_memory"));
  }
  if (n.Has("nic")) {
    MC_ASSIGN_OR_RETURN(double bits, n.GetBitRate("nic"));
    node->nic = bits / 8;
  }
  if (n.Has("pcie")) {
    MC_ASSIGN_OR_RETURN(node->pcie, n.GetByteRate("pcie"));
  }
  if (n.Has("ssd")) {
    MC_ASSIGN_OR_RETURN(node->ssd, n.GetByteRate("ssd"));
  }
  if (n.Has("latency")) {
    MC_ASSIGN_OR_RETURN(node->latency, n.GetDuration("latency"));
  }
  return Status::Ok();
}

#define MC_NODE_KEYS \
  "address", "port", "gpus", "gpu_memory", "gpu_hbm", "gpu_tflops", "host_memory", "nic", "pcie", "ssd", "latency"

// A node must end up with positive rates and sizes, from its own keys or the defaults.
Status CheckComplete(const ConfigNode& where, const NodeConfig& n) {
  auto need = [&](bool ok, const char* key) -> Status {
    if (ok) return Status::Ok();
    return where.Error("node '" + n.name + "' has no positive '" + key + "' (set it on the node or in defaults)");
  };
  MC_RETURN_IF_ERROR(need(n.nic > 0, "nic"));
  MC_RETURN_IF_ERROR(need(n.pcie > 0, "pcie"));
  MC_RETURN_IF_ERROR(need(n.ssd > 0, "ssd"));
  MC_RETURN_IF_ERROR(need(n.gpu_memory > 0, "gpu_memory"));
  MC_RETURN_IF_ERROR(need(n.gpu_hbm > 0, "gpu_hbm"));
  MC_RETURN_IF_ERROR(need(n.gpu_tflops > 0, "gpu_tflops"));
  MC_RETURN_IF_ERROR(need(n.host_memory > 0, "host_memory"));
  return Status::Ok();
}

}  // namespace

Result<ClusterConfig> ClusterConfig::Load(const std::filesystem::path& path) {
  MC_ASSIGN_OR_RETURN(ConfigNode root, ConfigNode::ParseFile(path));
  return Parse(root);
}

Result<ClusterConfig> ClusterConfig::Parse(const ConfigNode& root) {
  // `coordinator` (the daemon's own settings) is read by CoordinatorConfig, not here.
  MC_RETURN_IF_ERROR(
      root.CheckKeys({"name", "description", "defaults", "node_groups", "nodes", "network", "coordinator"}));
  ClusterConfig c;
  MC_ASSIGN_OR_RETURN(c.name, root.GetString("name"));
  MC_ASSIGN_OR_RETURN(c.description, root.GetString("description", ""));
  NodeConfig defaults;
  if (auto d = root.OptionalChild("defaults")) {
    MC_RETURN_IF_ERROR(d->CheckKeys({MC_NODE_KEYS}));
    MC_RETURN_IF_ERROR(ApplyNodeKeys(*d, &defaults));
  }
  if (auto net = root.OptionalChild("network")) {
    MC_RETURN_IF_ERROR(net->CheckKeys({"per_transfer_overhead"}));
    MC_ASSIGN_OR_RETURN(c.per_transfer_overhead, net->GetDuration("per_transfer_overhead", 0));
  }
  std::set<std::string> names;
  auto add = [&](const ConfigNode& where, NodeConfig n) -> Status {
    if (n.name.empty()) return where.Error("node name is empty");
    if (!names.insert(n.name).second) return where.Error("node name '" + n.name + "' is used twice");
    if (static_cast<int64_t>(c.nodes.size()) >= kMaxNodes) return where.Error("more than 100000 nodes");
    MC_RETURN_IF_ERROR(CheckComplete(where, n));
    c.nodes.push_back(std::move(n));
    return Status::Ok();
  };
  if (auto groups = root.OptionalChild("node_groups")) {
    MC_ASSIGN_OR_RETURN(auto list, groups->Elements());
    for (const auto& g : list) {
      MC_RETURN_IF_ERROR(g.CheckKeys({"prefix", "count", MC_NODE_KEYS}));
      MC_ASSIGN_OR_RETURN(std::string prefix, g.GetString("prefix"));
      MC_ASSIGN_OR_RETURN(int64_t count, g.GetInt("count"));
      if (count < 1 || count > kMaxNodes) return g.Child("count")->Error("must be between 1 and 100000");
      if (g.Has("address") || g.Has("port")) return g.Error("a node group cannot give every node one address or port");
      NodeConfig base = defaults;
      MC_RETURN_IF_ERROR(ApplyNodeKeys(g, &base));
      const int width = count <= 10 ? 1 : count <= 100 ? 2 : count <= 1000 ? 3 : count <= 10000 ? 4 : 5;
      for (int64_t i = 0; i < count; ++i) {
        NodeConfig n = base;
        char buf[32];
        std::snprintf(buf, sizeof(buf), "%0*lld", width, static_cast<long long>(i));
        n.name = prefix + "-" + buf;
        MC_RETURN_IF_ERROR(add(g, std::move(n)));
      }
    }
  }
  if (auto nodes = root.OptionalChild("nodes")) {
    MC_ASSIGN_OR_RETURN(auto list, nodes->Elements());
    for (const auto& e : list) {
      MC_RETURN_IF_ERROR(e.CheckKeys({"name", MC_NODE_KEYS}));
      NodeConfig n = defaults;
      MC_ASSIGN_OR_RETURN(n.name, e.GetString("name"));
      MC_RETURN_IF_ERROR(ApplyNodeKeys(e, &n));
      MC_RETURN_IF_ERROR(add(e, std::move(n)));
    }
  }
  if (c.nodes.empty()) return root.Error("cluster '" + c.name + "' has no nodes (give node_groups or nodes)");
  return c;
}

int ClusterConfig::FindNode(const std::string& name) const {
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (nodes[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

}  // namespace modelcast::planner
