// A head of two coordinators sharing their state in three real etcd members, with real agents on
// loopback: the leader SIGKILLed in the middle of a scale-out (the standby leads within the lease,
// adopts the operation under the same id and finishes it; every copy verified, nothing left
// running on any agent), an etcd member killed and restarted while operations run, and the three
// coordinators of a serving head restarted one by one under a load of retrying OpenAI clients.
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <mutex>
#include <thread>

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

// The leader killed while pipelines of its scale-out are formed: they died with its router, and
// their stages serve nobody. The standby that leads finishes the scale-out, and each agent ends
// the dead leader's pipelines' share of its stages once it joins the new one. Before, a stage
// that the node's local instance came to share stayed owned by the dead pipeline, so a scale-in
// left it serving, with the blocks it pins, for as long as the agent ran.
TEST_F(HaTest, TheStagesOfADeadLeadersPipelinesStopOnceAStandbyLeads) {
  ASSERT_NO_FATAL_FAILURE(
      StartCluster({.nodes = 4, .fault = "delay=100ms", .serving = true, .etcd = etcd.YamlList()}));
  const std::string id = ScaleOut("tiny-llm", 3);
  std::vector<std::string> before;
  testing::WaitUntil([&] { return !(before = Stages(/*pipelines=*/true)).empty(); }, 30s, 20ms);
  ASSERT_FALSE(before.empty()) << "no pipeline formed during the scale-out";
  ASSERT_EQ(Operation(id).state, rpc::OperationState::RUNNING) << "the scale-out ended before the leader was killed";
  Disconnect();
  coordinator->Kill(SIGKILL);
  coordinator->Wait(10s);
  ASSERT_TRUE(standbys[0]->WaitForOutput("listening on", 15s)) << standbys[0]->Wait(1s).err;
  std::string error;
  ASSERT_TRUE(Connect("127.0.0.1", standby_ports[0], kToken, &error)) << error;
  const rpc::OperationStatus op = WaitForEnd(id, 90s);
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
  EXPECT_EQ(InstanceNodes(), (std::vector<std::string>{"node-1:LOCAL", "node-2:LOCAL", "node-3:LOCAL"}));
  std::vector<std::string> stages;
  testing::WaitUntil([&] { return (stages = Stages(/*pipelines=*/true)).empty(); }, 15s, 50ms);
  EXPECT_TRUE(stages.empty()) << stages.size() << " pipeline stage(s) left, the first: " << stages.front();
  int swept = 0;  // agents that ended a dead leader's share of a stage
  for (const auto& a : agents) swept += a->Stderr().find("leads: tiny-llm") != std::string::npos;
  // Every copy released through the new leader: nothing is served anywhere.
  ASSERT_EQ(WaitForEnd(ScaleIn("tiny-llm", 3)).state, rpc::OperationState::SUCCEEDED);
  testing::WaitUntil([&] { return (stages = Stages()).empty(); }, 15s, 50ms);
  EXPECT_TRUE(stages.empty()) << stages.size() << " stage(s) still served, the first: " << stages.front();
  std::printf("figure: leader killed with %zu pipeline stage(s) built (%s...); %d agent(s) ended the dead leader's "
              "share once the standby led; %zu stage(s) left after the scale-in\n",
              before.size(), before.front().c_str(), swept, stages.size());
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

// Every coordinator routes requests itself: the standbys through the engines the leader
// publishes in etcd. The leader SIGKILLed under a load of clients that do not retry, sent to
// the two standbys: not one request fails, requests are answered while no coordinator leads
// (between the kill and the next leader's start), and the routes in etcd are the new leader's.
TEST_F(HaTest, TheLeaderKilledTheStandbysServeThroughoutWithoutRetries) {
  ASSERT_NO_FATAL_FAILURE(
      StartCluster({.nodes = 2, .serving = true, .etcd = etcd.YamlList(), .standbys = 2, .lease = "2s"}));
  ASSERT_EQ(WaitForEnd(ScaleOut("tiny-llm", 1)).state, rpc::OperationState::SUCCEEDED);
  const httplib::Headers auth = {{"Authorization", std::string("Bearer ") + kToken}};
  const std::string body = R"({"model": "tiny-llm", "prompt": [1, 2, 3], "max_tokens": 2})";
  for (size_t k = 1; k < http_ports.size(); ++k) {  // each standby serves the new copy
    testing::WaitUntil([&] { return standbys[k - 1]->Stderr().find("following tiny-llm@node-1") != std::string::npos; },
                       20s, 50ms);
    ASSERT_NE(standbys[k - 1]->Stderr().find("following tiny-llm@node-1"), std::string::npos) << standbys[k - 1]->Stderr();
    // The models listed from the state in etcd (read again at most every 0.25 s).
    httplib::Client http("127.0.0.1", http_ports[k]);
    std::string listed;
    testing::WaitUntil([&] {
      auto models = http.Get("/v1/models", auth);
      listed = models ? models->body : httplib::to_string(models.error());
      return models && models->status == 200 && listed.find("\"id\":\"tiny-llm\"") != std::string::npos;
    }, 5s, 100ms);
    EXPECT_NE(listed.find("\"id\":\"tiny-llm\""), std::string::npos) << listed;
  }
  using Clock = std::chrono::steady_clock;
  std::mutex mu;
  std::vector<Clock::time_point> answered;
  std::vector<std::string> failures;
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (size_t k = 1; k < http_ports.size(); ++k) {
    for (int c = 0; c < 2; ++c) {
      clients.emplace_back([&, port = http_ports[k]] {
        httplib::Client http("127.0.0.1", port);
        http.set_read_timeout(20, 0);
        while (!stop) {
          auto res = http.Post("/v1/completions", auth, body, "application/json");
          std::lock_guard<std::mutex> lock(mu);
          if (res && res->status == 200) {
            answered.push_back(Clock::now());
          } else {
            failures.push_back("port " + std::to_string(port) + ": " +
                               (res ? std::to_string(res->status) + " " + res->body : httplib::to_string(res.error())));
          }
        }
      });
    }
  }
  std::this_thread::sleep_for(1s);  // a steady load first
  Disconnect();
  const Clock::time_point killed = Clock::now();
  coordinator->Kill(SIGKILL);
  coordinator->Wait(10s);
  int leader = -1;
  testing::WaitUntil([&] {
    for (size_t k = 0; k < standbys.size(); ++k) {
      if (standbys[k]->Stdout().find("listening on") != std::string::npos) leader = static_cast<int>(k);
    }
    return leader >= 0;
  }, 15s, 10ms);
  const Clock::time_point led = Clock::now();
  ASSERT_GE(leader, 0) << "no standby took the lead";
  std::this_thread::sleep_for(3s);  // and on, with the new leader
  stop = true;
  for (auto& t : clients) t.join();
  int before = 0, leaderless = 0, after = 0;
  for (const auto& t : answered) (t < killed ? before : t < led ? leaderless : after)++;
  EXPECT_TRUE(failures.empty()) << failures.size() << " failed, the first: " << failures.front();
  EXPECT_GT(leaderless, 0) << "no request answered while no coordinator led";
  EXPECT_GT(after, 0);
  // The routes are the new leader's engines: the copy, under its id.
  auto client = coordinator::EtcdClient::Create(etcd.Endpoints(), 5);
  ASSERT_TRUE(client.ok());
  std::vector<std::string> routes;
  testing::WaitUntil([&] {
    auto kvs = (*client)->Range("/mc/loop/routes/", coordinator::EtcdClient::PrefixEnd("/mc/loop/routes/"));
    routes.clear();
    if (kvs.ok()) {
      for (const auto& kv : *kvs) routes.push_back(kv.key);
    }
    return routes.size() == 1;
  }, 10s, 100ms);
  EXPECT_EQ(routes, (std::vector<std::string>{"/mc/loop/routes/tiny-llm@node-1"}));
  // Released through the new leader: its route goes, and the standby left stops routing there.
  std::string error;
  ASSERT_TRUE(Connect("127.0.0.1", standby_ports[leader], kToken, &error)) << error;
  ASSERT_EQ(WaitForEnd(ScaleIn("tiny-llm", 1)).state, rpc::OperationState::SUCCEEDED);
  testing::WaitUntil([&] {
    auto kvs = (*client)->Range("/mc/loop/routes/", coordinator::EtcdClient::PrefixEnd("/mc/loop/routes/"));
    return kvs.ok() && kvs->empty();
  }, 10s, 100ms);
  EXPECT_TRUE((*client)->Range("/mc/loop/routes/", coordinator::EtcdClient::PrefixEnd("/mc/loop/routes/"))->empty());
  const auto& other = standbys[1 - leader];
  testing::WaitUntil([&] { return other->Stderr().find("tiny-llm@node-1 is no longer routed") != std::string::npos; },
                     10s, 50ms);
  EXPECT_NE(other->Stderr().find("tiny-llm@node-1 is no longer routed"), std::string::npos);
  std::printf("figure: leader SIGKILLed, clients of the two standbys not retrying: %d requests answered before, %d while "
              "no coordinator led (%.2f s), %d after; %zu failed\n",
              before, leaderless, std::chrono::duration<double>(led - killed).count(), after, failures.size());
  std::fflush(stdout);
}

// Three coordinators, each answering the HTTP API (each routes requests itself), restarted one
// by one (SIGTERM: a leader resigns, and a standby leads at once) while the
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
  for (int p : http_ports) {  // every coordinator answers
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
  {  // a stream from a standby comes as server-sent events, the same as the leader's
    httplib::Client leader("127.0.0.1", http_ports[0]), standby_http("127.0.0.1", http_ports[1]);
    const std::string stream = R"({"model": "tiny-llm", "prompt": [1, 2, 3], "max_tokens": 3, "stream": true})";
    auto direct = leader.Post("/v1/completions", auth, stream, "application/json");
    auto standby = standby_http.Post("/v1/completions", auth, stream, "application/json");
    ASSERT_TRUE(direct && standby);
    EXPECT_EQ(standby->status, 200) << standby->body;
    EXPECT_EQ(standby->get_header_value("Content-Type").rfind("text/event-stream", 0), 0u);
    auto texts = [](const std::string& sse) {  // the events' text, without their ids and times
      std::string all;
      for (size_t at = sse.find("\"text\":\""); at != std::string::npos; at = sse.find("\"text\":\"", at + 1)) {
        all += sse.substr(at, sse.find('"', at + 8) - at) + "|";
      }
      return all;
    };
    EXPECT_FALSE(texts(direct->body).empty()) << direct->body;
    EXPECT_EQ(texts(standby->body), texts(direct->body));
    EXPECT_NE(standby->body.find("data: [DONE]"), std::string::npos) << standby->body;
    // A bad request is refused by the standby as by the leader.
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
