// The fabric between real processes: modelcast-fabric-node runs multicast plans over UCX,
// on loopback and in the shaped network-namespace cluster; every byte is checked.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "support/fabric_cluster.h"
#include "support/temp_dir.h"

namespace modelcast {
namespace {
namespace fs = std::filesystem;
using testing::FabricNode;

// One prepared package for every test here: the tiny model with 8 layers in 4 blocks, cut
// into 64 KiB slices (about 70).
class FabricClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir;
    Status s = testing::PrepareModel(dir_->path(), "tiny", 4, 64 << 10, 8);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  static void TearDownTestSuite() { delete dir_; }
  static fs::path Package() { return dir_->path() / "pkg"; }

  static std::vector<FabricNode> Nodes(int sources, int targets) {
    std::vector<FabricNode> n;
    for (int i = 0; i < sources + targets; ++i) n.push_back({"agent-" + std::to_string(i), i < sources});
    return n;
  }

  // Runs the nodes in a fresh directory under the test's and checks every copy.
  void RunAndVerify(const std::vector<FabricNode>& nodes, const std::string& algorithm) {
    run_ = work_ / ("run-" + std::to_string(++runs_));
    testing::RunAndVerify(nodes, algorithm, Package(), run_);
  }

  nlohmann::json Report(const std::string& node) {
    return nlohmann::json::parse(testing::ReadAll(run_ / (node + ".json")));
  }

  static testing::TempDir* dir_;
  testing::TempDir work_;
  fs::path run_;
  int runs_ = 0;
};
testing::TempDir* FabricClusterTest::dir_ = nullptr;

TEST_F(FabricClusterTest, LambdaPipeOnLoopback) { RunAndVerify(Nodes(1, 4), "lambdapipe"); }

// Every node records its slices' timeline; scripts/slice-timeline.py lines them up: a line per
// link with the stages' times, each relay's forward delay, each receiver's first slice.
TEST_F(FabricClusterTest, TimelinesLineUpAcrossProcesses) {
  auto nodes = Nodes(1, 3);
  run_ = work_ / "timeline";
  fs::create_directories(run_);
  std::vector<std::string> argv = {"/usr/bin/python3", testing::SourcePath("scripts/slice-timeline.py")};
  for (auto& n : nodes) {
    n.args = {"--timeline", (run_ / (n.name + ".csv")).string()};
    argv.push_back((run_ / (n.name + ".csv")).string());
  }
  testing::RunAndVerify(nodes, "lambdapipe", Package(), run_);
  auto r = testing::RunProcess(argv);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (int i = 1; i < 4; ++i) {
    const std::string node = "agent-" + std::to_string(i);
    EXPECT_NE(r.out.find(node + ": first slice verified"), std::string::npos) << r.out;
  }
  EXPECT_NE(r.out.find("agent-0 -> agent-"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("posted -> verified"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("forwards: verified -> posted onward"), std::string::npos) << r.out;
}

TEST_F(FabricClusterTest, KWayOnLoopback) { RunAndVerify(Nodes(2, 4), "lambdapipe"); }

// Slices travel by one-sided write or by message (UCX's default here: its writes cannot tell
// each arrival on its own); a receiver that asks for messages gets them while its senders
// write to everyone else.
TEST_F(FabricClusterTest, WritesMessagesAndAMix) {
  auto nodes = Nodes(1, 4);
  for (auto& n : nodes) n.args = {"--method", "writes"};
  RunAndVerify(nodes, "lambdapipe");
  const auto source = Report("agent-0");
  EXPECT_EQ(source["slices_written"], source["slices_sent"]);
  EXPECT_GT(source["slices_sent"].get<int>(), 0);
  nodes = Nodes(1, 4);
  RunAndVerify(nodes, "lambdapipe");
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Report("agent-" + std::to_string(i))["slices_written"], 0);
  for (auto& n : nodes) n.args = {"--method", "writes"};
  nodes[2].args = {"--method", "messages"};
  RunAndVerify(nodes, "lambdapipe");
  int written = 0, sent = 0;
  for (int i = 0; i < 5; ++i) {
    written += Report("agent-" + std::to_string(i))["slices_written"].get<int>();
    sent += Report("agent-" + std::to_string(i))["slices_sent"].get<int>();
  }
  EXPECT_GT(written, 0);
  EXPECT_LT(written, sent);
}

TEST_F(FabricClusterTest, BaselinesOnLoopback) {
  for (const char* algo : {"chain", "binary-tree"}) {
    SCOPED_TRACE(algo);
    RunAndVerify(Nodes(1, 3), algo);
  }
}

TEST_F(FabricClusterTest, CorruptSliceIsFetchedAgain) {
  for (const char* method : {"writes", "messages"}) {
    SCOPED_TRACE(method);
    auto nodes = Nodes(1, 3);
    for (auto& n : nodes) n.args = {"--method", method};
    // The source corrupts three slices in flight; a dropped write lands nothing, which the
    // receiver's checksum finds too.
    nodes[0].args.insert(nodes[0].args.end(), {"--fault", std::string("corrupt=2,5,9") +
                                                              (method == std::string("writes") ? ";drop=12" : "")});
    RunAndVerify(nodes, "lambdapipe");
    // Each bad copy is caught where it first lands, and again at every receiver a relay
    // forwarded it to (cut-through) before its own check failed: at least once per fault, at
    // most once per receiver and fault, and once more where a relay was still forwarding the
    // slice when it started over.
    int refetched = 0;
    for (int i = 1; i < 4; ++i) refetched += Report("agent-" + std::to_string(i))["corrupt_refetched"].get<int>();
    const int faults = method == std::string("writes") ? 4 : 3;
    EXPECT_GE(refetched, faults);
    EXPECT_LE(refetched, 2 * 3 * faults);
  }
}

TEST_F(FabricClusterTest, KilledRelayIsAnErrorWithinADeadline) {
  auto nodes = Nodes(1, 3);
  nodes[0].args = {"--fault", "delay=20ms"};  // slow enough to kill agent-1 mid-transfer
  ASSERT_TRUE(testing::WritePlan(Package(), nodes, "lambdapipe", work_ / "plan.json").ok());
  auto children = testing::StartFabricNodes(nodes, Package(), work_ / "plan.json", work_.path(), 60);
  // Wait (bounded) until agent-1 has received a few slices, then kill it.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < until) {
    std::ifstream progress(work_ / "agent-1.progress");
    int lines = 0;
    for (std::string l; std::getline(progress, l);) ++lines;
    if (lines >= 3) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(children[1]->Running()) << "agent-1 finished before it could be killed";
  children[1]->Kill(SIGKILL);
  (void)children[1]->Wait(std::chrono::seconds(5));
  // Everyone that depended on agent-1 fails quickly, naming it; nobody hangs to the 60 s deadline.
  int named = 0;
  for (size_t i : {0u, 2u, 3u}) {
    const auto start = std::chrono::steady_clock::now();
    auto r = children[i]->Wait(std::chrono::seconds(20));
    ASSERT_FALSE(r.timed_out) << nodes[i].name << " hung after its peer died";
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(15));
    if (r.exit_code != 0) {
      EXPECT_NE(r.err.find("agent-1"), std::string::npos) << nodes[i].name << ": " << r.err;
      ++named;
    }
  }
  EXPECT_GE(named, 2);
}

TEST_F(FabricClusterTest, BadPlansAreRefused) {
  auto nodes = Nodes(1, 1);
  ASSERT_TRUE(testing::WritePlan(Package(), nodes, "lambdapipe", work_ / "plan.json").ok());
  // A node the plan does not know.
  nodes[1].name = "stranger";
  auto children = testing::StartFabricNodes({nodes[1]}, Package(), work_ / "plan.json", work_.path(), 10);
  auto r = children[0]->Wait(std::chrono::seconds(20));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("the plan has no node 'stranger'"), std::string::npos) << r.err;
  // A plan for another model (of 3 slices: whole in itself, wrong for this package).
  auto j = nlohmann::json::parse(testing::ReadAll(work_ / "plan.json"));
  j["slices"] = 3;
  auto kept = nlohmann::json::array();
  for (const auto& t : j["transfers"]) {
    if (t[3].get<int>() < 3) kept.push_back(t);
  }
  j["transfers"] = kept;
  testing::WriteAll(work_ / "other.json", j.dump());
  auto c2 = testing::StartFabricNodes({FabricNode{"agent-1"}}, Package(), work_ / "other.json", work_.path(), 10);
  r = c2[0]->Wait(std::chrono::seconds(20));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("the plan is for 3 slices"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace modelcast
