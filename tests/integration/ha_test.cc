// A head of two coordinators sharing their state in three real etcd members, with real agents on
// loopback: the leader SIGKILLed in the middle of a scale-out (the standby leads within the lease,
// adopts the operation under the same id and finishes it; every copy verified, nothing left
// running on any agent), an etcd member killed and restarted while operations run, and the three
// coordinators of a serving head restarted one by one under a load of retrying OpenAI clients.
#include <gtest/gtest.h>

#include <fstream>

#include "support/etcd_members.h"
#include "support/loopback_cluster.h"
#include "support/npm_reference.h"

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
  EXPECT_EQ(standbys[0]->Stdout().find("listening on"), std::string::npos) << "a standby does not serve";
  const std::string id = ScaleOut("tiny-llm", 2);
  ASSERT_TRUE(WaitReceiving(id, "node-1")) << "the scale-out ended before the leader could be killed";
  Disconnect();
  const auto killed = std::chrono::steady_clock::now();
  coordinator->Kill(SIGKILL);
  coordinator->Wait(10s);
  ASSERT_TRUE(standbys[0]->WaitForOutput("listening on", 15s)) << standbys[0]->Wait(1s).err;
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  std::string error;
  ASSERT_TRUE(Connect("127.0.0.1", standby_ports[0], kToken, &error)) << error;
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
  // The Python example autoscaler, given both coordinators (the dead one first), acts through
  // the one that leads: 2 req/s at 2 per replica wants 1 of the 2 instances.
  testing::WriteAll(dir / "token", kToken);
  testing::WriteAll(dir / "rate", "2\n");
  setenv("PYTHONPATH", MODELCAST_TEST_GEN_PY, 1);
  auto py = testing::RunProcess(
      {"/usr/bin/python3", testing::SourcePath("examples/autoscaler.py"), "--coordinator",
       "127.0.0.1:" + std::to_string(port) + ",127.0.0.1:" + std::to_string(standby_ports[0]), "--token-file",
       (dir / "token").string(), "--model", "tiny-llm", "--rate-file", (dir / "rate").string(), "--window", "0.1",
       "--once"},
      60s);
  unsetenv("PYTHONPATH");
  if (py.err.find("No module named 'thrift'") == std::string::npos) {
    EXPECT_EQ(py.exit_code, 0) << py.err;
    EXPECT_NE(py.out.find("replicas 2 -> 1"), std::string::npos) << py.out;
    EXPECT_NE(py.out.find("(scale-in to node-"), std::string::npos) << py.out;
    EXPECT_NE(py.out.find("): SUCCEEDED"), std::string::npos) << py.out;
  }
  std::printf("figure: leader killed mid-scale-out: the standby listening after %.2f s (lease 2 s); operation %s "
              "%s with %d of %u slices landed when the standby took it, finished by it\n",
              took, id.c_str(), rpc::to_string(adopted.state).c_str(), landed, 2 * nslices);
  std::fflush(stdout);
}

// One etcd member of three killed while a scale-out runs, and started again with its data while
// the next one runs: no operation notices, and the leader keeps its lease throughout.
TEST_F(HaTest, AnEtcdMemberKilledAndRestartedDuringOperations) {
  // A 3 s lease: the etcd members elect a new leader of theirs when one is killed, and the
  // coordinator's keep-alives wait meanwhile.
  ASSERT_NO_FATAL_FAILURE(
      StartCluster({.nodes = 4, .fault = "delay=50ms", .etcd = etcd.YamlList(), .lease = "3s"}));
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
  EXPECT_TRUE(standbys[0]->Running()) << "the standby stood by throughout";
  EXPECT_EQ(standbys[0]->Stdout().find("listening on"), std::string::npos) << "the leader never lost its lease";
  // The member that came back answers again.
  auto alone = coordinator::EtcdClient::Create({etcd.Endpoints()[0]}, 5);
  ASSERT_TRUE(alone.ok());
  testing::WaitUntil([&] { return (*alone)->Version().ok(); }, 10s, 100ms);
  EXPECT_TRUE((*alone)->Version().ok());
}

// Three coordinators, each answering the HTTP API (the leader serves, the standbys forward to
// it), restarted one by one (SIGTERM: a leader resigns, and a standby leads at once) while the
// official openai client (tests/text/openai_load.mjs) sends completions through all three and
// retries as it does by default: not one request fails.
TEST_F(HaTest, ThreeCoordinatorsRestartedOneByOneUnderLoadFailNoRequest) {
  ASSERT_NO_FATAL_FAILURE(testing::FetchNpmReference());
  // A 3 s lease: a leader on a loaded machine keeps it through the restarts (with 2 s, TSan-slowed
  // coordinators lost it; each restart here is asked for, not a death).
  ASSERT_NO_FATAL_FAILURE(
      StartCluster({.nodes = 2, .serving = true, .etcd = etcd.YamlList(), .standbys = 2, .lease = "3s"}));
  ASSERT_EQ(WaitForEnd(ScaleOut("tiny-llm", 1)).state, rpc::OperationState::SUCCEEDED);
  const httplib::Headers auth = {{"Authorization", std::string("Bearer ") + kToken}};
  const std::string body = R"({"model": "tiny-llm", "prompt": [1, 2, 3], "max_tokens": 2})";
  for (int p : http_ports) {  // every coordinator answers, the standbys through the leader
    httplib::Client http("127.0.0.1", p);
    std::string seen;
    auto served = [&] {
      auto res = http.Post("/v1/completions", auth, body, "application/json");
      seen = res ? std::to_string(res->status) + " " + res->body : httplib::to_string(res.error());
      return res && res->status == 200;
    };
    testing::WaitUntil(served, 30s, 100ms);
    ASSERT_TRUE(served()) << "port " << p << ": " << seen;
  }
  {  // a stream through a standby comes as server-sent events, the same as the leader's
    httplib::Client leader("127.0.0.1", http_ports[0]), standby_http("127.0.0.1", http_ports[1]);
    const std::string stream = R"({"model": "tiny-llm", "prompt": [1, 2, 3], "max_tokens": 3, "stream": true})";
    auto direct = leader.Post("/v1/completions", auth, stream, "application/json");
    auto forwarded = standby_http.Post("/v1/completions", auth, stream, "application/json");
    ASSERT_TRUE(direct && forwarded);
    EXPECT_EQ(forwarded->status, 200) << forwarded->body;
    EXPECT_EQ(forwarded->get_header_value("Content-Type").rfind("text/event-stream", 0), 0u);
    auto texts = [](const std::string& sse) {  // the events' text, without their ids and times
      std::string all;
      for (size_t at = sse.find("\"text\":\""); at != std::string::npos; at = sse.find("\"text\":\"", at + 1)) {
        all += sse.substr(at, sse.find('"', at + 8) - at) + "|";
      }
      return all;
    };
    EXPECT_FALSE(texts(direct->body).empty()) << direct->body;
    EXPECT_EQ(texts(forwarded->body), texts(direct->body));
    EXPECT_NE(forwarded->body.find("data: [DONE]"), std::string::npos) << forwarded->body;
    // A bad request is the leader's answer, passed on.
    auto bad = standby_http.Post("/v1/completions", auth, R"({"prompt": [1]})", "application/json");
    ASSERT_TRUE(bad);
    EXPECT_EQ(bad->status, 400) << bad->body;
    EXPECT_NE(bad->body.find("'model' is missing"), std::string::npos) << bad->body;
  }
  std::vector<std::string> argv = {"node", testing::SourcePath("tests/text/openai_load.mjs"), testing::NpmDir().string(),
                                   kToken, "tiny-llm", (dir / "load.json").string(), (dir / "load.stop").string()};
  for (int p : http_ports) argv.push_back("http://127.0.0.1:" + std::to_string(p) + "/v1");
  testing::Child load(argv);
  std::this_thread::sleep_for(2s);  // a steady load first
  auto restart = [&](std::unique_ptr<testing::Child>& c, const std::string& config) {
    c->Kill(SIGTERM);
    auto r = c->Wait(30s);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    c = std::make_unique<testing::Child>(
        std::vector<std::string>{ToolPath("modelcast-coordinator"), "--config", (dir / config).string()});
    ASSERT_TRUE(c->WaitForError("standing by", 30s)) << c->Wait(1s).err;
  };
  for (size_t k = 0; k < standbys.size(); ++k) {
    ASSERT_NO_FATAL_FAILURE(restart(standbys[k], StandbyConfig(k)));
    std::this_thread::sleep_for(1s);
  }
  Disconnect();
  const auto resigned = std::chrono::steady_clock::now();
  ASSERT_NO_FATAL_FAILURE(restart(coordinator, "cluster.yaml"));  // the leader: one of the standbys leads
  testing::WaitUntil([&] { return standbys[0]->Stdout().find("listening on") != std::string::npos ||
                                  standbys[1]->Stdout().find("listening on") != std::string::npos; },
                     15s, 10ms);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - resigned).count();
  std::this_thread::sleep_for(3s);  // and the load goes on through the new leader
  testing::WriteAll(dir / "load.stop", "");
  auto ended = load.Wait(60s);
  ASSERT_EQ(ended.exit_code, 0) << ended.err;
  const auto counts = nlohmann::json::parse(testing::ReadAll(dir / "load.json"));
  EXPECT_EQ(counts["failed"], 0) << counts.dump();
  EXPECT_GT(counts["ok"].get<int>(), 50) << counts.dump();
  std::printf("figure: 3 coordinators restarted one by one under load: %d requests answered, %d failed (new leader "
              "listening %.2f s after the old one was asked to stop)\n",
              counts["ok"].get<int>(), counts["failed"].get<int>(), took);
  std::fflush(stdout);
}

}  // namespace
}  // namespace modelcast
