#include <gtest/gtest.h>

#include "modelcast/common/config.h"
#include "support/temp_dir.h"

namespace modelcast {
namespace {

constexpr const char* kCluster = R"(name: test
nodes:
  - name: n0
    gpus: 2
    nic: 400Gbit
    host_memory: 512GiB
  - name: n1
    gpus: two
)";

TEST(ConfigTest, ReadsValuesWithTypes) {
  auto root = ConfigNode::ParseString(kCluster, "cluster.yaml");
  ASSERT_TRUE(root.ok()) << root.status().ToString();
  EXPECT_EQ(*root->GetString("name"), "test");
  auto nodes = root->Child("nodes")->Elements();
  ASSERT_TRUE(nodes.ok());
  ASSERT_EQ(nodes->size(), 2u);
  EXPECT_EQ(*(*nodes)[0].GetInt("gpus"), 2);
  EXPECT_DOUBLE_EQ(*(*nodes)[0].GetBitRate("nic"), 400e9);
  EXPECT_EQ(*(*nodes)[0].GetBytes("host_memory"), 512ull << 30);
  EXPECT_EQ(*(*nodes)[0].GetInt("ssds", 1), 1);  // default
}

TEST(ConfigTest, TypeErrorNamesFileLineAndKey) {
  auto root = ConfigNode::ParseString(kCluster, "cluster.yaml");
  auto nodes = *root->Child("nodes")->Elements();
  auto gpus = nodes[1].GetInt("gpus");
  ASSERT_FALSE(gpus.ok());
  EXPECT_EQ(gpus.status().message(), "cluster.yaml:8: nodes[1].gpus: expected an integer, got 'two'");
}

TEST(ConfigTest, MissingKeyNamesTheKeyAndItsParent) {
  auto root = ConfigNode::ParseString(kCluster, "cluster.yaml");
  auto nodes = *root->Child("nodes")->Elements();
  auto nic = nodes[1].GetBitRate("nic");
  ASSERT_FALSE(nic.ok());
  EXPECT_EQ(nic.status().message(), "cluster.yaml:7: nodes[1]: missing required key 'nic'");
}

TEST(ConfigTest, UnknownAndDuplicateKeys) {
  auto root = ConfigNode::ParseString("name: a\nnodez: []\n", "c.yaml");
  Status s = root->CheckKeys({"name", "nodes"});
  EXPECT_EQ(s.message(), "c.yaml:2: nodez: unknown key (expected one of: name, nodes)");
  auto dup = ConfigNode::ParseString("name: a\nname: b\n", "c.yaml");
  EXPECT_EQ(dup->CheckKeys({"name"}).message(), "c.yaml:2: name: key appears twice");
}

TEST(ConfigTest, InvalidYamlNamesLineAndColumn) {
  auto root = ConfigNode::ParseString("nodes:\n  - name: [unclosed\n", "bad.yaml");
  ASSERT_FALSE(root.ok());
  EXPECT_EQ(root.status().message().rfind("bad.yaml:", 0), 0u) << root.status().message();
  EXPECT_NE(root.status().message().find("invalid YAML"), std::string::npos);
  EXPECT_FALSE(ConfigNode::ParseString("", "empty.yaml").ok());
}

TEST(ConfigTest, WrongShapes) {
  auto root = ConfigNode::ParseString("nodes: 3\nname: [a]\n", "c.yaml");
  EXPECT_EQ(root->Child("nodes")->Elements().status().message(), "c.yaml:1: nodes: expected a list");
  EXPECT_EQ(root->GetString("name").status().message(), "c.yaml:2: name: expected a string, got a list");
  EXPECT_FALSE(root->GetBool("nodes").ok());
}

TEST(ConfigTest, ParseFileUsesTheFileName) {
  testing::TempDir dir;
  testing::WriteAll(dir / "node.yaml", "port: 80x\n");
  auto root = ConfigNode::ParseFile(dir / "node.yaml");
  ASSERT_TRUE(root.ok());
  EXPECT_EQ(root->GetInt("port").status().message(), "node.yaml:1: port: expected an integer, got '80x'");
  EXPECT_EQ(ConfigNode::ParseFile(dir / "missing.yaml").status().code(), StatusCode::kIOError);
}

}  // namespace
}  // namespace modelcast
