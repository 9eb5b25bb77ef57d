// A coordinator and node agents as real processes on loopback, the models on node-0's SSD: the
// fixture of the scale-out and serving integration tests.
#pragma once

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
#include "support/ports.h"
#include "support/coordinator_probe.h"
#include "support/process.h"
#include "support/store_fixture.h"
#include "support/temp_dir.h"
#include "support/wait.h"

namespace modelcast {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::ToolPath;

constexpr const char* kToken = "scale-out-test-token-0123456789";

[[maybe_unused]] uint32_t Count(const std::vector<rpc::SliceRun>& runs) {
  uint32_t n = 0;
  for (const auto& r : runs) n += static_cast<uint32_t>(r.count);
  return n;
}

// A port nobody listens on now (the coordinator keeps it across its restart).
using testing::FreePort;

// The port a daemon announced on its stdout ("<what> ADDRESS:PORT").
int AnnouncedPort(testing::Child& process, const std::string& what) {
  const std::string out = process.Stdout();
  const auto at = out.find(what);
  if (at == std::string::npos) return 0;
  const auto line = out.substr(at, out.find('\n', at) - at);
  return std::stoi(line.substr(line.rfind(':') + 1));
}

// The last `n` lines of `text` (all of it for npos).
[[maybe_unused]] std::string LastLines(const std::string& text, size_t n) {
  size_t at = text.size();
  for (size_t k = 0; k < n && at > 0; ++k) {
    at = text.rfind('\n', at - 1);
    if (at == std::string::npos) return text;
  }
  return text.substr(at == text.size() ? at : at + 1);
}

struct ClusterOptions {
  int nodes = 3;
  std::string fault;                               // the agents' fabric fault spec
  std::vector<std::string> models = {"tiny-llm"};  // all on node-0's SSD
  bool serving = false;                            // the coordinator's router, HTTP on a free port
  std::string coordinator_extra;                   // more keys of the coordinator mapping ("  key: value\n")
  std::map<int, std::string> host_capacity;        // by node index; 64MiB where not given
  std::map<std::string, std::string> model_files;  // more files of every model's checkpoint (a tokenizer)
  std::string agent_fabric;                        // more keys of the agents' fabric mapping (", key: value")
  // The coordinators' state in etcd ("[host:port, ...]", testing::EtcdMembers::YamlList): a head of
  // two, a leader and a standby (StartStandby), known to the agents both. Empty: one coordinator,
  // its journal on its disk.
  std::string etcd;
  int standbys = 1;  // with etcd: coordinators besides the first
  std::string lease = "2s";  // with etcd: the coordinators' lease
  std::string heartbeat_interval = "100ms", heartbeat_deadline = "1s";  // the agents'
};

// A coordinator and agents as processes on loopback, the models on node-0's SSD.
class ScaleOutTest : public ::testing::Test, public testing::CoordinatorProbe {
 protected:
  void StartCluster(const ClusterOptions& o = {}) {
    options = o;
    port = FreePort();
    standby_ports.clear();
    http_ports.clear();
    for (int k = 0; !o.etcd.empty() && k < o.standbys; ++k) standby_ports.push_back(FreePort());
    // A head of several serving coordinators: each on an HTTP port known beforehand (a standby
    // forwards its HTTP API to the leader's and says so only in its log).
    for (size_t k = 0; o.serving && k < (o.etcd.empty() ? 0 : 1 + standby_ports.size()); ++k) {
      http_ports.push_back(FreePort());
    }
    const std::string defaults =
        "defaults: {gpus: 1, gpu_memory: 4GiB, gpu_hbm: 10GB/s, gpu_tflops: 0.2, host_memory: 8GiB, nic: 16Gbit, "
        "pcie: 10GB/s, ssd: 1GB/s, latency: 20us}\n";
    auto cluster_yaml = [&](int coordinator_port, const std::string& state_dir, int http_port) {
      std::string cluster = "name: loop\n" + defaults + "nodes:\n";
      for (int i = 0; i < o.nodes; ++i) cluster += "  - {name: node-" + std::to_string(i) + "}\n";
      cluster += "coordinator:\n  address: 127.0.0.1\n  port: " + std::to_string(coordinator_port) +
                 "\n  state_dir: " + (dir / state_dir).string() +
                 "\n  heartbeat_interval: " + o.heartbeat_interval + "\n  heartbeat_deadline: " +
                 o.heartbeat_deadline + "\n  security: {token: " + kToken +
                 "}\n  metrics: {address: 127.0.0.1, port: 0}\n" + o.coordinator_extra;
      if (!o.etcd.empty()) cluster += "  state: {etcd: {endpoints: " + o.etcd + ", prefix: /mc/loop, lease: " + o.lease + "}}\n";
      if (o.serving) {
        cluster += "  serving: {fabric: {listen: '127.0.0.1:0'}, http: {address: 127.0.0.1, port: " +
                   std::to_string(http_port) + "}, max_batch: 8}\n";
      }
      return cluster;
    };
    testing::WriteAll(dir / "cluster.yaml", cluster_yaml(port, "coord", http_ports.empty() ? 0 : http_ports[0]));
    for (size_t k = 0; k < standby_ports.size(); ++k) {
      testing::WriteAll(dir / StandbyConfig(k), cluster_yaml(standby_ports[k], "coord-standby-" + std::to_string(k),
                                                             http_ports.empty() ? 0 : http_ports[k + 1]));
    }
    ASSERT_NO_FATAL_FAILURE(StartCoordinator());
    standbys.resize(standby_ports.size());
    for (size_t k = 0; k < standby_ports.size(); ++k) ASSERT_NO_FATAL_FAILURE(StartStandby(k));

    // The models, on node-0's SSD only (imported the way received slices are written).
    for (size_t m = 0; m < o.models.size(); ++m) {
      const auto pkg = dir / ("pkg-" + o.models[m]);
      testing::MakePackage(dir.path(), pkg, o.models[m], m, 4, 32 << 10, o.model_files);
      auto import = testing::RunProcess(
          {ToolPath("modelcast"), "store", "import", pkg.string(), "--ssd-dir", (dir / "node-0").string()}, 60s);
      ASSERT_EQ(import.exit_code, 0) << import.err;
    }
    std::string coordinators = "{address: 127.0.0.1, port: " + std::to_string(port) + "}";
    if (!standby_ports.empty()) {
      coordinators = "{endpoints: ['127.0.0.1:" + std::to_string(port) + "'";
      for (int p : standby_ports) coordinators += ", '127.0.0.1:" + std::to_string(p) + "'";
      coordinators += "]}";
    }
    for (int i = 0; i < o.nodes; ++i) {
      const std::string n = "node-" + std::to_string(i);
      testing::WriteAll(dir / (n + ".yaml"),
                        "node: " + n + "\naddress: 127.0.0.1\nport: 0\n" +
                            "coordinator: " + coordinators + "\nfabric: {listen: '127.0.0.1:0', transport: ucx" +
                            (o.fault.empty() ? "" : ", fault: '" + o.fault + "'") + o.agent_fabric + "}\n" +
                            "store: {ssd_dir: " + (dir / n).string() +
                            ", ssd_capacity: 1GiB, host_capacity: " +
                            (o.host_capacity.count(i) ? o.host_capacity.at(i) : std::string("64MiB")) + "}\n" +
                            "security: {token: " + kToken +
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
      auto pkg = model::Package::Open(dir / ("pkg-" + m));
      ASSERT_TRUE(pkg.ok()) << pkg.status().ToString();
      auto files = pkg->ReadTextFiles();  // a tokenizer, when the test put one in the package
      ASSERT_TRUE(files.ok()) << files.status().ToString();
      if (!files->empty()) reg.__set_text_files(*files);
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
    testing::WaitUntil([&] { return ready(); }, 30s, 50ms);
    ASSERT_TRUE(ready());
  }
  // Starts (or restarts) the coordinator on `port` and connects the test's client to it.
  void StartCoordinator() {
    Disconnect();
    coordinator = std::make_unique<testing::Child>(
        std::vector<std::string>{ToolPath("modelcast-coordinator"), "--config", (dir / "cluster.yaml").string()});
    ASSERT_TRUE(coordinator->WaitForOutput("listening on", 30s)) << coordinator->Wait(1s).err;
    std::string error;
    ASSERT_TRUE(Connect("127.0.0.1", port, kToken, &error)) << error;
  }
  static std::string StandbyConfig(size_t k) { return "cluster-standby-" + std::to_string(k) + ".yaml"; }
  // Starts (or restarts) the head's coordinator 1 + k, which stands by (its Thrift services do not
  // listen) while another leads.
  void StartStandby(size_t k = 0) {
    standbys[k] = std::make_unique<testing::Child>(
        std::vector<std::string>{ToolPath("modelcast-coordinator"), "--config", (dir / StandbyConfig(k)).string()});
    ASSERT_TRUE(standbys[k]->WaitForError("standing by", 30s)) << standbys[k]->Wait(1s).err;
  }
  // GET /metrics from the process whose stdout announced "metrics on ADDRESS:PORT".
  static std::string Metrics(testing::Child& process) {
    const int p = AnnouncedPort(process, "metrics on ");
    if (p == 0) return "";
    httplib::Client http("127.0.0.1", p);
    auto res = http.Get("/metrics");
    return res && res->status == 200 ? res->body : "";
  }
  // What agent i says of itself (getStatus).
  Result<rpc::AgentStatus> StatusOf(int i) {
    auto c = rpc::Connect("127.0.0.1", AnnouncedPort(*agents[i], "listening on "), security);
    if (!c.ok()) return c.status();
    rpc::AgentClient agent((*c)->protocol);
    rpc::AgentStatus st;
    agent.getStatus(st, header);
    return st;
  }
  // What agent i says it is running.
  std::vector<std::string> Running(int i) {
    auto st = StatusOf(i);
    if (!st.ok()) return {"unreachable: " + st.status().message()};
    return st->running_operations;
  }
  // The stages agent i serves ("node-i: model STATE [pipeline_id]"; a stage shared with the
  // node's local instance is listed as the local instance's); `pipelines`: only those listed
  // as a pipeline's.
  std::vector<std::string> Stages(int i, bool pipelines = false) {
    auto st = StatusOf(i);
    if (!st.ok()) return {"node-" + std::to_string(i) + " unreachable: " + st.status().message()};
    std::vector<std::string> out;
    for (const auto& s : st->serving) {
      if (pipelines && !s.__isset.pipeline_id) continue;
      out.push_back(st->node + ": " + s.model + " " + rpc::to_string(s.state) +
                    (s.__isset.pipeline_id ? " " + s.pipeline_id : std::string()));
    }
    return out;
  }
  std::vector<std::string> Stages(bool pipelines = false) {
    std::vector<std::string> out;
    for (size_t i = 0; i < agents.size(); ++i) {
      for (auto& s : Stages(static_cast<int>(i), pipelines)) out.push_back(std::move(s));
    }
    return out;
  }
  void TearDown() override {
    Disconnect();
    // MODELCAST_TEST_LOGS=1 prints the daemons' logs; a failed test prints their last lines
    // (what CI shows of a failure it cannot rerun).
    const bool logs = getenv("MODELCAST_TEST_LOGS") != nullptr;
    const size_t tail = logs ? std::string::npos : HasFailure() ? 40 : 0;
    for (size_t i = 0; i < agents.size(); ++i) {
      if (agents[i]->Running()) agents[i]->Kill(SIGTERM);
      auto r = agents[i]->Wait(30s);
      if (tail) std::cerr << "---- node-" << i << "\n" << LastLines(r.err, tail);
    }
    std::vector<testing::Child*> head = {coordinator.get()};
    for (auto& c : standbys) head.push_back(c.get());
    for (size_t k = 0; k < head.size(); ++k) {
      if (!head[k]) continue;
      const bool running = head[k]->Running();  // not one a test killed
      if (running) head[k]->Kill(SIGTERM);
      auto r = head[k]->Wait(30s);
      if (running) {
        EXPECT_EQ(r.exit_code, 0) << r.err;
      }
      if (tail) std::cerr << "---- coordinator " << k << "\n" << LastLines(r.err, tail);
    }
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
    testing::WaitUntil([&] { return model::Package::Open(dir / node / model).ok(); }, 30s, 50ms);
    auto pkg = model::Package::Open(dir / node / model);
    ASSERT_TRUE(pkg.ok()) << node << ": " << pkg.status().ToString();
    auto report = pkg->Verify();
    ASSERT_TRUE(report.ok());
    EXPECT_TRUE(report->ok()) << node;
  }
  std::vector<std::string> InstanceNodes(const std::string& model = "tiny-llm") {
    return CoordinatorProbe::InstanceNodes(model);
  }

  ClusterOptions options;
  testing::TempDir dir;
  std::unique_ptr<testing::Child> coordinator;
  // options.etcd: the head's other coordinators, their Thrift ports.
  std::vector<std::unique_ptr<testing::Child>> standbys;
  std::vector<int> standby_ports, http_ports;  // http_ports: with serving, every coordinator's
  std::vector<std::unique_ptr<testing::Child>> agents;
  int port = 0;
  uint32_t nslices = 0;
};

}  // namespace
}  // namespace modelcast
