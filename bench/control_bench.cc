// control_bench: the control plane's overhead on loopback. A coordinator and four agents run as
// processes; the model (synthetic small, ~100 MB) sits on agent-0's SSD. Each repetition scales
// it from 1 copy to 4 and evicts the copies again.
//
//   scaleOut to first byte: from the scaleOut call to the first slice moving to a target (agents
//   report their fragment's start and each slice's times), p50/p99; target p99 <= 20 ms.
//   Under load: 16 clients calling getOperation/getClusterStatus at 1,000 calls/s in all while
//   the same scale-outs run: the calls' p99 latency, and the scale-outs' duration against the
//   unloaded ones (target: at most 5 % slower).
//
//   --state etcd: the coordinator keeps its state in three etcd members (loopback) instead of its
//   journal. --compare-state: a head on the journal and one on etcd, up at once, their scale-outs
//   interleaved: the ratio of their scale-out throughputs (issue 24: at least 0.9).
//   --members N: N more members (a load generator speaking the real Membership RPC: N
//   connections, each joining as a node of the cluster config and heartbeating every second)
//   while the same scale-outs run (pinned to the agents): the leader's CPU and scaleOut -> first
//   byte p99, against the same run's phase without them (issue 24: p99 <= 20 ms at 1,000).
//   --failover K: a head of two coordinators on etcd (a leader and a standby, both known to the
//   agents); K times the leader is SIGKILLed and the time until a coordinator accepts a scaleOut
//   is measured (p50/p99 against the lease); the scale-out then runs to its end on the new leader
//   and the killed coordinator comes back as the standby.
//
// Prints a table, then one JSON line.
#include <fcntl.h>
#include <sys/wait.h>
#include <thrift/protocol/TMultiplexedProtocol.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <functional>
#include <mutex>
#include <set>
#include <thread>

#include "Agent.h"
#include "Coordinator.h"
#include "Membership.h"
#include "bench_util.h"
#include "modelcast/common/args.h"
#include "modelcast/common/subprocess.h"
#include "modelcast/common/file_util.h"
#include "modelcast/common/logging.h"
#include "modelcast/model/prepare.h"
#include "modelcast/model/synth.h"
#include "modelcast/rpc/server.h"
#include "support/etcd_command.h"
#include "support/ports.h"

#include <nlohmann/json.hpp>

extern char** environ;

namespace modelcast {
namespace {
namespace fs = std::filesystem;
using bench::Check;
using bench::Die;
using bench::Now;
using namespace std::chrono_literals;

constexpr const char* kToken = "control-bench-token-0123456789";
constexpr int kAgents = 4;

// A daemon started for the benchmark, stdout to a file, killed (by PID) at the end.
struct Daemon {
  pid_t pid = -1;
  fs::path out;
  int port = 0;
};

// Starts a daemon and waits until it listens (its port from its "listening on" line), or, with
// `standby`, until it logs that it stands by for the leadership.
Daemon Spawn(const std::vector<std::string>& argv, const fs::path& out, bool standby = false) {
  Daemon d;
  d.out = out;
  // It dies with the benchmark, however the benchmark ends (SpawnChild).
  auto pid = SpawnChild(argv, {out.string(), out.string() + ".log"});
  if (!pid.ok()) Die(pid.status().WithContext("cannot start " + argv[0]));
  d.pid = *pid;
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < until) {
    if (standby) {
      auto log = ReadFileToString(out.string() + ".log", 1 << 20);
      if (log.ok() && log->find("standing by") != std::string::npos) return d;
    }
    auto text = ReadFileToString(out, 4096);
    const auto at = text.ok() ? text->find("listening on ") : std::string::npos;
    if (at != std::string::npos && text->find('\n', at) != std::string::npos) {
      const auto line = text->substr(at, text->find('\n', at) - at);
      d.port = std::stoi(line.substr(line.rfind(':') + 1));
      return d;
    }
    std::this_thread::sleep_for(20ms);
  }
  Die(Unavailable(argv[0] + " did not start (see " + out.string() + ".log)"));
}

void Stop(Daemon& d) {
  if (d.pid <= 0) return;
  ::kill(d.pid, SIGTERM);
  int status = 0;
  ::waitpid(d.pid, &status, 0);
  d.pid = -1;
}

struct Client {
  std::unique_ptr<rpc::RpcConnection> conn;
  std::unique_ptr<rpc::CoordinatorClient> coordinator;
};

Client Connect(int port) {
  rpc::SecurityConfig s;
  s.token = kToken;
  auto c = rpc::Connect("127.0.0.1", port, s, 10000);
  if (!c.ok()) Die(c.status());
  Client out;
  out.conn = std::move(*c);
  out.coordinator = std::make_unique<rpc::CoordinatorClient>(
      std::make_shared<apache::thrift::protocol::TMultiplexedProtocol>(out.conn->protocol, "Coordinator"));
  return out;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double idx = p * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(idx);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (idx - static_cast<double>(lo));
}

}  // namespace
}  // namespace modelcast

namespace modelcast {
namespace {
int Run(int argc, char** argv);
}  // namespace
}  // namespace modelcast

// A call the coordinator or an agent refuses ends the benchmark with its reason (and the daemons
// it started die with it), never with an uncaught exception.
int main(int argc, char** argv) {
  using namespace modelcast;
  bench::ProgramName() = "control_bench";
  InitLogging(argv[0], 1);
  try {
    return Run(argc, argv);
  } catch (const rpc::InvalidRequest& e) {
    bench::Die(FailedPrecondition("a call was refused: " + e.message));
  } catch (const apache::thrift::TException& e) {
    bench::Die(Unavailable(std::string("a call failed: ") + e.what()));
  }
}

namespace modelcast {
namespace {

struct ClusterOptions {
  std::string host_capacity = "512MiB";
  bool etcd = false;     // the coordinators' state in three etcd members
  int coordinators = 1;  // with etcd: the first leads, the others stand by
  double lease_s = 2;    // coordinator.state.etcd.lease
  int members = 0;       // more nodes in the cluster config ("member-0".."member-<N-1>"), for --members
};

// Four agents (the model on agent-0's SSD) and a coordinator (or a head of several on etcd), as
// processes under `dir`; the model registered, every agent joined.
class ControlCluster {
 public:
  ControlCluster(const ClusterOptions& o, const fs::path& bin, const fs::path& dir, const fs::path& pkg)
      : o_(o), bin_(bin), dir_(dir) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    sec_.token = kToken;
    header_ = rpc::MakeHeader(sec_, "bench");
    if (o.etcd) StartEtcd();
    const std::string defaults =
        "defaults: {gpus: 1, gpu_memory: 4GiB, gpu_hbm: 10GB/s, gpu_tflops: 0.2, host_memory: 8GiB, nic: 16Gbit, "
        "pcie: 10GB/s, ssd: 1GB/s, latency: 20us}\n";
    std::string agents_coordinator = "{endpoints: [";
    for (int k = 0; k < o.coordinators; ++k) {
      ports_.push_back(testing::FreePort());
      std::string cluster = "name: bench\n" + defaults + "nodes:\n";
      for (int i = 0; i < kAgents; ++i) cluster += "  - {name: agent-" + std::to_string(i) + "}\n";
      for (int i = 0; i < o.members; ++i) cluster += "  - {name: member-" + std::to_string(i) + "}\n";
      cluster += "coordinator: {address: 127.0.0.1, port: " + std::to_string(ports_[k]) +
                 ", state_dir: " + (dir / ("state-" + std::to_string(k))).string() +
                 ", heartbeat_interval: 50ms, heartbeat_deadline: 2s, security: {token: " + kToken + "}" +
                 (o.etcd ? ", state: {etcd: {endpoints: " + etcd_list_ + ", prefix: /mc/bench, lease: " +
                               std::to_string(o.lease_s) + "s}}"
                         : "") +
                 "}\n";
      Check(WriteFileAtomic(Config(k), cluster));
      coordinators_.push_back(Spawn(CoordinatorArgv(k), Out(k), /*standby=*/k > 0));
      agents_coordinator += (k ? ", " : "") + std::string("'127.0.0.1:") + std::to_string(ports_[k]) + "'";
    }
    agents_coordinator += "]}";
    auto import = bench::Shell((bin / "modelcast").string() + " store import " + pkg.string() + " --ssd-dir " +
                               (dir / "agent-0").string() + " >/dev/null 2>&1 && echo ok");
    if (!import.ok() || import->find("ok") == std::string::npos) Die(Unavailable("store import failed"));
    for (int i = 0; i < kAgents; ++i) {
      const std::string n = "agent-" + std::to_string(i);
      Check(WriteFileAtomic(dir / (n + ".yaml"),
                            "node: " + n + "\naddress: 127.0.0.1\nport: 0\ncoordinator: " + agents_coordinator +
                                "\nfabric: {listen: '127.0.0.1:0', transport: ucx}\n" + "store: {ssd_dir: " +
                                (dir / n).string() + ", ssd_capacity: 4GiB, host_capacity: " + o.host_capacity +
                                "}\nsecurity: {token: " + kToken + "}\n"));
      agents_.push_back(
          Spawn({(bin / "modelcast-agent").string(), "--config", (dir / (n + ".yaml")).string()}, dir / (n + ".out")));
    }
    client_ = Connect(ports_[0]);
    rpc::RegisterModelRequest reg;
    reg.header = header_;
    reg.name = "bench-llm";
    auto manifest = ReadFileToString(pkg / "manifest.json", 64 << 20);
    if (!manifest.ok()) Die(manifest.status());
    reg.manifest_json = *manifest;
    rpc::ModelInfo info;
    c().registerModel(info, reg);
  }
  ~ControlCluster() {
    client_ = {};
    for (auto& a : agents_) Stop(a);
    for (auto& d : coordinators_) Stop(d);
    for (auto& m : etcd_) Stop(m);
  }

  rpc::CoordinatorClient& c() { return *client_.coordinator; }
  const rpc::RequestHeader& header() const { return header_; }
  int leader_port() const { return ports_[leader_]; }
  pid_t leader_pid() const { return coordinators_[leader_].pid; }

  // One scale-out 1 -> 4 and back: returns (first byte after the call, whole operation) in seconds.
  std::pair<double, double> Scale() {
    WaitSettled();
    const double t0 = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    rpc::ScaleOutResponse resp;
    c().scaleOut(resp, ScaleOutRequest());
    return Finish(resp.operation_id, t0);
  }

  // The leader SIGKILLed; returns the seconds until a coordinator accepts a scaleOut (the scale-out
  // then runs to its end and is undone; the killed coordinator comes back as a standby).
  double KillLeader() {
    WaitSettled();
    client_ = {};
    const size_t killed = leader_;
    const double t0 = Now();
    ::kill(coordinators_[killed].pid, SIGKILL);
    int status = 0;
    ::waitpid(coordinators_[killed].pid, &status, 0);
    coordinators_[killed].pid = -1;
    rpc::ScaleOutRequest so = ScaleOutRequest();
    so.header.__set_request_id("failover-" + std::to_string(++kills_));  // a retry acts once
    std::vector<rpc::Endpoint> endpoints;
    for (int p : ports_) endpoints.push_back({"127.0.0.1", p});
    std::string id, last_error;
    double took = 0;
    connected_s_ = 0;
    const double t0_unix = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    while (id.empty()) {
      if (Now() - t0 > 60) Die(DeadlineExceeded("no coordinator accepted a scaleOut within 60 s: " + last_error));
      size_t at = (killed + 1) % ports_.size();
      auto conn = rpc::ConnectAny(endpoints, sec_, 2000, &at);
      if (!conn.ok()) {
        last_error = conn.status().message();
        std::this_thread::sleep_for(5ms);
        continue;
      }
      if (connected_s_ == 0) connected_s_ = Now() - t0;
      rpc::CoordinatorClient cc(
          std::make_shared<apache::thrift::protocol::TMultiplexedProtocol>((*conn)->protocol, "Coordinator"));
      try {
        rpc::ScaleOutResponse resp;
        cc.scaleOut(resp, so);
        id = resp.operation_id;
        took = Now() - t0;
        leader_ = at;
      } catch (const rpc::InvalidRequest& e) {  // the agents not back yet: no targets
        last_error = e.message;
        std::this_thread::sleep_for(5ms);
      } catch (const apache::thrift::TException& e) {
        last_error = e.what();
        std::this_thread::sleep_for(5ms);
      }
    }
    client_ = Connect(ports_[leader_]);
    Finish(id, t0_unix);
    coordinators_[killed] = Spawn(CoordinatorArgv(killed), Out(killed), /*standby=*/true);
    return took;
  }

  // Nodes the leader takes as alive.
  int Alive() {
    rpc::ClusterStatus s;
    c().getClusterStatus(s, header_);
    int alive = 0;
    for (const auto& n : s.nodes) alive += n.alive;
    return alive;
  }

  // The last KillLeader's seconds until a coordinator took a connection (it leads and listens).
  double connected_s() const { return connected_s_; }

  // The leader's CPU seconds so far (user + system, from /proc).
  double LeaderCpuSeconds() const {
    std::ifstream f("/proc/" + std::to_string(leader_pid()) + "/stat");  // procfs: no size to read by
    const std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const size_t paren = stat.rfind(')');
    if (paren == std::string::npos || paren + 2 > stat.size()) Die(Internal("cannot read the leader's /proc stat"));
    std::istringstream in(stat.substr(paren + 2));
    std::string field;
    double utime = 0, stime = 0;
    for (int i = 3; i <= 15 && in >> field; ++i) {
      if (i == 14) utime = std::stod(field);
      if (i == 15) stime = std::stod(field);
    }
    return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
  }

  // The source's host copy demoted to SSD (for a cold scale-out).
  void DemoteSource() {
    auto ac = AgentAt(Address("agent-0"));
    rpc::AgentClient source(ac->protocol);
    rpc::MoveRequest down;
    down.header = header_;
    down.model = "bench-llm";
    down.tier = "ssd";
    UntilUnpinned("demote on agent-0", [&] { source.demote(down); });
  }

 private:
  void StartEtcd() {
    if (testing::EtcdBinary() == nullptr) Die(NotFound("no etcd binary (scripts/dev.sh installs etcd-server)"));
    testing::EtcdCluster ports;
    for (int i = 0; i < testing::EtcdCluster::kMembers; ++i) {
      ports.client_ports[i] = testing::FreePort();
      ports.peer_ports[i] = testing::FreePort();
    }
    etcd_list_ = ports.YamlList();
    for (int i = 0; i < testing::EtcdCluster::kMembers; ++i) {
      Daemon d;
      auto pid = SpawnChild(ports.MemberArgv(i, dir_ / "etcd", "new"),
                            {(dir_ / ("etcd-" + std::to_string(i) + ".out")).string(),
                             (dir_ / ("etcd-" + std::to_string(i) + ".log")).string()});
      if (!pid.ok()) Die(pid.status().WithContext("cannot start etcd"));
      d.pid = *pid;
      etcd_.push_back(d);
    }
    // The coordinator waits for etcd at start; the members elect their leader in about a second.
  }
  fs::path Config(size_t k) const { return dir_ / ("cluster-" + std::to_string(k) + ".yaml"); }
  fs::path Out(size_t k) const { return dir_ / ("coordinator-" + std::to_string(k) + ".out"); }
  std::vector<std::string> CoordinatorArgv(size_t k) const {
    return {(bin_ / "modelcast-coordinator").string(), "--config", Config(k).string()};
  }
  rpc::ScaleOutRequest ScaleOutRequest() const {
    rpc::ScaleOutRequest so;
    so.header = header_;
    so.model = "bench-llm";
    so.replicas = kAgents - 1;
    if (o_.members > 0) {  // to the agents, not the generator's members (which move nothing)
      rpc::ScaleOptions opts;
      std::vector<std::string> targets;
      for (int i = 1; i < kAgents; ++i) targets.push_back("agent-" + std::to_string(i));
      opts.__set_targets(targets);
      so.__set_options(opts);
    }
    return so;
  }
  // Until every agent is up and only agent-0 holds the model.
  bool Settled() {
    rpc::ClusterStatus s;
    c().getClusterStatus(s, header_);
    int alive = 0;
    for (const auto& n : s.nodes) alive += n.alive && n.name.rfind("agent-", 0) == 0;
    std::vector<rpc::ModelInfo> models;
    c().listModels(models, header_);
    std::set<std::string> holders(models[0].ssd_holders.begin(), models[0].ssd_holders.end());
    holders.insert(models[0].host_holders.begin(), models[0].host_holders.end());
    return alive == kAgents && holders == std::set<std::string>{"agent-0"};
  }
  void WaitSettled() {
    const auto until = std::chrono::steady_clock::now() + 30s;
    while (!Settled()) {
      if (std::chrono::steady_clock::now() > until) Die(DeadlineExceeded("the cluster did not settle"));
      std::this_thread::sleep_for(10ms);
    }
  }
  // Until the operation ends (polled every 2 ms, for at most a minute); it must have succeeded.
  rpc::OperationStatus WaitSucceeded(const std::string& id) {
    const auto until = std::chrono::steady_clock::now() + 60s;
    rpc::OperationStatus op;
    do {
      if (std::chrono::steady_clock::now() > until) Die(DeadlineExceeded(id + " still running after 60 s"));
      std::this_thread::sleep_for(2ms);
      c().getOperation(op, header_, id);
    } while (op.state == rpc::OperationState::RUNNING || op.state == rpc::OperationState::PENDING);
    if (op.state != rpc::OperationState::SUCCEEDED) Die(Internal(op.id + " failed: " + op.error));
    return op;
  }
  std::string Address(const std::string& node) {
    rpc::ClusterStatus st;
    c().getClusterStatus(st, header_);
    for (const auto& n : st.nodes) {
      if (n.name == node) return n.rpc_address;
    }
    Die(NotFound(node + " is not in the cluster"));
  }
  // A client of the agent at `rpc_address` ("ip:port").
  std::unique_ptr<rpc::RpcConnection> AgentAt(const std::string& rpc_address) {
    const auto colon = rpc_address.rfind(':');
    auto ac = rpc::Connect(rpc_address.substr(0, colon), std::stoi(rpc_address.substr(colon + 1)), sec_);
    if (!ac.ok()) Die(ac.status());
    return std::move(*ac);
  }
  // Calls `call` until the agent stops refusing it as FAILED_PRECONDITION (a copy still pinned or
  // being written behind by the last operation), for at most 30 s.
  static void UntilUnpinned(const std::string& what, const std::function<void()>& call) {
    const auto until = std::chrono::steady_clock::now() + 30s;
    for (;;) {
      try {
        call();
        return;
      } catch (const rpc::InvalidRequest& e) {
        if (e.code != rpc::ErrorCode::FAILED_PRECONDITION || std::chrono::steady_clock::now() > until) {
          Die(Internal(what + ": " + e.message));
        }
        std::this_thread::sleep_for(5ms);
      }
    }
  }
  // Waits for operation `id` (called at t0, Unix seconds), then releases the new instances (the
  // coordinator serves through them until then) and evicts their copies, so that the next
  // repetition starts from one copy again.
  std::pair<double, double> Finish(const std::string& id, double t0) {
    const rpc::OperationStatus op = WaitSucceeded(id);
    const double first = op.first_byte_unix - t0;
    const double total = op.finished_unix - t0;
    rpc::ScaleInRequest si;
    si.header = header_;
    si.model = "bench-llm";
    si.replicas = kAgents - 1;
    std::string in_id;
    c().scaleIn(in_id, si);
    WaitSucceeded(in_id);
    rpc::ClusterStatus st;
    c().getClusterStatus(st, header_);
    for (const auto& n : st.nodes) {
      if (n.name == "agent-0" || n.name.rfind("agent-", 0) != 0) continue;  // the targets only
      auto ac = AgentAt(n.rpc_address);
      rpc::AgentClient agent(ac->protocol);
      rpc::MoveRequest evict;
      evict.header = header_;
      evict.model = "bench-llm";
      UntilUnpinned("evict on " + n.name, [&] { agent.evict(evict); });
    }
    return {first, total};
  }

  const ClusterOptions o_;
  const fs::path bin_, dir_;
  rpc::SecurityConfig sec_;
  rpc::RequestHeader header_;
  std::string etcd_list_;
  std::vector<Daemon> etcd_, coordinators_, agents_;
  std::vector<int> ports_;
  size_t leader_ = 0;
  int kills_ = 0;
  double connected_s_ = 0;
  Client client_;
};

// The membership load generator: `n` members, each on a connection of its own to the leader,
// joining as node "member-<i>" and heartbeating every second (rejoining when asked), spread over
// `threads` threads, until destroyed.
class MemberLoad {
 public:
  MemberLoad(int port, int n, int threads) {
    for (int t = 0; t < threads; ++t) {
      threads_.emplace_back([this, port, n, threads, t] { Run(port, n, threads, t); });
    }
  }
  ~MemberLoad() {
    stop_ = true;
    for (auto& t : threads_) t.join();
  }
  int64_t calls() const { return calls_; }
  int64_t failures() const { return failures_; }

 private:
  struct Member {
    std::string name;
    std::unique_ptr<rpc::RpcConnection> conn;
    std::unique_ptr<rpc::MembershipClient> client;
    int64_t epoch = -1;  // not joined
  };
  void Run(int port, int n, int threads, int t) {
    rpc::SecurityConfig sec;
    sec.token = kToken;
    std::vector<Member> mine;
    for (int i = t; i < n; i += threads) mine.push_back({"member-" + std::to_string(i), nullptr, nullptr, -1});
    const auto period = std::chrono::duration<double>(1.0 / static_cast<double>(std::max<size_t>(1, mine.size())));
    auto next = std::chrono::steady_clock::now();
    for (size_t k = 0; !stop_; k = (k + 1) % mine.size()) {
      next += std::chrono::duration_cast<std::chrono::steady_clock::duration>(period);
      Member& m = mine[k];
      try {
        if (!m.client) {
          auto c = rpc::Connect("127.0.0.1", port, sec, 5000);
          if (!c.ok()) throw apache::thrift::TException(c.status().message());
          m.conn = std::move(*c);
          m.client = std::make_unique<rpc::MembershipClient>(
              std::make_shared<apache::thrift::protocol::TMultiplexedProtocol>(m.conn->protocol, "Membership"));
        }
        if (m.epoch < 0) {
          rpc::JoinRequest j;
          j.header = rpc::MakeHeader(sec, m.name);
          j.node = m.name;
          j.rpc_address = "127.0.0.1:1";  // never called: the scale-outs are pinned to the agents
          j.fabric_address = "127.0.0.1:1";
          j.version = "control_bench member";
          rpc::JoinResponse r;
          m.client->join(r, j);
          m.epoch = r.epoch;
        } else {
          rpc::HeartbeatRequest h;
          h.header = rpc::MakeHeader(sec, m.name);
          h.node = m.name;
          h.epoch = m.epoch;
          rpc::HeartbeatResponse r;
          m.client->heartbeat(r, h);
          if (r.rejoin) m.epoch = -1;
        }
        calls_++;
      } catch (const apache::thrift::TException&) {
        failures_++;
        m.client.reset();
        m.conn.reset();
        m.epoch = -1;
      }
      std::this_thread::sleep_until(next);
    }
  }
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> calls_{0}, failures_{0};
  std::vector<std::thread> threads_;
};

void Row(const char* name, const std::vector<double>& v) {
  std::printf("  %-34s %8.2f %8.2f %8.2f\n", name, Percentile(v, 0.5), Percentile(v, 0.99),
              *std::max_element(v.begin(), v.end()));
}

int Run(int argc, char** argv) {
  std::string work = "bench-work", preset = "small", state = "journal";
  int64_t reps = 20, clients = 16, rate = 1000, cold_reps = 0, failover = 0, members = 0, member_threads = 8;
  bool compare_state = false;
  double lease = 2;
  ClusterOptions co;
  ArgParser p("control_bench", "the control plane's overhead: scaleOut to first byte, and status calls under load");
  p.Flag("work", &work, "scratch directory [bench-work]");
  p.Flag("preset", &preset, "synthetic model [small]");
  p.Flag("reps", &reps, "scale-outs per phase [20]");
  p.Flag("clients", &clients, "status-polling clients in the loaded phase [16]");
  p.Flag("rate", &rate, "their calls per second in all [1000]");
  p.Flag("cold-reps", &cold_reps,
         "then scale-outs from a cold source (its host copy demoted to SSD first): first byte against one slice read "
         "(fio, O_DIRECT, the same run) [0]");
  p.Flag("host-capacity", &co.host_capacity, "each agent's host pool [512MiB]");
  p.Flag("state", &state, "where the coordinator keeps its state: journal or etcd (three members on loopback) [journal]");
  p.Flag("compare-state", &compare_state,
         "only idle scale-outs, on a head with the journal and one with etcd, interleaved: the ratio of their "
         "throughputs");
  p.Flag("failover", &failover,
         "kill the leader of a head of two coordinators on etcd this many times, timing until a scaleOut is accepted [0]");
  p.Flag("members", &members,
         "only the idle phase, then again with this many more members joined and heartbeating every second (the real "
         "Membership RPC): the leader's CPU and scaleOut p99 [0]");
  p.Flag("member-threads", &member_threads, "the member load generator's threads [8]");
  p.Flag("lease", &lease, "the coordinators' etcd lease in seconds, with --state etcd or --failover [2]");
  Check(p.Parse(argc, argv));
  if (p.help_requested()) {
    std::fputs(p.Usage().c_str(), stdout);
    return 0;
  }
  if (state != "journal" && state != "etcd") Die(InvalidArgument("--state must be journal or etcd, not '" + state + "'"));
  if (reps < 1 || failover < 0 || !(lease >= 1 && lease <= 60) || members < 0 || members > 100000 ||
      member_threads < 1 || member_threads > 256) {
    Die(InvalidArgument(
        "--reps must be at least 1, --failover at least 0, --lease from 1 to 60, --members from 0 to 100000, "
        "--member-threads from 1 to 256"));
  }
  co.etcd = state == "etcd";
  co.lease_s = lease;
  const fs::path bin = fs::canonical("/proc/self/exe").parent_path();
  const fs::path w = fs::absolute(work) / "control";
  fs::remove_all(w);
  fs::create_directories(w);
  const fs::path src = bench::SynthesizedModel(work, preset);
  model::PrepareOptions po;
  po.blocks = 4;
  po.slice_bytes = 4 << 20;
  po.name = "bench-llm";
  po.fsync = false;
  auto prepared = model::Prepare(src, w / "pkg", po);
  if (!prepared.ok()) Die(prepared.status());
  std::printf("\ncontrol_bench: %s (%s), 1 -> %d copies on loopback, %lld reps per phase\n", "bench-llm",
              preset.c_str(), kAgents, (long long)reps);
  std::printf("  %-34s %8s %8s %8s\n", "", "p50 ms", "p99 ms", "max ms");

  // The idle phase: `reps` scale-outs after a warm-up; (first byte, whole) in ms.
  // One idle scale-out: its first byte and its end (ms) added to `out`.
  using Times = std::pair<std::vector<double>, std::vector<double>>;
  auto one = [](ControlCluster& cluster, Times& out) {
    auto [f, t] = cluster.Scale();
    out.first.push_back(f * 1e3);
    out.second.push_back(t * 1e3);
  };
  auto idle_phase = [&](ControlCluster& cluster) {
    Times out;
    cluster.Scale();  // warm-up: connections, page cache, first-touch
    for (int64_t r = 0; r < reps; ++r) one(cluster, out);
    return out;
  };

  if (failover > 0) {
    ClusterOptions ha = co;
    ha.etcd = true;
    ha.coordinators = 2;
    ControlCluster cluster(ha, bin, w / "ha", w / "pkg");
    cluster.Scale();  // warm-up
    std::vector<double> took_ms, listening_ms;
    for (int64_t k = 0; k < failover; ++k) {
      took_ms.push_back(cluster.KillLeader() * 1e3);
      listening_ms.push_back(cluster.connected_s() * 1e3);
      std::fprintf(stderr, "control_bench: kill %lld: a new leader listening after %.0f ms, a scaleOut accepted after %.0f ms\n",
                   (long long)k + 1, listening_ms.back(), took_ms.back());
    }
    Row("leader killed -> a leader listens", listening_ms);
    Row("leader killed -> scaleOut accepted", took_ms);
    const double p99 = Percentile(took_ms, 0.99) / 1e3;
    std::printf("  %lld kills, lease %.1f s: p50 %.2f s, p99 %.2f s = %.2f x the lease (target p99 <= 3 s)\n",
                (long long)failover, lease, Percentile(took_ms, 0.5) / 1e3, p99, p99 / lease);
    nlohmann::json j{{"bench", "control_bench"},           {"failover_kills", failover},
                     {"lease_s", lease},                   {"failover_ms_p50", Percentile(took_ms, 0.5)},
                     {"failover_ms_p99", Percentile(took_ms, 0.99)}, {"failover_ms_max", *std::max_element(took_ms.begin(), took_ms.end())},
                     {"failover_p99_over_lease", p99 / lease},
                     {"listening_ms_p50", Percentile(listening_ms, 0.5)}};
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }

  if (members > 0) {
    ClusterOptions mo = co;
    mo.members = static_cast<int>(members);
    ControlCluster cluster(mo, bin, w / "members", w / "pkg");
    // A phase of `reps` scale-outs: (first byte, whole) in ms, and the leader's CPU cores used.
    auto phase = [&](const char* what) {
      const double cpu0 = cluster.LeaderCpuSeconds(), t0 = Now();
      auto r = idle_phase(cluster);
      const double cores = (cluster.LeaderCpuSeconds() - cpu0) / (Now() - t0);
      std::fprintf(stderr, "control_bench: %s: leader %.3f cores\n", what, cores);
      return std::make_pair(r, cores);
    };
    // The leader's CPU with nothing but heartbeats, over `seconds`.
    auto quiet_cpu = [&](double seconds) {
      const double cpu0 = cluster.LeaderCpuSeconds(), t0 = Now();
      std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
      return (cluster.LeaderCpuSeconds() - cpu0) / (Now() - t0);
    };
    const double quiet_alone = quiet_cpu(5);
    auto [alone, alone_cores] = phase("4 agents");
    MemberLoad load(cluster.leader_port(), static_cast<int>(members), static_cast<int>(member_threads));
    const double joining = Now();
    while (cluster.Alive() < kAgents + members) {
      if (Now() - joining > 120) Die(DeadlineExceeded("the members did not all join within 120 s"));
      std::this_thread::sleep_for(100ms);
    }
    const double joined_s = Now() - joining;
    const double quiet_members = quiet_cpu(10);
    const int64_t calls0 = load.calls();
    const double calls_t0 = Now();
    auto [with, with_cores] = phase("with members");
    const double rate_seen = static_cast<double>(load.calls() - calls0) / (Now() - calls_t0);
    const int alive_after = cluster.Alive();
    Row("scaleOut -> first byte (4 agents)", alone.first);
    Row("scaleOut -> first byte (+members)", with.first);
    Row("scaleOut -> done (4 agents)", alone.second);
    Row("scaleOut -> done (+members)", with.second);
    std::printf("  %lld members joined in %.1f s; %.0f membership calls/s during the scale-outs, %lld failed; %d of "
                "%lld nodes alive after\n",
                (long long)members, joined_s, rate_seen, (long long)load.failures(), alive_after,
                (long long)(members + kAgents));
    std::printf("  leader CPU (cores): heartbeats only %.3f (4 agents %.3f); during scale-outs %.3f (4 agents %.3f)\n",
                quiet_members, quiet_alone, with_cores, alone_cores);
    std::printf("  scaleOut -> first byte p99 with %lld members: %.2f ms (target <= 20), %.2f x the 4-agent p99\n",
                (long long)members, Percentile(with.first, 0.99),
                Percentile(with.first, 0.99) / Percentile(alone.first, 0.99));
    nlohmann::json j{{"bench", "control_bench"},
                     {"members", members},
                     {"reps", reps},
                     {"joined_s", joined_s},
                     {"membership_calls_per_s", rate_seen},
                     {"membership_failures", load.failures()},
                     {"leader_cores_heartbeats", quiet_members},
                     {"leader_cores_heartbeats_alone", quiet_alone},
                     {"leader_cores_scale_outs", with_cores},
                     {"leader_cores_scale_outs_alone", alone_cores},
                     {"first_byte_ms_p99", Percentile(with.first, 0.99)},
                     {"first_byte_ms_p99_alone", Percentile(alone.first, 0.99)},
                     {"scale_out_ms_p50", Percentile(with.second, 0.5)},
                     {"scale_out_ms_p50_alone", Percentile(alone.second, 0.5)}};
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }

  if (compare_state) {
    // Both heads up at once, their scale-outs interleaved (ABBA...): a drift of the machine
    // during the run (page cache, another process, the VM's disk) weighs on both alike, where
    // one phase after the other put it all on one side.
    Times journal, etcd;
    ClusterOptions jo = co, eo = co;
    jo.etcd = false;
    eo.etcd = true;
    ControlCluster jc(jo, bin, w / "journal", w / "pkg");
    ControlCluster ec(eo, bin, w / "etcd", w / "pkg");
    jc.Scale();  // warm-up: connections, page cache, first-touch
    ec.Scale();
    for (int64_t r = 0; r < reps; ++r) {
      if (r % 2 == 0) {
        one(jc, journal);
        one(ec, etcd);
      } else {
        one(ec, etcd);
        one(jc, journal);
      }
    }
    Row("scaleOut -> first byte (journal)", journal.first);
    Row("scaleOut -> first byte (etcd)", etcd.first);
    Row("scaleOut -> done (journal)", journal.second);
    Row("scaleOut -> done (etcd)", etcd.second);
    const double ratio = bench::Median(journal.second) / bench::Median(etcd.second);
    std::printf("  throughput with etcd / with the journal (median scale-out time, journal over etcd): %.3f "
                "(target >= 0.9)\n",
                ratio);
    nlohmann::json j{{"bench", "control_bench"},
                     {"reps", reps},
                     {"journal_first_byte_ms_p99", Percentile(journal.first, 0.99)},
                     {"etcd_first_byte_ms_p99", Percentile(etcd.first, 0.99)},
                     {"journal_scale_out_ms_p50", Percentile(journal.second, 0.5)},
                     {"etcd_scale_out_ms_p50", Percentile(etcd.second, 0.5)},
                     {"etcd_over_journal_throughput", ratio}};
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }

  ControlCluster cluster(co, bin, w / "run", w / "pkg");
  // Phase 1: no other load.
  auto [first_idle, total_idle] = idle_phase(cluster);
  std::vector<double> first_load, total_load, call_ms;
  // Phase 1b (--cold-reps): the source's host copy demoted to SSD before each scale-out, so that
  // it reads every block it sends from SSD: its first byte, against the warm ones above and one
  // slice read with fio in the same run.
  std::vector<double> first_cold, total_cold, fio_read_ms;
  if (cold_reps > 0) {
    for (int64_t r = 0; r < cold_reps; ++r) {
      cluster.DemoteSource();
      auto [f, t] = cluster.Scale();
      first_cold.push_back(f * 1e3);
      total_cold.push_back(t * 1e3);
    }
    // One slice (4 MiB, or a whole smaller block) read from the source's largest block file,
    // O_DIRECT, 5 times.
    fs::path block;
    uintmax_t biggest = 0;
    for (const auto& e : fs::recursive_directory_iterator(w / "run" / "agent-0")) {
      if (e.is_regular_file() && e.file_size() > biggest) biggest = e.file_size(), block = e.path();
    }
    const uintmax_t bs = std::min<uintmax_t>(4 << 20, biggest / 4096 * 4096);  // a smaller block: all of it
    for (int i = 0; i < 5; ++i) {
      auto out = bench::Shell("fio --name=slice --filename=" + block.string() + " --rw=randread --bs=" +
                              std::to_string(bs) + " --io_size=" + std::to_string(bs) +
                              " --direct=1 --ioengine=psync --output-format=json");
      if (!out.ok()) Die(out.status());
      const auto j = nlohmann::json::parse(*out, nullptr, false);
      if (j.is_discarded()) Die(Internal("fio printed no JSON"));
      fio_read_ms.push_back(j["jobs"][0]["read"]["clat_ns"]["mean"].get<double>() / 1e6);
    }
  }
  // Phase 2: the same scale-outs while `clients` threads poll the coordinator at `rate` calls/s.
  std::atomic<bool> stop{false};
  std::mutex lat_mu;
  std::vector<std::thread> pollers;
  const auto header = cluster.header();
  const int port = cluster.leader_port();
  for (int64_t i = 0; i < clients; ++i) {
    pollers.emplace_back([&, i] {
      Client cl = Connect(port);
      const auto period = std::chrono::duration<double>(static_cast<double>(clients) / static_cast<double>(rate));
      auto next = std::chrono::steady_clock::now();
      std::vector<double> mine;
      for (uint64_t k = 0; !stop; ++k) {
        next += std::chrono::duration_cast<std::chrono::steady_clock::duration>(period);
        const double t0 = Now();
        try {
          if ((k + static_cast<uint64_t>(i)) % 2 == 0) {
            rpc::ClusterStatus st;
            cl.coordinator->getClusterStatus(st, header);
          } else {
            rpc::OperationStatus op;
            cl.coordinator->getOperation(op, header, "op-1-1");
          }
        } catch (const apache::thrift::TException&) {
        }
        mine.push_back((Now() - t0) * 1e3);
        std::this_thread::sleep_until(next);
      }
      std::lock_guard lock(lat_mu);
      call_ms.insert(call_ms.end(), mine.begin(), mine.end());
    });
  }
  const double load_start = Now();
  for (int64_t r = 0; r < reps; ++r) {
    auto [f, t] = cluster.Scale();
    first_load.push_back(f * 1e3);
    total_load.push_back(t * 1e3);
  }
  const double load_secs = Now() - load_start;
  stop = true;
  for (auto& t : pollers) t.join();

  const double slowdown = bench::Median(total_load) / bench::Median(total_idle);
  Row("scaleOut -> first byte (idle)", first_idle);
  Row("scaleOut -> done (idle)", total_idle);
  if (!first_cold.empty()) {
    Row("scaleOut -> first byte (cold source)", first_cold);
    Row("scaleOut -> done (cold source)", total_cold);
    Row("one 4 MiB slice read (fio, O_DIRECT)", fio_read_ms);
    std::printf("  cold source: first byte p50 %.2f ms = warm p50 + %.2f ms, against one slice read (%.2f ms) + 10 ms\n",
                Percentile(first_cold, 0.5), Percentile(first_cold, 0.5) - Percentile(first_idle, 0.5),
                Percentile(fio_read_ms, 0.5));
  }
  Row("scaleOut -> first byte (loaded)", first_load);
  Row("scaleOut -> done (loaded)", total_load);
  Row("status calls under load", call_ms);
  std::printf("  status calls: %zu in %.1f s (%.0f/s); scale-out median loaded/idle: %.3f (target <= 1.05)\n",
              call_ms.size(), load_secs, static_cast<double>(call_ms.size()) / load_secs, slowdown);
  nlohmann::json j{{"bench", "control_bench"},
                   {"state", state},
                   {"reps", reps},
                   {"first_byte_ms_p50", Percentile(first_idle, 0.5)},
                   {"first_byte_ms_p99", Percentile(first_idle, 0.99)},
                   {"scale_out_ms_p50", Percentile(total_idle, 0.5)},
                   {"first_byte_loaded_ms_p99", Percentile(first_load, 0.99)},
                   {"scale_out_loaded_ms_p50", Percentile(total_load, 0.5)},
                   {"status_calls", call_ms.size()},
                   {"status_calls_per_s", static_cast<double>(call_ms.size()) / load_secs},
                   {"status_call_ms_p50", Percentile(call_ms, 0.5)},
                   {"status_call_ms_p99", Percentile(call_ms, 0.99)},
                   {"loaded_over_idle", slowdown}};
  if (!first_cold.empty()) {
    j["cold_first_byte_ms_p50"] = Percentile(first_cold, 0.5);
    j["cold_first_byte_ms_max"] = *std::max_element(first_cold.begin(), first_cold.end());
    j["cold_scale_out_ms_p50"] = Percentile(total_cold, 0.5);
    j["slice_read_ms_p50"] = Percentile(fio_read_ms, 0.5);
    j["cold_minus_warm_first_byte_ms"] = Percentile(first_cold, 0.5) - Percentile(first_idle, 0.5);
  }
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace
}  // namespace modelcast
