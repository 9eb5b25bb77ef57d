// A head of two coordinators in the cluster in a box (issue 24): three etcd members in node-3's
// namespace, coordinator A in node-1's, B in node-2's.
// - A leads; its namespace's link is cut: alive but cut off from etcd, it stops acting (exits)
//   within the lease, before B can lead, and B leads.
// - B leads and is frozen (SIGSTOP, as a long pause would); a registerModel waits on it; A leads
//   meanwhile. Thawed, B's late write is refused by the fence (or B exits first): the model is
//   in nobody's state, and B exits.
#include <gtest/gtest.h>
#include <thrift/protocol/TMultiplexedProtocol.h>

#include <csignal>
#include <future>

#include "Coordinator.h"
#include "etcd_client.h"
#include "modelcast/rpc/server.h"
#include "support/coordinator_probe.h"
#include "support/etcd_command.h"
#include "support/fabric_cluster.h"
#include "support/process.h"
#include "support/store_fixture.h"
#include "support/temp_dir.h"
#include "support/wait.h"

namespace modelcast {
namespace {

using namespace std::chrono_literals;
using testing::NetnsCluster;

constexpr const char* kPrefix = "mch";  // apart from the other netns tests' namespaces
constexpr const char* kToken = "netns-ha-test-token-0123456789";
constexpr int kLease = 2;

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

class HaNetnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = testing::NetnsUnavailableReason();
    if (!why.empty()) GTEST_SKIP() << why;
    if (testing::EtcdBinary() == nullptr) GTEST_SKIP() << "no etcd binary (scripts/dev.sh installs etcd-server)";
    cluster = std::make_unique<NetnsCluster>(3, "1gbit", kPrefix);
    ASSERT_TRUE(cluster->status().ok()) << cluster->status().ToString();
    head = std::make_unique<testing::InNetns>(cluster->Namespace(3));  // the test's calls: from node-3
    ASSERT_TRUE(head->ok());
    testing::EtcdCluster ports;
    ports.host = NetnsCluster::Address(3);
    for (int i = 0; i < 3; ++i) {
      ports.client_ports[i] = 2380 + i;
      ports.peer_ports[i] = 2390 + i;
    }
    endpoints = ports.Endpoints();
    for (int i = 0; i < 3; ++i) etcd.push_back(std::make_unique<testing::Child>(InNs(3, ports.MemberArgv(i, dir / "etcd", "new"))));
    auto client = coordinator::EtcdClient::Create(endpoints, 2);
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    testing::WaitUntil([&] { return (*client)->Put("/ready", "1").ok(); }, 30s, 100ms);
    ASSERT_TRUE((*client)->Put("/ready", "1").ok()) << "etcd did not come up in node-3's namespace";
    testing::WriteAll(dir / "token", kToken);
    const std::string etcd_list = ports.YamlList();
    for (int n : {1, 2}) {
      testing::WriteAll(dir / ("c" + std::to_string(n) + ".yaml"),
                        "name: ha\ndefaults: {gpus: 1, gpu_memory: 4GiB, gpu_hbm: 10GB/s, gpu_tflops: 0.2, "
                        "host_memory: 8GiB, nic: 1Gbit, pcie: 10GB/s, ssd: 1GB/s, latency: 20us}\n"
                        "nodes:\n  - {name: node-1}\n"
                        "coordinator:\n  address: " + NetnsCluster::Address(n) + "\n  port: 7300\n  state_dir: " +
                            (dir / ("c" + std::to_string(n))).string() + "\n  security: {token_file: " +
                            (dir / "token").string() + "}\n  state: {etcd: {endpoints: " + etcd_list +
                            ", prefix: /mc/ha, timeout: 1s, lease: " + std::to_string(kLease) + "s}}\n");
    }
  }
  void TearDown() override {
    for (auto* c : {&a, &b}) {
      if (*c && (*c)->Running()) {
        ::kill((*c)->pid(), SIGCONT);
        (*c)->Kill(SIGTERM);
        (*c)->Wait(30s);
      }
    }
    for (auto& m : etcd) m->Kill(SIGTERM);
    for (auto& m : etcd) m->Wait(30s);
  }
  std::vector<std::string> InNs(int n, std::vector<std::string> argv) const {
    argv.insert(argv.begin(), {"ip", "netns", "exec", cluster->Namespace(n)});
    return argv;
  }
  // Coordinator n (1: A, 2: B) in node-n's namespace.
  std::unique_ptr<testing::Child> Coordinator(int n) {
    return std::make_unique<testing::Child>(
        InNs(n, {testing::ToolPath("modelcast-coordinator"), "--config", (dir / ("c" + std::to_string(n) + ".yaml")).string()}));
  }
  void Link(int n, const std::string& up_down) {
    const std::string cmd = testing::SourcePath("scripts/netns-cluster.sh") + " link " + std::to_string(n) + " " +
                            up_down + " --prefix " + kPrefix;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  std::unique_ptr<rpc::RpcConnection> Connect(int n, int timeout_ms = 5000) {
    rpc::SecurityConfig s;
    s.token = kToken;
    auto c = rpc::Connect(NetnsCluster::Address(n), 7300, s, timeout_ms);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(*c) : nullptr;
  }
  static rpc::CoordinatorClient Client(rpc::RpcConnection& c) {
    return rpc::CoordinatorClient(std::make_shared<apache::thrift::protocol::TMultiplexedProtocol>(c.protocol, "Coordinator"));
  }

  testing::TempDir dir;
  std::unique_ptr<NetnsCluster> cluster;
  std::unique_ptr<testing::InNetns> head;
  std::vector<std::unique_ptr<testing::Child>> etcd;
  std::vector<std::string> endpoints;
  std::unique_ptr<testing::Child> a, b;
};

TEST_F(HaNetnsTest, ALeaderCutOffStopsWithinTheLeaseAndAFrozenLeadersLateWriteIsRefused) {
  a = Coordinator(1);
  ASSERT_TRUE(a->WaitForOutput("listening on", 30s)) << a->Wait(1s).err;
  b = Coordinator(2);
  ASSERT_TRUE(b->WaitForError("standing by", 30s)) << b->Wait(1s).err;

  // A cut off from etcd (and from everyone): it stops within the lease; B leads.
  ASSERT_NO_FATAL_FAILURE(Link(1, "down"));
  const auto cut = std::chrono::steady_clock::now();
  const auto a_end = a->Wait(15s);
  const double a_stopped = Seconds(cut);
  EXPECT_EQ(a_end.exit_code, 75) << a_end.err;
  EXPECT_NE(a_end.err.find("lost the leadership"), std::string::npos) << a_end.err;
  EXPECT_LT(a_stopped, kLease + 0.5) << "a leader cut off acts no longer than its lease";
  ASSERT_TRUE(b->WaitForOutput("listening on", 15s)) << b->Wait(1s).err;
  const double b_leads = Seconds(cut);
  EXPECT_GT(b_leads, a_stopped) << "B led only after A had stopped";
  ASSERT_NO_FATAL_FAILURE(Link(1, "up"));

  // A back, standing by. B frozen with a registerModel waiting on it; A leads meanwhile.
  a = Coordinator(1);
  ASSERT_TRUE(a->WaitForError("standing by", 30s)) << a->Wait(1s).err;
  testing::MakePackage(dir.path(), dir / "pkg", "late-llm");
  const std::string manifest = testing::ReadAll(dir / "pkg" / "manifest.json");
  auto late_conn = Connect(2, 30000);
  ASSERT_NE(late_conn, nullptr);
  ASSERT_EQ(::kill(b->pid(), SIGSTOP), 0);
  auto late = std::async(std::launch::async, [&] {
    rpc::CoordinatorClient client = Client(*late_conn);
    rpc::RegisterModelRequest reg;
    rpc::SecurityConfig s;
    s.token = kToken;
    reg.header = rpc::MakeHeader(s, "test");
    reg.name = "late-llm";
    reg.manifest_json = manifest;
    try {
      rpc::ModelInfo info;
      client.registerModel(info, reg);
      return std::string("registered");
    } catch (const rpc::InvalidRequest& e) {
      return "refused: " + e.message;
    } catch (const apache::thrift::TException& e) {
      return std::string("failed: ") + e.what();
    }
  });
  ASSERT_TRUE(a->WaitForOutput("listening on", 15s)) << a->Wait(1s).err;
  ASSERT_EQ(::kill(b->pid(), SIGCONT), 0);
  ASSERT_EQ(late.wait_for(30s), std::future_status::ready);
  const std::string outcome = late.get();
  EXPECT_NE(outcome, "registered") << "a deposed leader changed the state";
  const auto b_end = b->Wait(15s);
  EXPECT_EQ(b_end.exit_code, 75) << b_end.err;
  // Nobody's state has the model: the fence refused B's record.
  auto conn = Connect(1);
  ASSERT_NE(conn, nullptr);
  std::vector<rpc::ModelInfo> models;
  rpc::SecurityConfig s;
  s.token = kToken;
  Client(*conn).listModels(models, rpc::MakeHeader(s, "test"));
  EXPECT_TRUE(models.empty()) << models[0].summary.name;
  const bool fenced = b_end.err.find("no longer leads") != std::string::npos || outcome.find("no longer leads") != std::string::npos;
  std::printf("figure: leader cut off: it stopped %.2f s after the cut, the standby led %.2f s after it (lease %d s); "
              "a frozen leader's late registerModel: %s (%s)\n",
              a_stopped, b_leads, kLease, outcome.c_str(), fenced ? "refused by the fence" : "it exited first");
  std::fflush(stdout);
}

}  // namespace
}  // namespace modelcast
