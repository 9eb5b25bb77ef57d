// Real scale-outs on loopback: a coordinator and agents as processes, the model on one agent's
// SSD; scaleOut plans, dispatches, moves every slice over UCX into the targets' stores, and
// the operation reports success with every target's slices counted. Then what goes wrong: bad
// requests, an agent killed mid-operation (with and without a spare), the coordinator killed
// mid-operation, two models at once; and the Python autoscaler scaling out and in.
#include <gtest/gtest.h>
#include <httplib.h>
#include <thrift/protocol/TMultiplexedProtocol.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <iostream>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>

#include "Agent.h"
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

uint32_t Count(const std::vector<rpc::SliceRun>& runs) {
  uint32_t n = 0;
  for (const auto& r : runs) n += static_cast<uint32_t>(r.count);
  return n;
}

// A port nobody listens on now (the coordinator keeps it across its restart).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// The port a daemon announced on its stdout ("<what> ADDRESS:PORT").
int AnnouncedPort(testing::Child& process, const std::string& what) {
  const std::string out = process.Stdout();
  const auto at = out.find(what);
  if (at == std::string::npos) return 0;
  const auto line = out.substr(at, out.find('\n', at) - at);
  return std::stoi(line.substr(line.rfind(':') + 1));
}

struct ClusterOptions {
  int nodes = 3;
  std::string fault;                               // the agents' fabric fault spec
  std::vector<std::string> models = {"tiny-llm"};  // all on node-0's SSD
};

// A coordinator and agents as processes on loopback, the models on node-0's SSD.
class ScaleOutTest : public ::testing::Test {
 protected:
  void StartCluster(const ClusterOptions& o = {}) {
    options = o;
    port = FreePort();
    const std::string defaults =
        "defaults: {gpus: 1, gpu_memory: 4GiB, gpu_hbm: 10GB/s, gpu_tflops: 0.2, host_memory: 8GiB, nic: 16Gbit, "
        "pcie: 10GB/s, ssd: 1GB/s, latency: 20us}\n";
    std::string cluster = "name: loop\n" + defaults + "nodes:\n";
    for (int i = 0; i < o.nodes; ++i) cluster += "  - {name: node-" + std::to_string(i) + "}\n";
    cluster += "coordinator:\n  address: 127.0.0.1\n  port: " + std::to_string(port) +
               "\n  state_dir: " + (dir / "coord").string() +
               "\n  heartbeat_interval: 100ms\n  heartbeat_deadline: 1s\n  security: {token: " + kToken +
               "}\n  metrics: {address: 127.0.0.1, port: 0}\n";
    testing::WriteAll(dir / "cluster.yaml", cluster);
    ASSERT_NO_FATAL_FAILURE(StartCoordinator());

    // The models, on node-0's SSD only (imported the way received slices are written).
    for (size_t m = 0; m < o.models.size(); ++m) {
      const auto pkg = dir / ("pkg-" + o.models[m]);
      testing::MakePackage(dir.path(), pkg, o.models[m], m, 4, 32 << 10);
      auto import = testing::RunProcess(
          {ToolPath("modelcast"), "store", "import", pkg.string(), "--ssd-dir", (dir / "node-0").string()}, 60s);
      ASSERT_EQ(import.exit_code, 0) << import.err;
    }
    for (int i = 0; i < o.nodes; ++i) {
      const std::string n = "node-" + std::to_string(i);
      testing::WriteAll(dir / (n + ".yaml"),
                        "node: " + n + "\naddress: 127.0.0.1\nport: 0\n" +
                            "coordinator: {address: 127.0.0.1, port: " + std::to_string(port) +
                            "}\nfabric: {listen: '127.0.0.1:0', transport: ucx" +
                            (o.fault.empty() ? "" : ", fault: '" + o.fault + "'") + "}\n" +
                            "store: {ssd_dir: " + (dir / n).string() +
                            ", ssd_capacity: 1GiB, host_capacity: 64MiB}\n" + "security: {token: " + kToken +
                            "}\n" + "metrics: {address: 127.0.0.1, port: 0}\n");
      agents.push_back(std::make_unique<testing::Child>(
          std::vector<std::string>{ToolPath("modelcast-agent"), "--config", (dir / (n + ".yaml")).string()}));
      ASSERT_TRUE(agents.back()->WaitForOutput("listening on", 30s)) << agents.back()->Wait(1s).err;
    }
    for (const auto& m : o.models) {
      rpc::RegisterModelRequest reg;
      reg.header = header;
      reg.name = m;
      reg.manifest_json = testing::ReadAll(dir / ("pkg-" + m) / "manifest.json");
      rpc::ModelInfo info;
      client->registerModel(info, reg);
      nslices = static_cast<uint32_t>(info.summary.num_slices);
    }
    // Wait (with a deadline) until every agent has joined and node-0's copies are known.
    auto ready = [&] {
      rpc::ClusterStatus st;
      client->getClusterStatus(st, header);
      int alive = 0;
      for (const auto& n : st.nodes) alive += n.alive;
      std::vector<rpc::ModelInfo> models;
      client->listModels(models, header);
      size_t known = 0;
      for (const auto& m : models) known += m.ssd_holders == std::vector<std::string>{"node-0"};
      return alive == o.nodes && known == o.models.size();
    };
    const auto join_by = std::chrono::steady_clock::now() + 30s;
    while (!ready() && std::chrono::steady_clock::now() < join_by) std::this_thread::sleep_for(50ms);
    ASSERT_TRUE(ready());
  }
  // Starts (or restarts) the coordinator on `port` and connects the test's client to it.
  void StartCoordinator() {
    client.reset();
    conn.reset();
    coordinator = std::make_unique<testing::Child>(
        std::vector<std::string>{ToolPath("modelcast-coordinator"), "--config", (dir / "cluster.yaml").string()});
    ASSERT_TRUE(coordinator->WaitForOutput("listening on", 30s)) << coordinator->Wait(1s).err;
    security.token = kToken;
    auto c = rpc::Connect("127.0.0.1", port, security);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    conn = std::move(*c);
    client = std::make_unique<rpc::CoordinatorClient>(
        std::make_shared<apache::thrift::protocol::TMultiplexedProtocol>(conn->protocol, "Coordinator"));
    header = rpc::MakeHeader(security, "test");
  }
  // GET /metrics from the process whose stdout announced "metrics on ADDRESS:PORT".
  static std::string Metrics(testing::Child& process) {
    const int p = AnnouncedPort(process, "metrics on ");
    if (p == 0) return "";
    httplib::Client http("127.0.0.1", p);
    auto res = http.Get("/metrics");
    return res && res->status == 200 ? res->body : "";
  }
  // What agent i says it is running.
  std::vector<std::string> Running(int i) {
    auto c = rpc::Connect("127.0.0.1", AnnouncedPort(*agents[i], "listening on "), security);
    if (!c.ok()) return {"unreachable: " + c.status().message()};
    rpc::AgentClient agent((*c)->protocol);
    rpc::AgentStatus st;
    agent.getStatus(st, header);
    return st.running_operations;
  }
  void TearDown() override {
    client.reset();
    conn.reset();
    // MODELCAST_TEST_LOGS=1 prints the daemons' logs.
    const bool logs = getenv("MODELCAST_TEST_LOGS") != nullptr;
    for (size_t i = 0; i < agents.size(); ++i) {
      if (agents[i]->Running()) agents[i]->Kill(SIGTERM);
      auto r = agents[i]->Wait(30s);
      if (logs) std::cerr << "---- node-" << i << "\n" << r.err;
    }
    if (coordinator) {
      coordinator->Kill(SIGTERM);
      auto r = coordinator->Wait(30s);
      EXPECT_EQ(r.exit_code, 0);
      if (logs) std::cerr << "---- coordinator\n" << r.err;
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
  std::string ScaleOut(const std::string& model, int replicas) {
    rpc::ScaleOutRequest so;
    so.header = header;
    so.model = model;
    so.replicas = replicas;
    rpc::ScaleOutResponse resp;
    client->scaleOut(resp, so);
    return resp.operation_id;
  }
  // Waits until `node` has received a slice of operation `id` (the operation still running).
  bool WaitReceiving(const std::string& id, const std::string& node) {
    rpc::OperationStatus op;
    const auto by = std::chrono::steady_clock::now() + 30s;
    while (std::chrono::steady_clock::now() < by) {
      client->getOperation(op, header, id);
      if (op.state != rpc::OperationState::RUNNING) return false;
      for (const auto& n : op.nodes) {
        if (n.node == node && n.slices_received > 0) return true;
      }
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }
  // The node's copy of `model`, written behind to its SSD, checked slice by slice.
  void ExpectVerifiedCopy(const std::string& node, const std::string& model = "tiny-llm") {
    const auto synced_by = std::chrono::steady_clock::now() + 30s;
    while (!model::Package::Open(dir / node / model).ok() && std::chrono::steady_clock::now() < synced_by) {
      std::this_thread::sleep_for(50ms);
    }
    auto pkg = model::Package::Open(dir / node / model);
    ASSERT_TRUE(pkg.ok()) << node << ": " << pkg.status().ToString();
    auto report = pkg->Verify();
    ASSERT_TRUE(report.ok());
    EXPECT_TRUE(report->ok()) << node;
  }
  std::map<std::string, rpc::NodeProgress> ByNode(const rpc::OperationStatus& op) {
    std::map<std::string, rpc::NodeProgress> m;
    for (const auto& n : op.nodes) m[n.node] = n;
    return m;
  }
  std::vector<std::string> InstanceNodes(const std::string& model = "tiny-llm") {
    std::vector<rpc::Instance> list;
    client->listInstances(list, header, model);
    std::vector<std::string> nodes;
    for (const auto& i : list) nodes.push_back(i.node + ":" + rpc::to_string(i.state));
    return nodes;
  }

  ClusterOptions options;
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
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 4}));
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
  EXPECT_EQ(op.replans, 0);
  for (const auto& np : op.nodes) {
    if (np.role != "target") continue;
    EXPECT_EQ(np.slices_received, static_cast<int32_t>(nslices)) << np.node;
    EXPECT_EQ(np.state, "complete") << np.node;
    EXPECT_GT(np.bytes_received, 0) << np.node;
  }
  EXPECT_EQ(InstanceNodes(), (std::vector<std::string>{"node-1:LOCAL", "node-2:LOCAL"}));
  // Every target holds the whole model in host memory, and writes it behind to its SSD.
  for (const std::string n : {"node-1", "node-2"}) ExpectVerifiedCopy(n);
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
  EXPECT_NE(coord_metrics.find("modelcast_nodes_alive 4\n"), std::string::npos) << coord_metrics;
  const std::string agent_metrics = Metrics(*agents[1]);
  EXPECT_NE(agent_metrics.find("modelcast_fabric_slices_total{direction=\"in\"} " + std::to_string(nslices) + "\n"),
            std::string::npos)
      << agent_metrics;
  EXPECT_NE(agent_metrics.find("# TYPE modelcast_tier_used_bytes gauge\n"), std::string::npos) << agent_metrics;

  // The example autoscaler (Python): 6 req/s at 2 per replica wants 3 replicas; it sees 2 and
  // scales out by one (to node-3, the only node left), following the operation to its end.
  // Then 2 req/s wants 1: it scales in by two.
  testing::WriteAll(dir / "token", kToken);
  auto autoscaler = [&](const std::string& rate) {
    testing::WriteAll(dir / "rate", rate + "\n");
    setenv("PYTHONPATH", MODELCAST_TEST_GEN_PY, 1);
    auto py = testing::RunProcess({"/usr/bin/python3", testing::SourcePath("examples/autoscaler.py"), "--coordinator",
                                   "127.0.0.1:" + std::to_string(port), "--token-file", (dir / "token").string(),
                                   "--model", "tiny-llm", "--rate-file", (dir / "rate").string(), "--window", "0.1",
                                   "--once"},
                                  60s);
    unsetenv("PYTHONPATH");
    return py;
  };
  auto py = autoscaler("6");
  if (py.err.find("No module named 'thrift'") != std::string::npos) GTEST_SKIP() << "python3-thrift is missing";
  EXPECT_EQ(py.exit_code, 0) << py.err;
  EXPECT_NE(py.out.find("rate=   6.00 req/s  replicas 2 -> 3"), std::string::npos) << py.out;
  EXPECT_NE(py.out.find("(scale-out to node-3): SUCCEEDED"), std::string::npos) << py.out;
  EXPECT_EQ(InstanceNodes(), (std::vector<std::string>{"node-1:LOCAL", "node-2:LOCAL", "node-3:LOCAL"}));
  ExpectVerifiedCopy("node-3");
  py = autoscaler("2");
  EXPECT_EQ(py.exit_code, 0) << py.err;
  EXPECT_NE(py.out.find("replicas 3 -> 1"), std::string::npos) << py.out;
  // The newest go first: node-3, then one of node-1 and node-2 (loaded at the same moment).
  EXPECT_NE(py.out.find("(scale-in to node-"), std::string::npos) << py.out;
  EXPECT_NE(py.out.find("): SUCCEEDED"), std::string::npos) << py.out;
  const auto left = InstanceNodes();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_NE(left[0], "node-3:LOCAL");
  std::vector<rpc::ModelInfo> models;
  client->listModels(models, header);
  ASSERT_EQ(models.size(), 1u);
  EXPECT_EQ(models[0].instances, 1);
  EXPECT_EQ(models[0].loading, 0);
}

// Bad scale requests are refused with what is wrong, and change nothing.
TEST_F(ScaleOutTest, BadScaleRequestsAreRefused) {
  // Payload transfers wait 30 ms: the scale-out at the end still runs when a second is asked.
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 2, .fault = "delay=30ms"}));
  auto refused = [&](const std::function<void()>& call) -> std::string {
    try {
      call();
    } catch (const rpc::InvalidRequest& e) {
      return rpc::to_string(e.code) + ": " + e.message;
    }
    return "accepted";
  };
  EXPECT_EQ(refused([&] { ScaleOut("nope", 1); }), "NOT_FOUND: scaleOut: unknown model 'nope'");
  EXPECT_EQ(refused([&] { ScaleOut("tiny-llm", 0); }), "INVALID_ARGUMENT: scaleOut: replicas must be at least 1, got 0");
  EXPECT_EQ(refused([&] { ScaleOut("tiny-llm", 2); }),
            "RESOURCE_EXHAUSTED: scaleOut: 2 new replicas of model 'tiny-llm' asked, but only 1 live node(s) can take "
            "one (nodes holding it already are sources)");
  rpc::ScaleInRequest si;
  si.header = header;
  si.model = "tiny-llm";
  si.replicas = 1;
  std::string id;
  EXPECT_EQ(refused([&] { client->scaleIn(id, si); }),
            "RESOURCE_EXHAUSTED: scaleIn: 1 replicas of model 'tiny-llm' to release, but it has 0 instance(s)");
  si.__set_nodes({"node-1"});
  EXPECT_EQ(refused([&] { client->scaleIn(id, si); }),
            "INVALID_ARGUMENT: scaleIn: node 'node-1' has no serving instance of model 'tiny-llm'");
  std::vector<rpc::Instance> list;
  EXPECT_EQ(refused([&] { client->listInstances(list, header, "nope"); }),
            "NOT_FOUND: listInstances: unknown model 'nope'");
  // A second scale-out of a model while one runs is refused, naming the running one.
  const std::string first = ScaleOut("tiny-llm", 1);
  EXPECT_EQ(refused([&] { ScaleOut("tiny-llm", 1); }),
            "FAILED_PRECONDITION: scaleOut: model 'tiny-llm' already has operation " + first + " running");
  EXPECT_EQ(WaitForEnd(first).state, rpc::OperationState::SUCCEEDED);
}

// The command line against the live cluster: the coordinator's plan (nothing moves), a
// scale-out followed to its end, the instances, a scale-in of a named node, and a bad one.
TEST_F(ScaleOutTest, CommandLineDrivesTheCoordinator) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 3}));
  testing::WriteAll(dir / "token", kToken);
  auto mc = [&](std::vector<std::string> args) {
    args.insert(args.begin(), ToolPath("modelcast"));
    args.insert(args.end(), {"--coordinator", "127.0.0.1:" + std::to_string(port), "--token-file",
                             (dir / "token").string()});
    return testing::RunProcess(args, 60s);
  };
  auto plan = mc({"plan", "--dry-run", "tiny-llm", "-n", "2", "--json"});
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  auto pj = nlohmann::json::parse(plan.out);
  EXPECT_EQ(pj["nodes"], (nlohmann::json{"node-0", "node-1", "node-2"}));
  EXPECT_TRUE(InstanceNodes().empty()) << "a dry run placed something";
  auto text = mc({"plan", "--dry-run", "tiny-llm", "-n", "2", "--ticks", "3"});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("plan for tiny-llm: 1 source(s) (node-0) to 2 target(s) (node-1, node-2)"),
            std::string::npos)
      << text.out;
  auto out = mc({"scale-out", "tiny-llm", "-n", "2", "--wait", "--json"});
  ASSERT_EQ(out.exit_code, 0) << out.err;
  auto oj = nlohmann::json::parse(out.out);
  EXPECT_EQ(oj["state"], "SUCCEEDED");
  EXPECT_EQ(oj["kind"], "SCALE_OUT");
  auto inst = mc({"instances", "tiny-llm", "--json"});
  ASSERT_EQ(inst.exit_code, 0) << inst.err;
  EXPECT_EQ(nlohmann::json::parse(inst.out).size(), 2u) << inst.out;
  auto in = mc({"scale-in", "tiny-llm", "-n", "1", "--nodes", "node-1", "--wait"});
  ASSERT_EQ(in.exit_code, 0) << in.err;
  EXPECT_NE(in.out.find("scale-in of tiny-llm, SUCCEEDED"), std::string::npos) << in.out;
  EXPECT_NE(in.out.find("node-1           released"), std::string::npos) << in.out;
  EXPECT_EQ(InstanceNodes(), std::vector<std::string>{"node-2:LOCAL"});
  auto bad = mc({"scale-in", "tiny-llm", "-n", "1", "--nodes", "node-1"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("scaleIn: node 'node-1' has no serving instance of model 'tiny-llm'"), std::string::npos)
      << bad.err;
}

// A target killed mid-operation with a spare node in the cluster: the survivors' fragments are
// cancelled, the rest is replanned with the spare standing in, and the operation succeeds,
// reporting the loss.
TEST_F(ScaleOutTest, AKilledTargetIsReplacedByASpare) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 4, .fault = "delay=30ms"}));  // the scale-out lasts seconds
  const std::string id = ScaleOut("tiny-llm", 2);                               // to node-1 and node-2
  ASSERT_TRUE(WaitReceiving(id, "node-2")) << "the scale-out ended before a target could be killed";
  agents[2]->Kill(SIGKILL);
  const rpc::OperationStatus op = WaitForEnd(id);
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
  EXPECT_GE(op.replans, 1);
  auto nodes = ByNode(op);
  EXPECT_EQ(nodes["node-2"].state, "lost");
  EXPECT_EQ(nodes["node-1"].state, "complete");
  EXPECT_EQ(nodes["node-3"].state, "complete");
  EXPECT_EQ(nodes["node-3"].role, "target");
  ExpectVerifiedCopy("node-1");
  ExpectVerifiedCopy("node-3");
  EXPECT_EQ(InstanceNodes(), (std::vector<std::string>{"node-1:LOCAL", "node-3:LOCAL"}));
  for (int i : {0, 1, 3}) EXPECT_TRUE(Running(i).empty()) << "node-" << i;
}

// A target killed mid-operation with no spare: the others finish (replanned around it), and
// the operation ends failed, saying how many replicas it loaded and which node was lost.
TEST_F(ScaleOutTest, AKilledTargetIsReported) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 3, .fault = "delay=30ms"}));
  const std::string id = ScaleOut("tiny-llm", 2);
  ASSERT_TRUE(WaitReceiving(id, "node-2")) << "the scale-out ended before a target could be killed";
  agents[2]->Kill(SIGKILL);
  const rpc::OperationStatus op = WaitForEnd(id);
  EXPECT_EQ(op.state, rpc::OperationState::FAILED);
  ASSERT_TRUE(op.__isset.error);
  EXPECT_NE(op.error.find("1 of 2 replicas loaded"), std::string::npos) << op.error;
  EXPECT_NE(op.error.find("node-2 (lost"), std::string::npos) << op.error;
  auto nodes = ByNode(op);
  EXPECT_EQ(nodes["node-1"].state, "complete");
  ExpectVerifiedCopy("node-1");
  EXPECT_EQ(InstanceNodes(), std::vector<std::string>{"node-1:LOCAL"});
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

// The coordinator SIGKILLed mid-operation and restarted: the agents rejoin, the operation is
// reconciled with them and completes; no fragment is left running, the instances are known.
TEST_F(ScaleOutTest, CoordinatorRestartedMidOperation) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 3, .fault = "delay=30ms"}));
  const std::string id = ScaleOut("tiny-llm", 2);
  ASSERT_TRUE(WaitReceiving(id, "node-1")) << "the scale-out ended before the coordinator could be killed";
  coordinator->Kill(SIGKILL);
  coordinator->Wait(10s);
  ASSERT_NO_FATAL_FAILURE(StartCoordinator());
  const rpc::OperationStatus op = WaitForEnd(id);
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
  for (const std::string n : {"node-1", "node-2"}) ExpectVerifiedCopy(n);
  EXPECT_EQ(InstanceNodes(), (std::vector<std::string>{"node-1:LOCAL", "node-2:LOCAL"}));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(Running(i).empty()) << "node-" << i;
  // The instances are in the journal: a third coordinator knows them, and the operation.
  coordinator->Kill(SIGTERM);
  EXPECT_EQ(coordinator->Wait(30s).exit_code, 0);
  ASSERT_NO_FATAL_FAILURE(StartCoordinator());
  EXPECT_EQ(InstanceNodes(), (std::vector<std::string>{"node-1:LOCAL", "node-2:LOCAL"}));
  rpc::OperationStatus again;
  client->getOperation(again, header, id);
  EXPECT_EQ(again.state, rpc::OperationState::SUCCEEDED);
}

// Scale-outs of two models at once, over the same nodes: each runs on its own fabric channel
// and both complete with every copy verified.
TEST_F(ScaleOutTest, TwoModelsScaleOutAtOnce) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 4, .fault = "delay=10ms", .models = {"model-a", "model-b"}}));
  const std::string a = ScaleOut("model-a", 3);
  const std::string b = ScaleOut("model-b", 3);
  const rpc::OperationStatus op_a = WaitForEnd(a);
  const rpc::OperationStatus op_b = WaitForEnd(b);
  ASSERT_EQ(op_a.state, rpc::OperationState::SUCCEEDED) << (op_a.__isset.error ? op_a.error : "still running");
  ASSERT_EQ(op_b.state, rpc::OperationState::SUCCEEDED) << (op_b.__isset.error ? op_b.error : "still running");
  EXPECT_LT(op_b.started_unix, op_a.finished_unix) << "the two scale-outs did not overlap";
  for (const std::string n : {"node-1", "node-2", "node-3"}) {
    ExpectVerifiedCopy(n, "model-a");
    ExpectVerifiedCopy(n, "model-b");
  }
}

}  // namespace
}  // namespace modelcast
