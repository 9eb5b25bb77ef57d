// The cluster in a box: fabric nodes in network namespaces on links shaped to 1 Gbit/s,
// running real lambdapipe plans; every node ends with a verified copy.
#include <gtest/gtest.h>

#include "support/fabric_cluster.h"
#include "support/temp_dir.h"

namespace modelcast {
namespace {

TEST(FabricNetnsTest, FourAndEightNodeMulticasts) {
  const std::string why = testing::NetnsUnavailableReason();
  if (!why.empty()) GTEST_SKIP() << why;
  testing::TempDir dir;
  Status s = testing::PrepareModel(dir.path(), "small", 7, 1 << 20);
  ASSERT_TRUE(s.ok()) << s.ToString();
  testing::NetnsCluster cluster(8, "1gbit");
  ASSERT_TRUE(cluster.status().ok()) << cluster.status().ToString();
  for (int n : {4, 8}) {
    SCOPED_TRACE(std::to_string(n) + " nodes");
    std::vector<testing::FabricNode> nodes;
    for (int i = 1; i <= n; ++i) {
      testing::FabricNode node{"node-" + std::to_string(i), i == 1};
      node.netns = cluster.Namespace(i);
      node.ip = testing::NetnsCluster::Address(i);
      nodes.push_back(node);
    }
    testing::RunAndVerify(nodes, "lambdapipe", dir / "pkg", dir / ("run-" + std::to_string(n)));
  }
}

}  // namespace
}  // namespace modelcast
