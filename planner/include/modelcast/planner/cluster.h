// A cluster description (cluster-configs/*.yaml): the nodes, their GPUs, memory, links and
// storage. The planner, the simulator and (later) the coordinator read it.
//
//   name: lambdascale-testbed
//   defaults: {gpus: 2, gpu_memory: 80GiB, gpu_hbm: 3.35TB/s, gpu_tflops: 989,
//              host_memory: 1TiB, nic: 400Gbit, pcie: 32GB/s, ssd: 7GB/s, latency: 5us}
//   node_groups: [{prefix: node, count: 12}]     # node-00 .. node-11
//   nodes: [{name: head, address: 10.0.0.1, nic: 100Gbit}]
//   network: {per_transfer_overhead: 20us}
//
// Every key is checked: an unknown key, a missing one or a bad value is an error naming the
// file, the line and the key.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "modelcast/common/config.h"
#include "modelcast/common/status.h"

namespace modelcast::planner {

struct NodeConfig {
  std::string name;
  std::string address;  // optional: where its agent listens
  int64_t port = 0;     // optional: its agent's port
  int64_t gpus = 1;
  uint64_t gpu_memory = 0;   // bytes per GPU
  double gpu_hbm = 0;        // bytes/s per GPU
  double gpu_tflops = 0;     // dense bf16, per GPU
  uint64_t host_memory = 0;  // bytes
  double nic = 0;            // bytes/s, each direction
  double pcie = 0;           // host <-> GPU bytes/s
  double ssd = 0;            // sequential read bytes/s
  double latency = 0;        // per message, seconds
};

struct ClusterConfig {
  std::string name;
  std::string description;
  std::vector<NodeConfig> nodes;
  double per_transfer_overhead = 0;  // seconds of coordination per slice transfer

  static Result<ClusterConfig> Load(const std::filesystem::path& path);
  static Result<ClusterConfig> Parse(const ConfigNode& root);
  int FindNode(const std::string& name) const;  // -1 when absent
};

}  // namespace modelcast::planner
