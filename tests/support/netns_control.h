// The control plane in the cluster in a box: a coordinator beside node-1's agent (as on a
// cluster head) and one agent per namespace, token-authenticated, the model package at
// `dir`/pkg imported into the SSDs of the nodes given. For the netns integration tests.
#pragma once

#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/fabric_cluster.h"
#include "support/process.h"
#include "support/temp_dir.h"

namespace modelcast::testing {

class NetnsControlPlane {
 public:
  NetnsControlPlane(std::filesystem::path dir, const NetnsCluster& cluster, int nodes)
      : dir_(std::move(dir)), cluster_(cluster), nodes_(nodes) {}
  ~NetnsControlPlane() {
    for (auto& a : agents) {
      if (a && a->Running()) a->Kill(SIGTERM);
    }
    if (coordinator && coordinator->Running()) coordinator->Kill(SIGTERM);
  }

  // Set before Start: the packages (directories under `dir`) imported into the holders' SSDs,
  // and extra keys of a node's `fabric` mapping (e.g. {1, ", fault: 'corrupt=3'"}).
  std::vector<std::string> packages = {"pkg"};
  std::map<int, std::string> fabric_extra;

  // Writes cluster.yaml (`nic` as every node's link; `coordinator_extra` goes inside the
  // coordinator's mapping, e.g. ",\n  serving: {...}"), starts the coordinator, imports the
  // packages into the SSD of every node in `holders` and starts every agent. Call it inside
  // ASSERT_NO_FATAL_FAILURE.
  void Start(const std::string& nic, const std::string& token, const std::vector<int>& holders,
             const std::string& host_capacity, const std::string& coordinator_extra = "") {
    using namespace std::chrono_literals;
    const std::string head = NetnsCluster::Address(1);
    host_capacity_ = host_capacity;
    WriteAll(dir_ / "token", token);
    std::string config = "name: netns\ndefaults: {gpus: 1, gpu_memory: 4GiB, gpu_hbm: 10GB/s, gpu_tflops: 0.2, "
                         "host_memory: 8GiB, nic: " + nic + ", pcie: 10GB/s, ssd: 1GB/s, latency: 20us}\nnodes:\n";
    for (int i = 1; i <= nodes_; ++i) config += "  - {name: node-" + std::to_string(i) + "}\n";
    config += "coordinator: {address: " + head + ", port: 7300, state_dir: " + (dir_ / "coord").string() +
              ", heartbeat_interval: 200ms, heartbeat_deadline: 3s, security: {token_file: " +
              (dir_ / "token").string() + "}" + coordinator_extra + "}\n";
    WriteAll(dir_ / "cluster.yaml", config);
    ASSERT_NO_FATAL_FAILURE(StartCoordinator());
    for (int h : holders) {
      for (const auto& package : packages) {
        auto import = RunProcess({ToolPath("modelcast"), "store", "import", (dir_ / package).string(), "--ssd-dir",
                                  (dir_ / ("node-" + std::to_string(h))).string()},
                                 60s);
        ASSERT_EQ(import.exit_code, 0) << import.err;
      }
    }
    agents.resize(nodes_);
    for (int i = 1; i <= nodes_; ++i) ASSERT_NO_FATAL_FAILURE(StartAgent(i));
  }

  // Starts (or restarts) the coordinator in node-1's namespace.
  void StartCoordinator() {
    using namespace std::chrono_literals;
    coordinator = std::make_unique<Child>(
        InNs(1, {ToolPath("modelcast-coordinator"), "--config", (dir_ / "cluster.yaml").string()}));
    ASSERT_TRUE(coordinator->WaitForOutput("listening on", 30s)) << coordinator->Wait(1s).err;
  }

  // Starts (or restarts) node i's agent in its namespace.
  void StartAgent(int i) {
    using namespace std::chrono_literals;
    const std::string n = "node-" + std::to_string(i), ip = NetnsCluster::Address(i);
    const auto extra = fabric_extra.find(i);
    WriteAll(dir_ / (n + ".yaml"),
             "node: " + n + "\naddress: " + ip + "\nport: 7400\ncoordinator: {address: " + NetnsCluster::Address(1) +
                 ", port: 7300}\nfabric: {listen: '" + ip + ":7500', transport: ucx, tls: tcp, net_devices: eth0" +
                 (extra == fabric_extra.end() ? "" : extra->second) + "}\nstore: {ssd_dir: " + (dir_ / n).string() +
                 ", ssd_capacity: 4GiB, host_capacity: " + host_capacity_ + "}\nsecurity: {token_file: " +
                 (dir_ / "token").string() + "}\n");
    auto& agent = agents.at(i - 1);
    agent = std::make_unique<Child>(InNs(i, {ToolPath("modelcast-agent"), "--config", (dir_ / (n + ".yaml")).string()}));
    ASSERT_TRUE(agent->WaitForOutput("listening on", 30s)) << agent->Wait(1s).err;
  }

  std::vector<std::string> InNs(int i, std::vector<std::string> argv) const {
    argv.insert(argv.begin(), {"ip", "netns", "exec", cluster_.Namespace(i)});
    return argv;
  }

  // The modelcast command line, in the head's namespace, against the coordinator.
  ProcessResult Mc(std::vector<std::string> args) const {
    using namespace std::chrono_literals;
    args.insert(args.begin(), ToolPath("modelcast"));
    args.insert(args.end(), {"--coordinator", NetnsCluster::Address(1) + ":7300", "--token-file",
                             (dir_ / "token").string()});
    return RunProcess(InNs(1, args), 120s);
  }

  // Waits (at most 60 s) until every agent has joined; false with what was last seen.
  bool WaitAllAlive(std::string* seen) const {
    const auto by = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < by) {
      auto st = Mc({"cluster", "status", "--json"});
      *seen = st.out + st.err;
      if (st.exit_code == 0) {
        int alive = 0;
        const auto status = nlohmann::json::parse(st.out);
        for (const auto& n : status["nodes"]) alive += n["alive"].get<bool>();
        if (alive == nodes_) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return false;
  }

  // Stops every daemon with SIGTERM; each must exit cleanly. The coordinator's log is returned.
  std::string Stop() {
    using namespace std::chrono_literals;
    for (auto& a : agents) {
      if (!a->Running()) continue;  // killed by the test
      a->Kill(SIGTERM);
      EXPECT_EQ(a->Wait(30s).exit_code, 0);
    }
    coordinator->Kill(SIGTERM);
    auto r = coordinator->Wait(30s);
    EXPECT_EQ(r.exit_code, 0);
    return r.err;
  }

  std::unique_ptr<Child> coordinator;
  std::vector<std::unique_ptr<Child>> agents;

 private:
  std::filesystem::path dir_;
  const NetnsCluster& cluster_;
  int nodes_;
  std::string host_capacity_;
};

}  // namespace modelcast::testing
