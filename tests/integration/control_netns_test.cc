// The control plane in the cluster in a box: a coordinator and eight agents, each agent in its
// own network namespace on a link shaped to 1 Gbit/s (the coordinator beside node-1's agent,
// as on a cluster head), the model on node-1's SSD. `modelcast scale-out -n 7 --wait`, run
// inside the head's namespace, takes it from 1 copy to 8; every target's copy, written behind
// to its SSD, is compared byte for byte with the original.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "support/fabric_cluster.h"
#include "support/process.h"
#include "support/temp_dir.h"

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
  auto in_ns = [&](int i, std::vector<std::string> argv) {
    argv.insert(argv.begin(), {"ip", "netns", "exec", cluster.Namespace(i)});
    return argv;
  };
  const std::string head = NetnsCluster::Address(1) + ":7300";
  testing::WriteAll(dir / "token", kToken);
  std::string config = "name: netns\ndefaults: {gpus: 1, gpu_memory: 4GiB, gpu_hbm: 10GB/s, gpu_tflops: 0.2, host_memory: 8GiB, "
                       "nic: 1Gbit, pcie: 10GB/s, ssd: 1GB/s, latency: 20us}\nnodes:\n";
  for (int i = 1; i <= kNodes; ++i) config += "  - {name: node-" + std::to_string(i) + "}\n";
  config += "coordinator: {address: " + NetnsCluster::Address(1) + ", port: 7300, state_dir: " +
            (dir / "coord").string() + ", heartbeat_interval: 200ms, heartbeat_deadline: 3s, security: {token_file: " +
            (dir / "token").string() + "}}\n";
  testing::WriteAll(dir / "cluster.yaml", config);
  auto coordinator = std::make_unique<testing::Child>(
      in_ns(1, {ToolPath("modelcast-coordinator"), "--config", (dir / "cluster.yaml").string()}));
  ASSERT_TRUE(coordinator->WaitForOutput("listening on", 30s)) << coordinator->Wait(1s).err;
  auto import = testing::RunProcess(
      {ToolPath("modelcast"), "store", "import", (dir / "pkg").string(), "--ssd-dir", (dir / "node-1").string()}, 60s);
  ASSERT_EQ(import.exit_code, 0) << import.err;
  std::vector<std::unique_ptr<testing::Child>> agents;
  for (int i = 1; i <= kNodes; ++i) {
    const std::string n = "node-" + std::to_string(i), ip = NetnsCluster::Address(i);
    testing::WriteAll(dir / (n + ".yaml"),
                      "node: " + n + "\naddress: " + ip + "\nport: 7400\ncoordinator: {address: " +
                          NetnsCluster::Address(1) + ", port: 7300}\nfabric: {listen: '" + ip +
                          ":7500', transport: ucx, tls: tcp, net_devices: eth0}\nstore: {ssd_dir: " +
                          (dir / n).string() + ", ssd_capacity: 4GiB, host_capacity: 256MiB}\n" +
                          "security: {token_file: " + (dir / "token").string() + "}\n");
    agents.push_back(std::make_unique<testing::Child>(
        in_ns(i, {ToolPath("modelcast-agent"), "--config", (dir / (n + ".yaml")).string()})));
    ASSERT_TRUE(agents.back()->WaitForOutput("listening on", 30s)) << agents.back()->Wait(1s).err;
  }
  auto mc = [&](std::vector<std::string> args) {
    args.insert(args.begin(), ToolPath("modelcast"));
    args.insert(args.end(), {"--coordinator", head, "--token-file", (dir / "token").string()});
    return testing::RunProcess(in_ns(1, args), 120s);
  };
  ASSERT_EQ(mc({"models", "--register", (dir / "pkg").string()}).exit_code, 0);
  const std::string model = nlohmann::json::parse(testing::ReadAll(dir / "pkg" / "manifest.json"))["name"];
  // Every agent joins, and node-1's copy is known.
  std::string seen;
  auto ready = [&] {
    auto st = mc({"cluster", "status", "--json"});
    auto models = mc({"models", "--json"});
    seen = st.out + st.err + models.out + models.err;
    if (st.exit_code != 0 || models.exit_code != 0) return false;
    int alive = 0;
    const auto status = nlohmann::json::parse(st.out);
    for (const auto& n : status["nodes"]) alive += n["alive"].get<bool>();
    const auto m = nlohmann::json::parse(models.out);
    return alive == kNodes && m.size() == 1 && m[0]["name"] == model && m[0]["ssd"] == nlohmann::json{"node-1"};
  };
  const auto by = std::chrono::steady_clock::now() + 60s;
  while (!ready() && std::chrono::steady_clock::now() < by) std::this_thread::sleep_for(200ms);
  ASSERT_TRUE(ready()) << "the agents did not all join: " << seen << "\n" << agents[1]->Stdout();

  auto out = mc({"scale-out", model, "-n", "7", "--wait", "--json"});
  ASSERT_EQ(out.exit_code, 0) << out.err << out.out;
  const auto op = nlohmann::json::parse(out.out);
  EXPECT_EQ(op["state"], "SUCCEEDED");
  EXPECT_EQ(op["replans"], 0);
  int targets = 0;
  for (const auto& n : op["nodes"]) {
    if (n["role"] != "target") continue;
    targets++;
    EXPECT_EQ(n["state"], "complete") << n.dump();
    EXPECT_EQ(n["slices_received"], n["slices_total"]) << n.dump();
  }
  EXPECT_EQ(targets, kNodes - 1);
  std::printf("1 -> %d over 1 Gbit/s links: %.2f s\n", kNodes, op["seconds"].get<double>());
  for (int i = 2; i <= kNodes; ++i) {
    const fs::path copy = dir / ("node-" + std::to_string(i)) / model;
    const auto synced_by = std::chrono::steady_clock::now() + 60s;
    while (!testing::SameModel(dir / "pkg", copy).ok() && std::chrono::steady_clock::now() < synced_by) {
      std::this_thread::sleep_for(100ms);
    }
    Status same = testing::SameModel(dir / "pkg", copy);
    EXPECT_TRUE(same.ok()) << "node-" << i << ": " << same.ToString();
  }
  for (auto& a : agents) {
    a->Kill(SIGTERM);
    EXPECT_EQ(a->Wait(30s).exit_code, 0);
  }
  coordinator->Kill(SIGTERM);
  EXPECT_EQ(coordinator->Wait(30s).exit_code, 0);
}

}  // namespace
}  // namespace modelcast
