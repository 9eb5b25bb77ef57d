// A real scale-out on loopback: a coordinator and three agents as processes, the model on one
// agent's SSD; scaleOut(model, 2) plans, dispatches, moves every slice over UCX into the
// targets' stores, and the operation reports success with every target's slices counted.
#include <gtest/gtest.h>
#include <httplib.h>
#include <thrift/protocol/TMultiplexedProtocol.h>

#include <thread>

#include "Coordinator.h"
#include "modelcast/rpc/server.h"
#include "support/process.h"
#include "support/store_fixture.h"
#include "support/temp_dir.h"

namespace modelcast {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::ToolPath;

constexpr const char* kToken = "scale-out-test-token-0123456789";
constexpr int kNodes = 3;

uint32_t Count(const std::vector<rpc::SliceRun>& runs) {
  uint32_t n = 0;
  for (const auto& r : runs) n += static_cast<uint32_t>(r.count);
  return n;
}

// A coordinator and kNodes agents as processes on loopback, the model on node-0's SSD.
class ScaleOutTest : public ::testing::Test {
 protected:
  void StartCluster(const std::string& fault = "") {
    const std::string defaults =
        "defaults: {gpus: 1, gpu_memory: 4GiB, gpu_hbm: 10GB/s, gpu_tflops: 0.2, host_memory: 8GiB, nic: 16Gbit, "
        "pcie: 10GB/s, ssd: 1GB/s, latency: 20us}\n";
    std::string cluster = "name: loop\n" + defaults + "nodes:\n";
    for (int i = 0; i < kNodes; ++i) cluster += "  - {name: node-" + std::to_string(i) + "}\n";
    cluster += "coordinator:\n  address: 127.0.0.1\n  port: 0\n  state_dir: " + (dir / "coord").string() +
               "\n  heartbeat_interval: 100ms\n  heartbeat_deadline: 1s\n  security: {token: " + kToken +
               "}\n  metrics: {address: 127.0.0.1, port: 0}\n";
    testing::WriteAll(dir / "cluster.yaml", cluster);
    coordinator = std::make_unique<testing::Child>(
        std::vector<std::string>{ToolPath("modelcast-coordinator"), "--config", (dir / "cluster.yaml").string()});
    ASSERT_TRUE(coordinator->WaitForOutput("listening on", 30s)) << coordinator->Wait(1s).err;
    const std::string out = coordinator->Stdout();
    port = std::stoi(out.substr(out.rfind(':') + 1));

    // The model, on node-0's SSD only (imported the way received slices are written).
    testing::MakePackage(dir.path(), dir / "pkg", "tiny-llm", 0, 4, 32 << 10);
    auto import = testing::RunProcess(
        {ToolPath("modelcast"), "store", "import", (dir / "pkg").string(), "--ssd-dir", (dir / "node-0").string()},
        60s);
    ASSERT_EQ(import.exit_code, 0) << import.err;
    for (int i = 0; i < kNodes; ++i) {
      const std::string n = "node-" + std::to_string(i);
      testing::WriteAll(dir / (n + ".yaml"),
                        "node: " + n + "\naddress: 127.0.0.1\nport: 0\n" + "coordinator: {address: 127.0.0.1, port: " +
                            std::to_string(port) + "}\nfabric: {listen: '127.0.0.1:0', transport: ucx" +
                            (fault.empty() ? "" : ", fault: '" + fault + "'") + "}\n" +
                            "store: {ssd_dir: " + (dir / n).string() + ", ssd_capacity: 1GiB, host_capacity: 64MiB}\n" +
                            "security: {token: " + kToken + "}\n" + "metrics: {address: 127.0.0.1, port: 0}\n");
      agents.push_back(std::make_unique<testing::Child>(
          std::vector<std::string>{ToolPath("modelcast-agent"), "--config", (dir / (n + ".yaml")).string()}));
      ASSERT_TRUE(agents.back()->WaitForOutput("listening on", 30s)) << agents.back()->Wait(1s).err;
    }
    security.token = kToken;
    auto c = rpc::Connect("127.0.0.1", port, security);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    conn = std::move(*c);
    client = std::make_unique<rpc::CoordinatorClient>(
        std::make_shared<apache::thrift::protocol::TMultiplexedProtocol>(conn->protocol, "Coordinator"));
    header = rpc::MakeHeader(security, "test");
    rpc::RegisterModelRequest reg;
    reg.header = header;
    reg.name = "tiny-llm";
    reg.manifest_json = testing::ReadAll(dir / "pkg" / "manifest.json");
    rpc::ModelInfo info;
    client->registerModel(info, reg);
    nslices = static_cast<uint32_t>(info.summary.num_slices);
    // Wait (with a deadline) until every agent has joined and node-0's copy is known.
    auto ready = [&] {
      rpc::ClusterStatus st;
      client->getClusterStatus(st, header);
      int alive = 0;
      for (const auto& n : st.nodes) alive += n.alive;
      std::vector<rpc::ModelInfo> models;
      client->listModels(models, header);
      return alive == kNodes && !models.empty() && models[0].ssd_holders == std::vector<std::string>{"node-0"};
    };
    const auto join_by = std::chrono::steady_clock::now() + 30s;
    while (!ready() && std::chrono::steady_clock::now() < join_by) std::this_thread::sleep_for(50ms);
    ASSERT_TRUE(ready());
  }
  // GET /metrics from the process whose stdout announced "metrics on ADDRESS:PORT".
  static std::string Metrics(testing::Child& process) {
    const std::string out = process.Stdout();
    const auto at = out.find("metrics on ");
    if (at == std::string::npos) return "";
    const auto line = out.substr(at, out.find('\n', at) - at);
    httplib::Client http("127.0.0.1", std::stoi(line.substr(line.rfind(':') + 1)));
    auto res = http.Get("/metrics");
    return res && res->status == 200 ? res->body : "";
  }
  void TearDown() override {
    client.reset();
    conn.reset();
    for (auto& a : agents) {
      if (a->Running()) a->Kill(SIGTERM);
      a->Wait(30s);
    }
    if (coordinator) {
      coordinator->Kill(SIGTERM);
      EXPECT_EQ(coordinator->Wait(30s).exit_code, 0);
    }
  }
  rpc::OperationStatus WaitForEnd(const std::string& id) {
    rpc::OperationStatus op;
    const auto done_by = std::chrono::steady_clock::now() + 60s;
    do {
      std::this_thread::sleep_for(50ms);
      client->getOperation(op, header, id);
    } while (op.state == rpc::OperationState::RUNNING && std::chrono::steady_clock::now() < done_by);
    return op;
  }

  testing::TempDir dir;
  std::unique_ptr<testing::Child> coordinator;
  std::vector<std::unique_ptr<testing::Child>> agents;
  int port = 0;
  rpc::SecurityConfig security;
  std::unique_ptr<rpc::RpcConnection> conn;
  std::unique_ptr<rpc::CoordinatorClient> client;
  rpc::RequestHeader header;
  uint32_t nslices = 0;
};

TEST_F(ScaleOutTest, OneToThreeOnLoopback) {
  StartCluster();
  rpc::ScaleOutRequest so;
  so.header = header;
  so.model = "tiny-llm";
  so.replicas = 2;
  rpc::ScaleOutResponse resp;
  client->scaleOut(resp, so);
  EXPECT_EQ(resp.sources, std::vector<std::string>{"node-0"});
  EXPECT_EQ(resp.targets, (std::vector<std::string>{"node-1", "node-2"}));
  const rpc::OperationStatus op = WaitForEnd(resp.operation_id);
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
  for (const auto& np : op.nodes) {
    if (np.role != "target") continue;
    EXPECT_EQ(np.slices_received, static_cast<int32_t>(nslices)) << np.node;
    EXPECT_EQ(np.state, "complete") << np.node;
    EXPECT_GT(np.bytes_received, 0) << np.node;
  }
  // Every target holds the whole model in host memory, and writes it behind to its SSD.
  const auto synced_by = std::chrono::steady_clock::now() + 30s;
  for (const std::string n : {"node-1", "node-2"}) {
    while (!model::Package::Open(dir / n / "tiny-llm").ok() && std::chrono::steady_clock::now() < synced_by) {
      std::this_thread::sleep_for(50ms);
    }
    auto pkg = model::Package::Open(dir / n / "tiny-llm");
    ASSERT_TRUE(pkg.ok()) << n << ": " << pkg.status().ToString();
    auto report = pkg->Verify();
    ASSERT_TRUE(report.ok());
    EXPECT_TRUE(report->ok()) << n;
  }
  // The targets' next heartbeats carry their new holdings to the coordinator.
  auto targets_holding = [&] {
    rpc::ClusterStatus status;
    client->getClusterStatus(status, header);
    int holding = 0;
    for (const auto& node : status.nodes) {
      if (node.name == "node-0") continue;
      for (const auto& h : node.inventory.models) holding += h.model == "tiny-llm" && Count(h.host) == nslices;
    }
    return holding;
  };
  const auto reported_by = std::chrono::steady_clock::now() + 10s;
  while (targets_holding() < 2 && std::chrono::steady_clock::now() < reported_by) std::this_thread::sleep_for(20ms);
  EXPECT_EQ(targets_holding(), 2) << "the targets do not report the model in host memory";
  // What the daemons' Prometheus endpoints say about it.
  const std::string coord_metrics = Metrics(*coordinator);
  EXPECT_NE(coord_metrics.find("modelcast_operations{state=\"SUCCEEDED\"} 1\n"), std::string::npos) << coord_metrics;
  EXPECT_NE(coord_metrics.find("modelcast_slices_moved_total " + std::to_string(2 * nslices) + "\n"), std::string::npos)
      << coord_metrics;
  EXPECT_NE(coord_metrics.find("modelcast_nodes_alive 3\n"), std::string::npos) << coord_metrics;
  const std::string agent_metrics = Metrics(*agents[1]);
  EXPECT_NE(agent_metrics.find("modelcast_fabric_slices_total{direction=\"in\"} " + std::to_string(nslices) + "\n"),
            std::string::npos)
      << agent_metrics;
  EXPECT_NE(agent_metrics.find("# TYPE modelcast_tier_used_bytes gauge\n"), std::string::npos) << agent_metrics;

  // The example autoscaler (Python) sees 3 replicas, wants 5 for 9 req/s, and is told that no
  // node is left to take one.
  testing::WriteAll(dir / "token", kToken);
  testing::WriteAll(dir / "rate", "9\n");
  setenv("PYTHONPATH", MODELCAST_TEST_GEN_PY, 1);
  auto py =
      testing::RunProcess({"/usr/bin/python3", testing::SourcePath("examples/autoscaler.py"), "--coordinator",
                           "127.0.0.1:" + std::to_string(port), "--token-file", (dir / "token").string(), "--model",
                           "tiny-llm", "--rate-file", (dir / "rate").string(), "--window", "0.1", "--once"},
                          60s);
  unsetenv("PYTHONPATH");
  if (py.err.find("No module named 'thrift'") == std::string::npos) {
    EXPECT_EQ(py.exit_code, 0) << py.err;
    EXPECT_NE(py.out.find("rate=   9.00 req/s  replicas 3 -> 5"), std::string::npos) << py.out;
    EXPECT_NE(py.out.find("refused: RESOURCE_EXHAUSTED: scaleOut: 2 new replicas of model 'tiny-llm' asked, but only "
                          "0 live node(s) can take one"),
              std::string::npos)
        << py.out;
  }
}

// A target killed mid-operation: the operation ends failed and names it, within the heartbeat
// deadline; the coordinator and the other agents stay up. (Replanning the rest is not built.)
TEST_F(ScaleOutTest, AKilledTargetIsReported) {
  StartCluster("delay=30ms");  // every payload transfer waits 30 ms: the scale-out lasts seconds
  rpc::ScaleOutRequest so;
  so.header = header;
  so.model = "tiny-llm";
  so.replicas = 2;
  rpc::ScaleOutResponse resp;
  client->scaleOut(resp, so);
  rpc::OperationStatus op;
  const auto started_by = std::chrono::steady_clock::now() + 30s;
  auto receiving = [&] {
    client->getOperation(op, header, resp.operation_id);
    for (const auto& n : op.nodes) {
      if (n.node == "node-1" && n.slices_received > 0) return true;
    }
    return false;
  };
  while (!receiving() && op.state == rpc::OperationState::RUNNING && std::chrono::steady_clock::now() < started_by) {
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_EQ(op.state, rpc::OperationState::RUNNING) << "the scale-out ended before a target could be killed";
  agents[2]->Kill(SIGKILL);
  op = WaitForEnd(resp.operation_id);
  EXPECT_EQ(op.state, rpc::OperationState::FAILED);
  ASSERT_TRUE(op.__isset.error);
  EXPECT_NE(op.error.find("node-2"), std::string::npos) << op.error;
  // Its heartbeats stop: it is taken as dead once the deadline passes; the others stay up.
  rpc::ClusterStatus status;
  auto node2_alive = [&] {
    client->getClusterStatus(status, header);
    for (const auto& n : status.nodes) {
      if (n.name == "node-2") return n.alive;
    }
    return false;
  };
  const auto dead_by = std::chrono::steady_clock::now() + 10s;
  while (node2_alive() && std::chrono::steady_clock::now() < dead_by) std::this_thread::sleep_for(50ms);
  for (const auto& n : status.nodes) EXPECT_EQ(n.alive, n.name != "node-2") << n.name;
}

}  // namespace
}  // namespace modelcast
