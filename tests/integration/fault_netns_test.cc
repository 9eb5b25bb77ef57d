// Faults during a scale-out in the cluster in a box: a coordinator and eight agents in network
// namespaces on shaped links, a ~100 MB model multicast from node-1 (and node-2) to the others,
// and one fault per test, with real signals and real links: a receiver killed halfway, a
// relay killed early, a source killed (one of two, and the only one), a node's link cut and
// restored, slices corrupted in flight, a node's SSD filling up during the write-behind, an
// agent killed and restarted, the coordinator killed and restarted. Each test checks that the survivors end with verified copies, that the
// operation says exactly which nodes were lost, that nothing hangs past its deadline and that
// no agent is left running a fragment; the timing figures are printed for docs/RELIABILITY.md.
#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <thread>

#include <nlohmann/json.hpp>

#include "Agent.h"
#include "modelcast/model/prepare.h"
#include "support/coordinator_probe.h"
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

constexpr int kNodes = 8;
constexpr const char* kPrefix = "mcf";  // apart from the other netns tests' namespaces
constexpr const char* kToken = "netns-fault-test-token-0123456789";
constexpr const char* kRate = "300mbit";

double Now() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

class FaultNetnsTest : public ::testing::Test, public testing::CoordinatorProbe {
 protected:
  // Brings up the cluster with the model ("hf", and "model-b" when `two_models`) on the SSDs
  // of `holders`; `fabric_extra` adds keys to a node's fabric mapping; node `small_ssd` gets
  // an SSD of 48 MiB, too small for the model.
  void Up(const std::vector<int>& holders, bool two_models = false, std::map<int, std::string> fabric_extra = {},
          int small_ssd = 0) {
    const std::string why = testing::NetnsUnavailableReason();
    if (!why.empty()) GTEST_SKIP() << why;
    // The nodes' SSDs in memory: eight write-behinds of ~100 MB at once would make the test
    // wait on this machine's one disk, not on the fabric.
    disk = std::make_unique<testing::TmpfsMount>(dir.path(), "size=4g");
    ASSERT_TRUE(disk->ok()) << disk->why();
    if (small_ssd > 0) {
      small_disk = std::make_unique<testing::TmpfsMount>(dir / ("node-" + std::to_string(small_ssd)), "size=48m");
      ASSERT_TRUE(small_disk->ok()) << small_disk->why();
    }
    Status s = testing::PrepareModel(dir.path(), "small", 7, 1 << 20);
    ASSERT_TRUE(s.ok()) << s.ToString();
    if (two_models) {
      model::PrepareOptions po;
      po.blocks = 7;
      po.slice_bytes = 1 << 20;
      po.name = "model-b";
      ASSERT_TRUE(model::Prepare(dir / "hf", dir / "pkg-b", po).ok());
    }
    cluster = std::make_unique<NetnsCluster>(kNodes, kRate, kPrefix);
    ASSERT_TRUE(cluster->status().ok()) << cluster->status().ToString();
    plane = std::make_unique<testing::NetnsControlPlane>(dir.path(), *cluster, kNodes);
    if (two_models) plane->packages.push_back("pkg-b");
    plane->fabric_extra = std::move(fabric_extra);
    ASSERT_NO_FATAL_FAILURE(plane->Start("300Mbit", kToken, holders, "512MiB"));
    head = std::make_unique<testing::InNetns>(cluster->Namespace(1));
    ASSERT_TRUE(head->ok()) << "cannot enter " << cluster->Namespace(1);
    ASSERT_NO_FATAL_FAILURE(ConnectToCoordinator());
    for (const auto& package : plane->packages) {
      rpc::RegisterModelRequest reg;
      reg.header = header;
      reg.manifest_json = testing::ReadAll(dir / package / "manifest.json");
      reg.name = nlohmann::json::parse(reg.manifest_json)["name"];
      rpc::ModelInfo info;
      client->registerModel(info, reg);
    }
    // Every agent joins and the holders' copies are known.
    auto ready = [&] {
      std::vector<rpc::ModelInfo> models;
      client->listModels(models, header);
      size_t known = 0;
      for (const auto& m : models) known += m.ssd_holders.size() == holders.size();
      return AliveNodes() == kNodes && known == plane->packages.size();
    };
    testing::WaitUntil([&] { return ready(); }, 60s, 100ms);
    ASSERT_TRUE(ready()) << "the agents did not all join, or the copies are not known";
  }

  void ConnectToCoordinator() {
    std::string error;
    testing::WaitUntil([&] { return Connect(NetnsCluster::Address(1), 7300, kToken, &error); }, 10s, 20ms);
    ASSERT_TRUE(client) << error;
  }

  void TearDown() override {
    Disconnect();
    head.reset();
    if (plane) {
      const bool logs = getenv("MODELCAST_TEST_LOGS") != nullptr;
      for (size_t i = 0; i < plane->agents.size(); ++i) {
        auto& a = plane->agents[i];
        if (!a) continue;
        const bool died = !a->Running() && !killed.count(static_cast<int>(i) + 1);
        if (a->Running()) a->Kill(SIGTERM);
        auto r = a->Wait(30s);
        EXPECT_FALSE(r.timed_out) << "node-" << i + 1 << " did not stop";
        EXPECT_FALSE(died) << "node-" << i + 1 << "'s agent died unasked; the end of its log:\n"
                           << r.err.substr(r.err.size() > 8000 ? r.err.size() - 8000 : 0);
        if (logs) std::cerr << "---- node-" << i + 1 << "\n" << r.err;
      }
      if (plane->coordinator) {
        plane->coordinator->Kill(SIGTERM);
        auto r = plane->coordinator->Wait(30s);
        EXPECT_EQ(r.exit_code, 0);
        if (logs) std::cerr << "---- coordinator\n" << r.err;
      }
    }
    plane.reset();
    cluster.reset();
    small_disk.reset();
    disk.reset();
  }

  // Waits until the targets together hold `fraction` of what they are to receive (the
  // operation still running).
  bool WaitProgress(const std::string& id, double fraction) {
    const auto by = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < by) {
      const auto op = Operation(id);
      if (op.state != rpc::OperationState::RUNNING && op.state != rpc::OperationState::PENDING) return false;
      double got = 0, total = 0;
      for (const auto& n : op.nodes) {
        if (n.role != rpc::NodeRole::TARGET) continue;
        got += n.slices_received;
        total += n.slices_total;
      }
      if (total > 0 && got >= fraction * total) return true;
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }

  // What node i's agent says it is running.
  std::vector<std::string> Running(int i) {
    auto c = rpc::Connect(NetnsCluster::Address(i), 7400, security);
    if (!c.ok()) return {"unreachable: " + c.status().message()};
    rpc::AgentClient agent((*c)->protocol);
    rpc::AgentStatus st;
    agent.getStatus(st, header);
    return st.running_operations;
  }

  // Node i's copy of `model` (written behind to its SSD) is the original, byte for byte.
  void ExpectVerifiedCopy(int i, const std::string& model = "hf", const std::string& package = "pkg") {
    const fs::path copy = dir / ("node-" + std::to_string(i)) / model;
    testing::WaitUntil([&] { return testing::SameModel(dir / package, copy).ok(); }, 60s, 100ms);
    Status same = testing::SameModel(dir / package, copy);
    EXPECT_TRUE(same.ok()) << "node-" << i << ": " << same.ToString();
  }

  // The operation ended having lost target `lost` alone: 6 of 7 replicas, that node named,
  // every other target complete with a verified copy, no live agent running anything.
  void ExpectOneTargetLost(const rpc::OperationStatus& op, int lost) {
    const std::string name = "node-" + std::to_string(lost);
    ASSERT_EQ(op.state, rpc::OperationState::FAILED) << (op.__isset.error ? op.error : "still running");
    EXPECT_NE(op.error.find("6 of 7 replicas loaded"), std::string::npos) << op.error;
    EXPECT_NE(op.error.find(name + " (lost"), std::string::npos) << op.error;
    auto nodes = ByNode(op);
    EXPECT_EQ(nodes[name].state, rpc::NodeState::LOST);
    for (int i = 2; i <= kNodes; ++i) {
      if (i == lost) continue;
      EXPECT_EQ(nodes["node-" + std::to_string(i)].state, rpc::NodeState::COMPLETE) << "node-" << i;
      ExpectVerifiedCopy(i);
    }
  }

  // Seconds from the operation's creation to the last of `nodes` completing.
  static double LastComplete(const rpc::OperationStatus& op, const std::set<std::string>& nodes) {
    double last = 0;
    for (const auto& n : op.nodes) {
      if (nodes.count(n.node) && n.__isset.complete_unix) last = std::max(last, n.complete_unix - op.created_unix);
    }
    return last;
  }

  static std::set<std::string> Nodes(int from, int to, int except = 0) {
    std::set<std::string> s;
    for (int i = from; i <= to; ++i) {
      if (i != except) s.insert("node-" + std::to_string(i));
    }
    return s;
  }

  void Kill(int i) {
    killed.insert(i);
    plane->agents[i - 1]->Kill(SIGKILL);
    plane->agents[i - 1]->Wait(10s);
  }

  // Every live agent is left running nothing.
  void ExpectNothingRunning(int except = 0) {
    for (int i = 1; i <= kNodes; ++i) {
      if (i == except) continue;
      std::vector<std::string> running;
      testing::WaitUntil([&] { return (running = Running(i)).empty(); }, 10s, 100ms);
      EXPECT_TRUE(running.empty()) << "node-" << i << " still runs " << running.front();
    }
  }

  // scripts/netns-cluster.sh `what` (e.g. "link 6 down", "shape 8 30mbit") on this cluster.
  void ClusterScript(const std::string& what) {
    const std::string cmd = testing::SourcePath("scripts/netns-cluster.sh") + " " + what + " --prefix " + kPrefix;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }

  testing::TempDir dir;
  std::unique_ptr<testing::TmpfsMount> disk, small_disk;
  std::unique_ptr<NetnsCluster> cluster;
  std::unique_ptr<testing::NetnsControlPlane> plane;
  std::unique_ptr<testing::InNetns> head;
  std::set<int> killed;  // agents the test killed
};

// One of seven receivers killed halfway through the multicast: the plan is redone around it
// from every surviving holder, the six others complete with verified copies, and the
// operation fails saying 6 of 7 replicas loaded and naming the lost node. The fault-free
// multicast of the same-sized model-b on the same cluster is the baseline of the figure.
TEST_F(FaultNetnsTest, AReceiverKilledHalfway) {
  ASSERT_NO_FATAL_FAILURE(Up({1}, /*two_models=*/true));
  const auto clean = WaitForEnd(ScaleOut("model-b", 7), 120s);
  ASSERT_EQ(clean.state, rpc::OperationState::SUCCEEDED) << (clean.__isset.error ? clean.error : "still running");
  const std::string id = ScaleOut("hf", 7);
  ASSERT_TRUE(WaitProgress(id, 0.5)) << "the scale-out ended before a receiver could be killed";
  const double killed_at = Now();
  Kill(5);
  const auto op = WaitForEnd(id, 120s);
  ASSERT_NO_FATAL_FAILURE(ExpectOneTargetLost(op, 5));
  EXPECT_GE(op.replans, 1);
  ExpectNothingRunning(/*except=*/5);
  const double fault_free = LastComplete(clean, Nodes(2, 8));
  const double survivors = LastComplete(op, Nodes(2, 8, 5));
  std::printf("figure: 1 of 7 receivers killed at %.2f s: survivors complete in %.2f s, fault-free %.2f s: %.2fx\n",
              killed_at - op.created_unix, survivors, fault_free, survivors / fault_free);
}

// A relay killed early: in the binomial pipeline every target forwards from its first slice
// on, so the node killed a fifth of the way in had peers waiting on it. They are fed from
// the other holders instead.
TEST_F(FaultNetnsTest, ARelayKilledEarly) {
  ASSERT_NO_FATAL_FAILURE(Up({1}));
  const std::string id = ScaleOut("hf", 7);
  ASSERT_TRUE(WaitProgress(id, 0.2)) << "the scale-out ended before a relay could be killed";
  Kill(3);
  const auto op = WaitForEnd(id, 120s);
  ASSERT_NO_FATAL_FAILURE(ExpectOneTargetLost(op, 3));
  ExpectNothingRunning(/*except=*/3);
}

// One of two sources killed: the other holder feeds the rest, every target completes, and
// the operation succeeds, listing the lost source.
TEST_F(FaultNetnsTest, OneOfTwoSourcesKilled) {
  ASSERT_NO_FATAL_FAILURE(Up({1, 2}));
  const std::string id = ScaleOut("hf", 6);
  ASSERT_TRUE(WaitProgress(id, 0.3)) << "the scale-out ended before a source could be killed";
  Kill(2);
  const auto op = WaitForEnd(id, 120s);
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
  auto nodes = ByNode(op);
  EXPECT_EQ(nodes["node-2"].state, rpc::NodeState::LOST);
  for (int i = 3; i <= kNodes; ++i) {
    EXPECT_EQ(nodes["node-" + std::to_string(i)].state, rpc::NodeState::COMPLETE) << "node-" << i;
    ExpectVerifiedCopy(i);
  }
  ExpectNothingRunning(/*except=*/2);
}

// The only source killed: what the targets already hold is all that is left. The operation
// ends (it does not wait for a copy that no longer exists), saying so and naming the source.
TEST_F(FaultNetnsTest, TheOnlySourceKilled) {
  ASSERT_NO_FATAL_FAILURE(Up({1}));
  const std::string id = ScaleOut("hf", 7);
  ASSERT_TRUE(WaitProgress(id, 0.3)) << "the scale-out ended before the source could be killed";
  Kill(1);
  const auto op = WaitForEnd(id, 120s);
  ASSERT_EQ(op.state, rpc::OperationState::FAILED) << (op.__isset.error ? op.error : "still running");
  EXPECT_NE(op.error.find("node-1 (lost"), std::string::npos) << op.error;
  auto nodes = ByNode(op);
  EXPECT_EQ(nodes["node-1"].state, rpc::NodeState::LOST);
  for (int i = 2; i <= kNodes; ++i) {
    const auto& n = nodes["node-" + std::to_string(i)];
    if (n.state == rpc::NodeState::COMPLETE) continue;  // it had every slice before the source died
    // Cut short: its own fragment's error (what it still expected, from whom), or how many
    // slices it held when the operation ended.
    EXPECT_EQ(n.state, rpc::NodeState::FAILED) << "node-" << i;
    EXPECT_FALSE(n.error.empty()) << "node-" << i;
  }
  ExpectNothingRunning(/*except=*/1);
  std::printf("the only source killed: %s\n", op.error.c_str());
}

// A node's link cut mid-transfer for longer than the heartbeat deadline: it is taken as lost
// and the others complete; once the link is back it rejoins, runs nothing, and a new
// scale-out gives it a verified copy.
TEST_F(FaultNetnsTest, ALinkCutAndRestored) {
  ASSERT_NO_FATAL_FAILURE(Up({1}));
  const std::string id = ScaleOut("hf", 7);
  ASSERT_TRUE(WaitProgress(id, 0.3)) << "the scale-out ended before the link could be cut";
  ASSERT_NO_FATAL_FAILURE(ClusterScript("link 6 down"));
  const double cut_at = Now();
  const auto op = WaitForEnd(id, 120s);
  ASSERT_NO_FATAL_FAILURE(ClusterScript("link 6 up"));
  ASSERT_NO_FATAL_FAILURE(ExpectOneTargetLost(op, 6));
  testing::WaitUntil([&] { return AliveNodes() == kNodes; }, 30s, 100ms);
  ASSERT_EQ(AliveNodes(), kNodes) << "not alive after the link came back: " << DeadNodes();
  ExpectNothingRunning();
  std::printf("figure: node-6's link cut %.2f s into the multicast: survivors complete %.2f s after the cut\n",
              cut_at - op.created_unix, op.created_unix + LastComplete(op, Nodes(2, 8, 6)) - cut_at);
  const auto again = WaitForEnd(ScaleOut("hf", 1, {"node-6"}), 120s);
  ASSERT_EQ(again.state, rpc::OperationState::SUCCEEDED) << (again.__isset.error ? again.error : "still running");
  EXPECT_EQ(ByNode(again)["node-6"].state, rpc::NodeState::COMPLETE);
  ExpectVerifiedCopy(6);
}

// A straggler: node-8's link shaped to a tenth of the others'. The first multicast is planned
// without knowing it; its senders time their sends to each peer, and the coordinator finds
// node-8's links far below the others' and plans it at what they carried. The next multicast
// routes around it (node-8 fed from spare link capacity, the plan says so), and the other
// targets complete without waiting for it.
TEST_F(FaultNetnsTest, AStragglerIsFoundAndRoutedAround) {
  ASSERT_NO_FATAL_FAILURE(Up({1}, /*two_models=*/true));
  ASSERT_NO_FATAL_FAILURE(ClusterScript("shape 8 30mbit"));
  const auto first = WaitForEnd(ScaleOut("model-b", 7), 240s);
  ASSERT_EQ(first.state, rpc::OperationState::SUCCEEDED) << (first.__isset.error ? first.error : "still running");
  for (const auto& n : first.nodes) {
    std::printf("first multicast: %s %s link %.1f Mbit/s, complete %.2f s\n", n.node.c_str(), rpc::to_string(n.role).c_str(),
                n.__isset.link_bytes_per_s ? n.link_bytes_per_s * 8 / 1e6 : -1.0,
                n.__isset.complete_unix ? n.complete_unix - first.created_unix : -1.0);
  }
  // The coordinator says which node is slow, and nothing else.
  rpc::ClusterStatus cs;
  client->getClusterStatus(cs, header);
  for (const auto& n : cs.nodes) {
    if (n.name == "node-8") {
      ASSERT_TRUE(n.__isset.measured_nic_bytes_per_s) << "node-8 was not found slow";
      EXPECT_LT(n.measured_nic_bytes_per_s * 8, 0.3 * 300e6) << "planned at " << n.measured_nic_bytes_per_s;
      std::printf("node-8 planned at %.1f Mbit/s\n", n.measured_nic_bytes_per_s * 8 / 1e6);
    } else {
      EXPECT_FALSE(n.__isset.measured_nic_bytes_per_s) << n.name << " taken for a straggler";
    }
  }
  // The next plan says how it treats node-8.
  rpc::ScaleOutRequest so;
  so.header = header;
  so.model = "hf";
  so.replicas = 7;
  rpc::ScaleOptions dry_run;
  dry_run.__set_dry_run(true);
  so.__set_options(dry_run);
  rpc::ScaleOutResponse dry;
  client->scaleOut(dry, so);
  const auto notes = nlohmann::json::parse(dry.plan_json).value("notes", nlohmann::json::array()).dump();
  EXPECT_NE(notes.find("straggler: node-8"), std::string::npos) << notes;
  const auto second = WaitForEnd(ScaleOut("hf", 7), 240s);
  ASSERT_EQ(second.state, rpc::OperationState::SUCCEEDED) << (second.__isset.error ? second.error : "still running");
  for (int i = 2; i <= kNodes; ++i) {
    ExpectVerifiedCopy(i, "model-b", "pkg-b");
    ExpectVerifiedCopy(i);
  }
  ExpectNothingRunning();
  const double before = LastComplete(first, Nodes(2, 7)), after = LastComplete(second, Nodes(2, 7));
  std::printf("figure: straggler node-8 at 1/10: the six others complete in %.2f s unplanned, %.2f s routed around "
              "(%.2fx); node-8 itself %.2f s, %.2f s\n",
              before, after, after / before, LastComplete(first, {"node-8"}), LastComplete(second, {"node-8"}));
  EXPECT_LT(after, before);
}

// The source's fabric corrupts three of the slices it sends: each receiver's checksum catches
// them, asks again, and every copy ends verified; the operation counts what was caught. Relays
// forward a slice while it arrives (cut-through), so a bad copy may reach every receiver before
// the first one's check fails: each is caught at least once, and at most about once per
// receiver (twice where a relay was still forwarding it when it started over).
TEST_F(FaultNetnsTest, SlicesCorruptedInFlightNeverLand) {
  ASSERT_NO_FATAL_FAILURE(Up({1}, false, {{1, ", fault: 'corrupt=3,17,40'"}}));
  const auto op = WaitForEnd(ScaleOut("hf", 7), 120s);
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
  int caught = 0;
  for (const auto& n : op.nodes) caught += n.__isset.corrupt_slices ? n.corrupt_slices : 0;
  EXPECT_GE(caught, 3);
  EXPECT_LE(caught, 2 * 7 * 3);
  for (int i = 2; i <= kNodes; ++i) ExpectVerifiedCopy(i);
  std::printf("figure: 3 slices corrupted in flight, %d caught by checksums, 0 corrupted bytes in any tier\n", caught);
}

// Node-3's SSD fills up during the write-behind (48 MiB for a ~100 MB model): the multicast
// is not held up, node-3 serves from host memory, its SSD keeps no part of the copy, and the
// coordinator says why the copy is not on SSD.
TEST_F(FaultNetnsTest, AnSsdFillingUpDuringWriteBehind) {
  ASSERT_NO_FATAL_FAILURE(Up({1}, false, {}, /*small_ssd=*/3));
  const auto op = WaitForEnd(ScaleOut("hf", 7), 120s);
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
  auto nodes = ByNode(op);
  for (int i = 2; i <= kNodes; ++i) EXPECT_EQ(nodes["node-" + std::to_string(i)].state, rpc::NodeState::COMPLETE) << "node-" << i;
  for (int i : {2, 4, 5, 6, 7, 8}) ExpectVerifiedCopy(i);
  const auto instances = InstanceNodes("hf");
  EXPECT_NE(std::find(instances.begin(), instances.end(), "node-3:LOCAL"), instances.end());
  std::string why;
  const auto by = std::chrono::steady_clock::now() + 30s;
  while (why.empty() && std::chrono::steady_clock::now() < by) {
    std::vector<rpc::ModelInfo> models;
    client->listModels(models, header);
    for (const auto& m : models) {
      if (m.summary.name == "hf" && m.ssd_errors.count("node-3")) why = m.ssd_errors.at("node-3");
    }
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_NE(why.find("No space left"), std::string::npos) << "the coordinator does not say why: '" << why << "'";
  for (const auto& entry : testing::ListDir(dir / "node-3")) {
    EXPECT_EQ(entry.find("hf"), std::string::npos) << "node-3's SSD keeps part of the copy: " << entry;
  }
  std::printf("node-3's SSD full: %s\n", why.c_str());
}

// An agent SIGKILLed mid-operation and started again at once (before the heartbeat deadline):
// it rejoins with what its SSD holds, the operation ends without waiting on the dead process,
// and the node runs nothing afterwards.
TEST_F(FaultNetnsTest, AnAgentKilledAndRestarted) {
  ASSERT_NO_FATAL_FAILURE(Up({1}));
  const std::string id = ScaleOut("hf", 7);
  ASSERT_TRUE(WaitProgress(id, 0.3)) << "the scale-out ended before the agent could be killed";
  Kill(4);
  ASSERT_NO_FATAL_FAILURE(plane->StartAgent(4));
  const auto op = WaitForEnd(id, 120s);
  ASSERT_NE(op.state, rpc::OperationState::RUNNING) << "the operation did not end";
  auto nodes = ByNode(op);
  for (int i : {2, 3, 5, 6, 7, 8}) {
    EXPECT_EQ(nodes["node-" + std::to_string(i)].state, rpc::NodeState::COMPLETE) << "node-" << i;
    ExpectVerifiedCopy(i);
  }
  if (op.state == rpc::OperationState::SUCCEEDED) {
    ExpectVerifiedCopy(4);
  } else {
    EXPECT_NE(op.error.find("node-4 (lost"), std::string::npos) << op.error;
  }
  testing::WaitUntil([&] { return AliveNodes() == kNodes; }, 30s, 100ms);
  EXPECT_EQ(AliveNodes(), kNodes) << "not alive after the restart: " << DeadNodes();
  ExpectNothingRunning();
  std::printf("an agent killed and restarted: %s%s\n", rpc::to_string(op.state).c_str(),
              op.__isset.error ? (": " + op.error).c_str() : "");
}

// The coordinator SIGKILLed mid-operation and started again: the figure is how long until its
// view is whole again (every agent alive, the operation known); the operation then completes
// with every copy verified.
TEST_F(FaultNetnsTest, TheCoordinatorKilledAndRestarted) {
  ASSERT_NO_FATAL_FAILURE(Up({1}));
  const std::string id = ScaleOut("hf", 7);
  ASSERT_TRUE(WaitProgress(id, 0.3)) << "the scale-out ended before the coordinator could be killed";
  Disconnect();
  plane->coordinator->Kill(SIGKILL);
  plane->coordinator->Wait(10s);
  const auto restarted = std::chrono::steady_clock::now();
  ASSERT_NO_FATAL_FAILURE(plane->StartCoordinator());
  ASSERT_NO_FATAL_FAILURE(ConnectToCoordinator());
  auto whole = [&] {
    const auto op = Operation(id);
    return AliveNodes() == kNodes && op.id == id;
  };
  testing::WaitUntil([&] { return whole(); }, 30s, 10ms);
  const double back = std::chrono::duration<double>(std::chrono::steady_clock::now() - restarted).count();
  ASSERT_TRUE(whole()) << "the coordinator's view was not whole after 30 s";
  const auto op = WaitForEnd(id, 120s);
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
  for (int i = 2; i <= kNodes; ++i) ExpectVerifiedCopy(i);
  ExpectNothingRunning();
  std::printf("figure: coordinator restarted mid-operation: state whole again %.2f s after the restart began\n", back);
}

}  // namespace
}  // namespace modelcast
