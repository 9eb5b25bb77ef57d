// The control plane in the cluster in a box: a coordinator and eight agents, each agent in its
// own network namespace on a link shaped to 1 Gbit/s (the coordinator beside node-1's agent,
// as on a cluster head), the model on node-1's SSD. `modelcast scale-out -n 7 --wait`, run
// inside the head's namespace, takes it from 1 copy to 8; every target's copy, written behind
// to its SSD, is compared byte for byte with the original.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "support/fabric_cluster.h"
#include "support/netns_control.h"
#include "support/process.h"
#include "support/temp_dir.h"
#include "support/wait.h"

namespace modelcast {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::NetnsCluster;
using testing::ToolPath;

constexpr int kNodes = 8;
constexpr const char* kPrefix = "mcc";  // apart from the fabric test's namespaces
constexpr const char* kToken = "netns-control-plane-token-0123456789";

TEST(ControlPlaneNetnsTest, OneToEightThroughTheCoordinator) {
  const std::string why = testing::NetnsUnavailableReason();
  if (!why.empty()) GTEST_SKIP() << why;
  testing::TempDir dir;
  Status s = testing::PrepareModel(dir.path(), "small", 7, 1 << 20);
  ASSERT_TRUE(s.ok()) << s.ToString();
  NetnsCluster cluster(kNodes, "1gbit", kPrefix);
  ASSERT_TRUE(cluster.status().ok()) << cluster.status().ToString();
  testing::NetnsControlPlane plane(dir.path(), cluster, kNodes);
  ASSERT_NO_FATAL_FAILURE(plane.Start("1Gbit", kToken, {1}, "256MiB"));
  auto mc = [&](std::vector<std::string> args) { return plane.Mc(std::move(args)); };
  ASSERT_EQ(mc({"models", "--register", (dir / "pkg").string()}).exit_code, 0);
  const std::string model = nlohmann::json::parse(testing::ReadAll(dir / "pkg" / "manifest.json"))["name"];
  // Every agent joins, and node-1's copy is known.
  std::string seen;
  ASSERT_TRUE(plane.WaitAllAlive(&seen)) << "the agents did not all join: " << seen;
  auto held = [&] {
    auto models = mc({"models", "--json"});
    seen = models.out + models.err;
    if (models.exit_code != 0) return false;
    const auto m = nlohmann::json::parse(models.out);
    return m.size() == 1 && m[0]["name"] == model && m[0]["ssd"] == nlohmann::json{"node-1"};
  };
  testing::WaitUntil([&] { return held(); }, 60s, 200ms);
  ASSERT_TRUE(held()) << "node-1's copy is not known: " << seen;

  auto out = mc({"scale-out", model, "-n", "7", "--wait", "--json"});
  ASSERT_EQ(out.exit_code, 0) << out.err << out.out;
  const auto op = nlohmann::json::parse(out.out);
  EXPECT_EQ(op["state"], "SUCCEEDED");
  EXPECT_EQ(op["replans"], 0);
  int targets = 0;
  for (const auto& n : op["nodes"]) {
    if (n["role"] != "TARGET") continue;
    targets++;
    EXPECT_EQ(n["state"], "COMPLETE") << n.dump();
    EXPECT_EQ(n["slices_received"], n["slices_total"]) << n.dump();
  }
  EXPECT_EQ(targets, kNodes - 1);
  std::printf("1 -> %d over 1 Gbit/s links: %.2f s\n", kNodes, op["seconds"].get<double>());
  for (int i = 2; i <= kNodes; ++i) {
    const fs::path copy = dir / ("node-" + std::to_string(i)) / model;
    testing::WaitUntil([&] { return testing::SameModel(dir / "pkg", copy).ok(); }, 60s, 100ms);
    Status same = testing::SameModel(dir / "pkg", copy);
    EXPECT_TRUE(same.ok()) << "node-" << i << ": " << same.ToString();
  }
  plane.Stop();
}

}  // namespace
}  // namespace modelcast
