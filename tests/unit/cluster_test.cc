#include <gtest/gtest.h>

#include "modelcast/planner/cluster.h"

namespace modelcast::planner {
namespace {

Result<ClusterConfig> Parse(const std::string& yaml) {
  auto root = ConfigNode::ParseString(yaml, "cluster.yaml");
  if (!root.ok()) return root.status();
  return ClusterConfig::Parse(*root);
}

constexpr const char* kDefaults = R"(defaults:
  gpus: 2
  gpu_memory: 80GiB
  gpu_hbm: 3.35TB/s
  gpu_tflops: 989
  host_memory: 1TiB
  nic: 400Gbit
  pcie: 32GB/s
  ssd: 7GB/s
  latency: 5us
)";

TEST(ClusterConfigTest, GroupsAndExplicitNodes) {
  auto c = Parse(std::string("name: test\n") + kDefaults + R"(node_groups:
  - prefix: gpu
    count: 12
nodes:
  - name: slow
    nic: 100Gbit
    address: 10.0.0.9
    port: 7000
network:
  per_transfer_overhead: 20us
)");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->nodes.size(), 13u);
  EXPECT_EQ(c->nodes[0].name, "gpu-00");
  EXPECT_EQ(c->nodes[11].name, "gpu-11");
  EXPECT_DOUBLE_EQ(c->nodes[0].nic, 50e9);
  EXPECT_DOUBLE_EQ(c->nodes[12].nic, 12.5e9);
  EXPECT_EQ(c->nodes[12].address, "10.0.0.9");
  EXPECT_EQ(c->nodes[12].gpus, 2);
  EXPECT_DOUBLE_EQ(c->per_transfer_overhead, 20e-6);
  EXPECT_EQ(c->FindNode("slow"), 12);
}

TEST(ClusterConfigTest, ErrorsNameKeyAndLine) {
  auto c = Parse(std::string("name: t\n") + kDefaults + "node_groups:\n  - prefix: g\n    count: 2\n    nics: 1Gbit\n");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message().rfind("cluster.yaml:15: node_groups[0].nics: unknown key", 0), 0u)
      << c.status().message();
  c = Parse("name: t\nnodes:\n  - name: a\n    nic: 1Gbit\n");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("node 'a' has no positive 'pcie'"), std::string::npos) << c.status().message();
  c = Parse(std::string("name: t\n") + kDefaults + "nodes:\n  - name: a\n    nic: fast\n");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("cluster.yaml:14: nodes[0].nic"), std::string::npos) << c.status().message();
  c = Parse(std::string("name: t\n") + kDefaults);
  EXPECT_NE(c.status().message().find("has no nodes"), std::string::npos);
  c = Parse(std::string("name: t\n") + kDefaults + "nodes:\n  - name: a\n  - name: a\n");
  EXPECT_NE(c.status().message().find("used twice"), std::string::npos);
  c = Parse(std::string(kDefaults) + "nodes:\n  - name: a\n");
  EXPECT_NE(c.status().message().find("missing required key 'name'"), std::string::npos);
  c = Parse(std::string("name: t\nnodez: []\n"));
  EXPECT_NE(c.status().message().find("nodez: unknown key"), std::string::npos);
  c = Parse(std::string("name: t\n") + kDefaults + "node_groups:\n  - prefix: g\n    count: 0\n");
  EXPECT_NE(c.status().message().find("count: must be between 1 and 100000"), std::string::npos);
}

}  // namespace
}  // namespace modelcast::planner
