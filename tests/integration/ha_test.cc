// A head of two coordinators sharing their state in three real etcd members, with real agents on
// loopback: the leader SIGKILLed in the middle of a scale-out (the standby leads within the lease,
// adopts the operation under the same id and finishes it; every copy verified, nothing left
// running on any agent), and an etcd member killed and restarted while operations run.
#include <gtest/gtest.h>

#include "support/etcd_members.h"
#include "support/loopback_cluster.h"

namespace modelcast {
namespace {

class HaTest : public ScaleOutTest {
 protected:
  void SetUp() override {
    if (testing::EtcdBinary() == nullptr) GTEST_SKIP() << "no etcd binary (scripts/dev.sh installs etcd-server)";
    const Status st = etcd.Start(dir / "etcd");
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  // Every agent runs nothing, and node-0's model is still whole.
  void ExpectNothingRunning() {
    for (size_t i = 0; i < agents.size(); ++i) {
      std::vector<std::string> running;
      testing::WaitUntil([&] { return (running = Running(static_cast<int>(i))).empty(); }, 10s, 50ms);
      EXPECT_TRUE(running.empty()) << "node-" << i << " still runs " << running.front();
    }
  }

  testing::EtcdMembers etcd;
};

TEST_F(HaTest, TheLeaderKilledMidScaleOutAStandbyFinishesIt) {
  // Slices delayed in flight, so that the scale-out outlives the leader by seconds.
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 3, .fault = "delay=150ms", .etcd = etcd.YamlList()}));
  EXPECT_EQ(standby->Stdout().find("listening on"), std::string::npos) << "a standby does not serve";
  const std::string id = ScaleOut("tiny-llm", 2);
  ASSERT_TRUE(WaitReceiving(id, "node-1")) << "the scale-out ended before the leader could be killed";
  Disconnect();
  const auto killed = std::chrono::steady_clock::now();
  coordinator->Kill(SIGKILL);
  coordinator->Wait(10s);
  ASSERT_TRUE(standby->WaitForOutput("listening on", 15s)) << standby->Wait(1s).err;
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  std::string error;
  ASSERT_TRUE(Connect("127.0.0.1", standby_port, kToken, &error)) << error;
  // The operation the standby found in etcd, under its id, still running (its slices are late).
  rpc::OperationStatus adopted = Operation(id);
  EXPECT_EQ(adopted.id, id);
  int landed = 0;
  for (const auto& n : adopted.nodes) landed += n.slices_received;
  const rpc::OperationStatus op = WaitForEnd(id, 90s);
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
  EXPECT_EQ(op.id, id);
  for (const std::string n : {"node-1", "node-2"}) ExpectVerifiedCopy(n);
  EXPECT_EQ(InstanceNodes(), (std::vector<std::string>{"node-1:LOCAL", "node-2:LOCAL"}));
  ExpectNothingRunning();
  // Every agent follows the new leader: all three alive in its view.
  testing::WaitUntil([&] { return AliveNodes() == 3; }, 10s, 50ms);
  EXPECT_EQ(AliveNodes(), 3) << DeadNodes();
  EXPECT_LT(took, 2.0 + 3.0) << "led within the lease (2 s), its keep-alive and its start";
  std::printf("figure: leader killed mid-scale-out: the standby listening after %.2f s (lease 2 s); operation %s "
              "%s with %d of %u slices landed when the standby took it, finished by it\n",
              took, id.c_str(), rpc::to_string(adopted.state).c_str(), landed, 2 * nslices);
  std::fflush(stdout);
}

// One etcd member of three killed while a scale-out runs, and started again with its data while
// the next one runs: no operation notices, and the leader keeps its lease throughout.
TEST_F(HaTest, AnEtcdMemberKilledAndRestartedDuringOperations) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 4, .fault = "delay=50ms", .etcd = etcd.YamlList()}));
  std::string id = ScaleOut("tiny-llm", 1, {"node-1"});
  ASSERT_TRUE(WaitReceiving(id, "node-1")) << "the scale-out ended before the member could be killed";
  etcd.Kill(0);
  rpc::OperationStatus op = WaitForEnd(id, 60s);
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
  id = ScaleOut("tiny-llm", 1, {"node-2"});
  etcd.StartMember(0, "existing");
  op = WaitForEnd(id, 60s);
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
  id = ScaleOut("tiny-llm", 1, {"node-3"});
  op = WaitForEnd(id, 60s);
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
  for (const std::string n : {"node-1", "node-2", "node-3"}) ExpectVerifiedCopy(n);
  EXPECT_TRUE(standby->Running()) << "the standby stood by throughout";
  EXPECT_EQ(standby->Stdout().find("listening on"), std::string::npos) << "the leader never lost its lease";
  // The member that came back answers again.
  auto alone = coordinator::EtcdClient::Create({etcd.Endpoints()[0]}, 5);
  ASSERT_TRUE(alone.ok());
  testing::WaitUntil([&] { return (*alone)->Version().ok(); }, 10s, 100ms);
  EXPECT_TRUE((*alone)->Version().ok());
}

}  // namespace
}  // namespace modelcast
