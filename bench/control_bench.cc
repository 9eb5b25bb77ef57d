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
// Prints a table, then one JSON line.
#include <fcntl.h>
#include <sys/wait.h>
#include <thrift/protocol/TMultiplexedProtocol.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <filesystem>
#include <functional>
#include <mutex>
#include <set>
#include <thread>

#include "Agent.h"
#include "Coordinator.h"
#include "bench_util.h"
#include "modelcast/common/args.h"
#include "modelcast/common/subprocess.h"
#include "modelcast/common/file_util.h"
#include "modelcast/common/logging.h"
#include "modelcast/model/prepare.h"
#include "modelcast/model/synth.h"
#include "modelcast/rpc/server.h"

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

Daemon Spawn(const std::vector<std::string>& argv, const fs::path& out) {
  Daemon d;
  d.out = out;
  // It dies with the benchmark, however the benchmark ends (SpawnChild).
  auto pid = SpawnChild(argv, {out.string(), out.string() + ".log"});
  if (!pid.ok()) Die(pid.status().WithContext("cannot start " + argv[0]));
  d.pid = *pid;
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < until) {
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
int Run(int argc, char** argv) {
  std::string work = "bench-work", preset = "small";
  int64_t reps = 20, clients = 16, rate = 1000, cold_reps = 0;
  std::string host_capacity = "512MiB";
  ArgParser p("control_bench", "the control plane's overhead: scaleOut to first byte, and status calls under load");
  p.Flag("work", &work, "scratch directory [bench-work]");
  p.Flag("preset", &preset, "synthetic model [small]");
  p.Flag("reps", &reps, "scale-outs per phase [20]");
  p.Flag("clients", &clients, "status-polling clients in the loaded phase [16]");
  p.Flag("rate", &rate, "their calls per second in all [1000]");
  p.Flag("cold-reps", &cold_reps,
         "then scale-outs from a cold source (its host copy demoted to SSD first): first byte against one slice read "
         "(fio, O_DIRECT, the same run) [0]");
  p.Flag("host-capacity", &host_capacity, "each agent's host pool [512MiB]");
  Check(p.Parse(argc, argv));
  if (p.help_requested()) {
    std::fputs(p.Usage().c_str(), stdout);
    return 0;
  }
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
  const std::string defaults =
      "defaults: {gpus: 1, gpu_memory: 4GiB, gpu_hbm: 10GB/s, gpu_tflops: 0.2, host_memory: 8GiB, nic: 16Gbit, "
      "pcie: 10GB/s, ssd: 1GB/s, latency: 20us}\n";
  std::string cluster = "name: bench\n" + defaults + "nodes:\n";
  for (int i = 0; i < kAgents; ++i) cluster += "  - {name: agent-" + std::to_string(i) + "}\n";
  cluster += "coordinator: {address: 127.0.0.1, port: 0, state_dir: " + (w / "state").string() +
             ", heartbeat_interval: 50ms, heartbeat_deadline: 2s, security: {token: " + kToken + "}}\n";
  Check(WriteFileAtomic(w / "cluster.yaml", cluster));
  Daemon coord = Spawn({(bin / "modelcast-coordinator").string(), "--config", (w / "cluster.yaml").string()},
                       w / "coordinator.out");
  auto import = bench::Shell((bin / "modelcast").string() + " store import " + (w / "pkg").string() + " --ssd-dir " +
                             (w / "agent-0").string() + " >/dev/null 2>&1 && echo ok");
  if (!import.ok() || import->find("ok") == std::string::npos) Die(Unavailable("store import failed"));
  std::vector<Daemon> agents;
  for (int i = 0; i < kAgents; ++i) {
    const std::string n = "agent-" + std::to_string(i);
    Check(WriteFileAtomic(w / (n + ".yaml"),
                          "node: " + n + "\naddress: 127.0.0.1\nport: 0\ncoordinator: {address: 127.0.0.1, port: " +
                              std::to_string(coord.port) + "}\nfabric: {listen: '127.0.0.1:0', transport: ucx}\n" +
                              "store: {ssd_dir: " + (w / n).string() +
                              ", ssd_capacity: 4GiB, host_capacity: " + host_capacity + "}\nsecurity: {token: " + kToken + "}\n"));
    agents.push_back(
        Spawn({(bin / "modelcast-agent").string(), "--config", (w / (n + ".yaml")).string()}, w / (n + ".out")));
  }
  Client main_client = Connect(coord.port);
  auto& c = *main_client.coordinator;
  rpc::SecurityConfig sec;
  sec.token = kToken;
  const auto header = rpc::MakeHeader(sec, "bench");
  rpc::RegisterModelRequest reg;
  reg.header = header;
  reg.name = "bench-llm";
  auto manifest = ReadFileToString(w / "pkg" / "manifest.json", 64 << 20);
  if (!manifest.ok()) Die(manifest.status());
  reg.manifest_json = *manifest;
  rpc::ModelInfo info;
  c.registerModel(info, reg);

  // Until every agent is up and only agent-0 holds the model.
  auto settled = [&] {
    rpc::ClusterStatus s;
    c.getClusterStatus(s, header);
    int alive = 0;
    for (const auto& n : s.nodes) alive += n.alive;
    std::vector<rpc::ModelInfo> models;
    c.listModels(models, header);
    std::set<std::string> holders(models[0].ssd_holders.begin(), models[0].ssd_holders.end());
    holders.insert(models[0].host_holders.begin(), models[0].host_holders.end());
    return alive == kAgents && holders == std::set<std::string>{"agent-0"};
  };
  auto wait_settled = [&] {
    const auto until = std::chrono::steady_clock::now() + 30s;
    while (!settled()) {
      if (std::chrono::steady_clock::now() > until) Die(DeadlineExceeded("the cluster did not settle"));
      std::this_thread::sleep_for(10ms);
    }
  };
  // Until the operation ends (polled every 2 ms, for at most a minute); it must have succeeded.
  auto wait_succeeded = [&](const std::string& id) {
    const auto until = std::chrono::steady_clock::now() + 60s;
    rpc::OperationStatus op;
    do {
      if (std::chrono::steady_clock::now() > until) Die(DeadlineExceeded(id + " still running after 60 s"));
      std::this_thread::sleep_for(2ms);
      c.getOperation(op, header, id);
    } while (op.state == rpc::OperationState::RUNNING || op.state == rpc::OperationState::PENDING);
    if (op.state != rpc::OperationState::SUCCEEDED) Die(Internal(op.id + " failed: " + op.error));
    return op;
  };
  // A client of the agent at `rpc_address` ("ip:port").
  auto agent_at = [&](const std::string& rpc_address) {
    const auto colon = rpc_address.rfind(':');
    auto ac = rpc::Connect(rpc_address.substr(0, colon), std::stoi(rpc_address.substr(colon + 1)), sec);
    if (!ac.ok()) Die(ac.status());
    return std::move(*ac);
  };
  // Calls `call` until the agent stops refusing it as FAILED_PRECONDITION (a copy still pinned or
  // being written behind by the last operation), for at most 30 s.
  auto until_unpinned = [&](const std::string& what, const std::function<void()>& call) {
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
  };
  // One scale-out 1 -> 4 and back: returns (first byte after the call, whole operation) in seconds.
  auto scale = [&]() -> std::pair<double, double> {
    wait_settled();
    rpc::ScaleOutRequest so;
    so.header = header;
    so.model = "bench-llm";
    so.replicas = kAgents - 1;
    rpc::ScaleOutResponse resp;
    const double t0 = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    c.scaleOut(resp, so);
    const rpc::OperationStatus op = wait_succeeded(resp.operation_id);
    const double first = op.first_byte_unix - t0;
    const double total = op.finished_unix - t0;
    // Release the new instances (the coordinator serves through them until then), then evict
    // their copies, so the next repetition starts from one copy again.
    rpc::ScaleInRequest si;
    si.header = header;
    si.model = "bench-llm";
    si.replicas = kAgents - 1;
    std::string in_id;
    c.scaleIn(in_id, si);
    wait_succeeded(in_id);
    rpc::ClusterStatus st;
    c.getClusterStatus(st, header);
    for (const auto& n : st.nodes) {
      if (n.name == "agent-0") continue;
      auto ac = agent_at(n.rpc_address);
      rpc::AgentClient agent(ac->protocol);
      rpc::MoveRequest evict;
      evict.header = header;
      evict.model = "bench-llm";
      until_unpinned("evict on " + n.name, [&] { agent.evict(evict); });
    }
    return {first, total};
  };

  // Phase 1: no other load.
  std::vector<double> first_idle, total_idle, first_load, total_load, call_ms;
  scale();  // warm-up: connections, page cache, first-touch
  for (int64_t r = 0; r < reps; ++r) {
    auto [f, t] = scale();
    first_idle.push_back(f * 1e3);
    total_idle.push_back(t * 1e3);
  }
  // Phase 1b (--cold-reps): the source's host copy demoted to SSD before each scale-out, so that
  // it reads every block it sends from SSD: its first byte, against the warm ones above and one
  // slice read with fio in the same run.
  std::vector<double> first_cold, total_cold, fio_read_ms;
  if (cold_reps > 0) {
    rpc::ClusterStatus st;
    c.getClusterStatus(st, header);
    std::string address;
    for (const auto& n : st.nodes) {
      if (n.name == "agent-0") address = n.rpc_address;
    }
    auto ac = agent_at(address);
    rpc::AgentClient source(ac->protocol);
    for (int64_t r = 0; r < cold_reps; ++r) {
      rpc::MoveRequest down;
      down.header = header;
      down.model = "bench-llm";
      down.tier = "ssd";
      until_unpinned("demote on agent-0", [&] { source.demote(down); });
      auto [f, t] = scale();
      first_cold.push_back(f * 1e3);
      total_cold.push_back(t * 1e3);
    }
    // One slice (4 MiB, or a whole smaller block) read from the source's largest block file,
    // O_DIRECT, 5 times.
    fs::path block;
    uintmax_t biggest = 0;
    for (const auto& e : fs::recursive_directory_iterator(w / "agent-0")) {
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
  for (int64_t i = 0; i < clients; ++i) {
    pollers.emplace_back([&, i] {
      Client cl = Connect(coord.port);
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
    auto [f, t] = scale();
    first_load.push_back(f * 1e3);
    total_load.push_back(t * 1e3);
  }
  const double load_secs = Now() - load_start;
  stop = true;
  for (auto& t : pollers) t.join();
  for (auto& a : agents) Stop(a);
  Stop(coord);

  const double slowdown = bench::Median(total_load) / bench::Median(total_idle);
  std::printf("\ncontrol_bench: %s (%s), 1 -> %d copies on loopback, %lld reps per phase\n", "bench-llm",
              preset.c_str(), kAgents, (long long)reps);
  std::printf("  %-34s %8s %8s %8s\n", "", "p50 ms", "p99 ms", "max ms");
  auto row = [](const char* name, const std::vector<double>& v) {
    std::printf("  %-34s %8.2f %8.2f %8.2f\n", name, Percentile(v, 0.5), Percentile(v, 0.99),
                *std::max_element(v.begin(), v.end()));
  };
  row("scaleOut -> first byte (idle)", first_idle);
  row("scaleOut -> done (idle)", total_idle);
  if (!first_cold.empty()) {
    row("scaleOut -> first byte (cold source)", first_cold);
    row("scaleOut -> done (cold source)", total_cold);
    row("one 4 MiB slice read (fio, O_DIRECT)", fio_read_ms);
    std::printf("  cold source: first byte p50 %.2f ms = warm p50 + %.2f ms, against one slice read (%.2f ms) + 10 ms\n",
                Percentile(first_cold, 0.5), Percentile(first_cold, 0.5) - Percentile(first_idle, 0.5),
                Percentile(fio_read_ms, 0.5));
  }
  row("scaleOut -> first byte (loaded)", first_load);
  row("scaleOut -> done (loaded)", total_load);
  row("status calls under load", call_ms);
  std::printf("  status calls: %zu in %.1f s (%.0f/s); scale-out median loaded/idle: %.3f (target <= 1.05)\n",
              call_ms.size(), load_secs, static_cast<double>(call_ms.size()) / load_secs, slowdown);
  nlohmann::json j{{"bench", "control_bench"},
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
