// The coordinator daemon as a real process on loopback: models registered over Thrift and kept
// across a restart (journal), agents joining and heartbeating with a deadline, bad requests and
// calls without the token refused, and a Python client through Debian's python3-thrift.
#include <gtest/gtest.h>
#include <thrift/protocol/TMultiplexedProtocol.h>

#include <thread>

#include <nlohmann/json.hpp>

#include "Coordinator.h"
#include "Membership.h"
#include "modelcast/common/checksum.h"
#include "modelcast/common/config.h"
#include "modelcast/coordinator/daemon.h"
#include "modelcast/rpc/server.h"
#include "support/process.h"
#include "support/store_fixture.h"
#include "support/temp_dir.h"
#include "support/wait.h"

namespace modelcast {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using apache::thrift::protocol::TMultiplexedProtocol;
using testing::ToolPath;

constexpr const char* kToken = "coordinator-test-token-0123456789";

class CoordinatorDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteAll(dir_ / "cluster.yaml",
                      "name: box\n"
                      "defaults: {gpus: 1, gpu_memory: 4GiB, gpu_hbm: 10GB/s, gpu_tflops: 0.2, host_memory: 8GiB, nic: "
                      "16Gbit, pcie: 10GB/s, ssd: 1GB/s, latency: 20us}\n"
                      "nodes:\n"
                      "  - {name: node-1, address: 127.0.0.1, port: 7401}\n"
                      "  - {name: node-2, address: 127.0.0.1, port: 7402}\n"
                      "  - {name: node-3, address: 127.0.0.1, port: 7403}\n"
                      "coordinator:\n"
                      "  address: 127.0.0.1\n"
                      "  port: 0\n"
                      "  state_dir: " +
                          (dir_ / "state").string() +
                          "\n"
                          "  heartbeat_interval: 100ms\n"
                          "  heartbeat_deadline: 400ms\n"
                          "  security: {token: " +
                          kToken + "}\n");
    testing::MakePackage(dir_.path(), dir_ / "pkg", "tiny-llm");
    manifest_json_ = testing::ReadAll(dir_ / "pkg" / "manifest.json");
    security_.token = kToken;
  }
  // Starts the daemon and connects to it.
  void Start() {
    daemon_ = std::make_unique<testing::Child>(
        std::vector<std::string>{ToolPath("modelcast-coordinator"), "--config", (dir_ / "cluster.yaml").string()});
    ASSERT_TRUE(daemon_->WaitForOutput("listening on", 30s)) << daemon_->Wait(1s).err;
    const std::string out = daemon_->Stdout();
    port_ = std::stoi(out.substr(out.rfind(':') + 1));
    auto c = rpc::Connect("127.0.0.1", port_, security_);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    conn_ = std::move(*c);
    coordinator_ = std::make_unique<rpc::CoordinatorClient>(
        std::make_shared<TMultiplexedProtocol>(conn_->protocol, "Coordinator"));
    membership_ =
        std::make_unique<rpc::MembershipClient>(std::make_shared<TMultiplexedProtocol>(conn_->protocol, "Membership"));
  }
  void Stop() {
    coordinator_.reset();
    membership_.reset();
    conn_.reset();
    daemon_->Kill(SIGTERM);
    EXPECT_EQ(daemon_->Wait(30s).exit_code, 0);
    daemon_.reset();
  }
  rpc::RequestHeader Header() { return rpc::MakeHeader(security_, "test"); }
  rpc::ErrorCode::type Refusal(const std::function<void()>& call) {
    try {
      call();
    } catch (const rpc::InvalidRequest& e) {
      last_message_ = e.message;
      return e.code;
    }
    ADD_FAILURE() << "the call was not refused";
    return rpc::ErrorCode::INTERNAL;
  }
  bool Alive(const std::string& node) {
    rpc::ClusterStatus s;
    coordinator_->getClusterStatus(s, Header());
    for (const auto& n : s.nodes) {
      if (n.name == node) return n.alive;
    }
    return false;
  }

  testing::TempDir dir_;
  std::string manifest_json_;
  rpc::SecurityConfig security_;
  std::unique_ptr<testing::Child> daemon_;
  int port_ = 0;
  std::unique_ptr<rpc::RpcConnection> conn_;
  std::unique_ptr<rpc::CoordinatorClient> coordinator_;
  std::unique_ptr<rpc::MembershipClient> membership_;
  std::string last_message_;
};

TEST_F(CoordinatorDaemonTest, RegistersModelsTracksNodesAndKeepsStateAcrossARestart) {
  Start();
  rpc::RegisterModelRequest reg;
  reg.header = Header();
  reg.name = "tiny-llm";
  reg.manifest_json = manifest_json_;
  rpc::ModelInfo info;
  coordinator_->registerModel(info, reg);
  EXPECT_EQ(info.summary.name, "tiny-llm");
  EXPECT_GT(info.summary.num_slices, 0);
  coordinator_->registerModel(info, reg);  // the same registration again is fine
  reg.__set_keep_alive_s(5);
  EXPECT_EQ(Refusal([&] { coordinator_->registerModel(info, reg); }), rpc::ErrorCode::ALREADY_EXISTS);
  reg.name = "other";
  EXPECT_EQ(Refusal([&] { coordinator_->registerModel(info, reg); }), rpc::ErrorCode::INVALID_ARGUMENT);
  EXPECT_EQ(last_message_, "registerModel: the manifest is of model 'tiny-llm', not 'other'");
  reg.manifest_json = "{\"format\": \"modelcast-package\"";
  EXPECT_EQ(Refusal([&] { coordinator_->registerModel(info, reg); }), rpc::ErrorCode::INVALID_ARGUMENT);
  // A model with a tokenizer: the request carries exactly the files its manifest lists, as listed.
  {
    auto m = nlohmann::json::parse(manifest_json_);
    m["name"] = "with-tokenizer";
    const std::string tok = R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})";
    m["text_files"] = {{{"name", "tokenizer.json"}, {"bytes", tok.size()}, {"xxh3", ChecksumToHex(Xxh3(tok.data(), tok.size()))}}};
    rpc::RegisterModelRequest t;
    t.header = Header();
    t.name = "with-tokenizer";
    t.manifest_json = m.dump();
    EXPECT_EQ(Refusal([&] { coordinator_->registerModel(info, t); }), rpc::ErrorCode::INVALID_ARGUMENT);
    EXPECT_EQ(last_message_,
              "registerModel: model 'with-tokenizer''s manifest lists tokenizer.json, which the request does not carry");
    t.__set_text_files({{"tokenizer.json", tok + " "}});
    EXPECT_EQ(Refusal([&] { coordinator_->registerModel(info, t); }), rpc::ErrorCode::INVALID_ARGUMENT);
    EXPECT_EQ(last_message_,
              "registerModel: tokenizer.json of model 'with-tokenizer' differs from its manifest's size and checksum");
    t.__set_text_files({{"tokenizer.json", tok}, {"generation_config.json", "{}"}});
    EXPECT_EQ(Refusal([&] { coordinator_->registerModel(info, t); }), rpc::ErrorCode::INVALID_ARGUMENT);
    EXPECT_EQ(last_message_,
              "registerModel: generation_config.json is not among the text files model 'with-tokenizer''s manifest lists");
    t.__set_text_files({{"tokenizer.json", tok}});
    coordinator_->registerModel(info, t);
    EXPECT_EQ(testing::ReadAll(dir_ / "state" / "models" / "with-tokenizer" / "tokenizer.json"), tok);
  }

  // Scale requests are checked (the operations themselves are not built yet).
  rpc::ScaleOutRequest so;
  so.header = Header();
  so.model = "nope";
  so.replicas = 1;
  rpc::ScaleOutResponse sor;
  EXPECT_EQ(Refusal([&] { coordinator_->scaleOut(sor, so); }), rpc::ErrorCode::NOT_FOUND);
  so.model = "tiny-llm";
  so.replicas = 0;
  EXPECT_EQ(Refusal([&] { coordinator_->scaleOut(sor, so); }), rpc::ErrorCode::INVALID_ARGUMENT);
  so.replicas = 4;
  EXPECT_EQ(Refusal([&] { coordinator_->scaleOut(sor, so); }), rpc::ErrorCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(last_message_, "scaleOut: 4 replicas, but cluster 'box' has 3 nodes");
  std::vector<rpc::Instance> instances;
  EXPECT_EQ(Refusal([&] { coordinator_->listInstances(instances, Header(), "nope"); }), rpc::ErrorCode::NOT_FOUND);
  rpc::OperationStatus op;
  EXPECT_EQ(Refusal([&] { coordinator_->getOperation(op, Header(), "op-1"); }), rpc::ErrorCode::NOT_FOUND);

  // Membership: a node of the config joins and stays alive while it heartbeats.
  rpc::JoinRequest join;
  join.header = Header();
  join.node = "node-1";
  join.rpc_address = "127.0.0.1:7401";
  join.fabric_address = "127.0.0.1:7501";
  rpc::JoinResponse joined;
  membership_->join(joined, join);
  EXPECT_EQ(joined.cluster, "box");
  EXPECT_EQ(joined.heartbeat_deadline_ms, 400);
  const int64_t epoch = joined.epoch;
  EXPECT_TRUE(Alive("node-1"));
  EXPECT_FALSE(Alive("node-2"));
  join.node = "node-9";
  EXPECT_EQ(Refusal([&] { membership_->join(joined, join); }), rpc::ErrorCode::NOT_FOUND);
  rpc::HeartbeatRequest hb;
  hb.header = Header();
  hb.node = "node-1";
  hb.epoch = epoch;
  rpc::HeartbeatResponse hbr;
  const auto until = std::chrono::steady_clock::now() + 1s;
  while (std::chrono::steady_clock::now() < until) {  // beats for longer than the deadline
    membership_->heartbeat(hbr, hb);
    EXPECT_FALSE(hbr.rejoin);
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(Alive("node-1"));
  // Silent past the deadline: no longer alive.
  testing::WaitUntil([&] { return !Alive("node-1"); }, 5s, 50ms);
  EXPECT_FALSE(Alive("node-1"));

  // Without the token: refused, nothing changed.
  rpc::RequestHeader anonymous;
  std::vector<rpc::ModelInfo> unseen;
  EXPECT_THROW(coordinator_->listModels(unseen, anonymous), rpc::NotAuthorized);

  // A restart keeps the models; agents of the old epoch are told to rejoin.
  Stop();
  Start();
  std::vector<rpc::ModelInfo> models;
  coordinator_->listModels(models, Header());
  ASSERT_EQ(models.size(), 2u);
  EXPECT_EQ(models[0].summary.name, "tiny-llm");
  EXPECT_EQ(models[1].summary.name, "with-tokenizer");
  membership_->heartbeat(hbr, hb);
  EXPECT_TRUE(hbr.rejoin);

  // A Python autoscaler's view, through Debian's python3-thrift.
  setenv("PYTHONPATH", MODELCAST_TEST_GEN_PY, 1);
  auto py = testing::RunProcess({"/usr/bin/python3", testing::SourcePath("tests/support/coordinator_client.py"),
                                 "127.0.0.1", std::to_string(port_), kToken},
                                60s);
  unsetenv("PYTHONPATH");
  if (py.exit_code != 0 && py.err.find("No module named 'thrift'") != std::string::npos) {
    GTEST_SKIP() << "Debian's python3-thrift is not installed";
  }
  ASSERT_EQ(py.exit_code, 0) << py.err;
  EXPECT_EQ(py.out,
            "{\"models\": [\"tiny-llm\", \"with-tokenizer\"], \"cluster\": \"box\", \"nodes\": [\"node-1\", \"node-2\", \"node-3\"], "
            "\"refused\": {\"code\": \"NOT_FOUND\", \"message\": \"scaleOut: unknown model 'nope'\"}, "
            "\"denied\": \"listModels: the call carries no token\"}\n");
  Stop();
}

TEST_F(CoordinatorDaemonTest, ConfigErrorsNameTheKey) {
  testing::WriteAll(dir_ / "bad.yaml",
                    "name: box\ndefaults: {gpus: 1, gpu_memory: 4GiB, gpu_hbm: 10GB/s, gpu_tflops: 0.2, host_memory: "
                    "8GiB, nic: 16Gbit, pcie: 10GB/s, ssd: 1GB/s, latency: 20us}\nnodes: [{name: n1}]\ncoordinator:\n  "
                    "state_dir: /tmp/x\n  security: {}\n");
  auto r = testing::RunProcess({ToolPath("modelcast-coordinator"), "--config", (dir_ / "bad.yaml").string()}, 30s);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("bad.yaml:6: coordinator.security: configure tls or a token (token_file), or say insecure: "
                       "true for plaintext"),
            std::string::npos)
      << r.err;
}

// coordinator.serving: the benchmark emulation, the HTTP endpoint's threads and the lookahead,
// with errors that name the key.
TEST(ServingConfigTest, EmulationAndHttpThreadsParseAndBadValuesAreNamed) {
  auto parse = [](const std::string& text) {
    auto node = ConfigNode::ParseString(text, "c.yaml");
    EXPECT_TRUE(node.ok()) << node.status().ToString();
    return coordinator::ServingConfig::FromConfig(*node);
  };
  auto ok = parse("http: {port: 0, threads: 32}\nemulate: {step: 150ms, token: 1ms}\n");
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->http_threads, 32);
  EXPECT_DOUBLE_EQ(ok->emulated_step, 0.15);
  EXPECT_DOUBLE_EQ(ok->emulated_token, 0.001);
  auto plain = parse("max_batch: 4\n");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->http_threads, 256);
  EXPECT_EQ(plain->emulated_step, 0);
  EXPECT_EQ(parse("http: {threads: 0}\n").status().message(), "c.yaml:1: http.threads: must be between 1 and 65536");
  EXPECT_NE(parse("emulate: {step: 1ms, tokens: 1ms}\n").status().message().find("tokens"), std::string::npos);
  EXPECT_EQ(parse("emulate: {step: 20s}\n").status().message(), "c.yaml:1: emulate.step: must be 0 to 10s");
  // lookahead: pipelines prepared that far ahead of their blocks (default 1 s; 0 turns it off).
  EXPECT_DOUBLE_EQ(plain->lookahead, 1.0);
  auto off = parse("lookahead: 0s\n");
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(off->lookahead, 0);
  EXPECT_DOUBLE_EQ(parse("lookahead: 250ms\n")->lookahead, 0.25);
  EXPECT_EQ(parse("lookahead: 90s\n").status().message(), "c.yaml:1: lookahead: must be 0 to 60s");
}

}  // namespace
}  // namespace modelcast
