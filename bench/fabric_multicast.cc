// bench/fabric_multicast: real multicasts in the cluster in a box, against the simulator.
//
// Brings up scripts/netns-cluster.sh with one source and up to 8 receivers, each node's link
// shaped to --rate; measures the link's real goodput B with iperf3 between two namespaces
// (median of 3, same run); prepares a model of S bytes (>= 256 MB by default); then, for
// N = 4 and 8 receivers and each algorithm, plans the multicast, runs one
// modelcast-fabric-node per node (every received slice checked against its XXH3), and
// reports the completion time (the source's common start to the last slice verified
// anywhere) over S/B, beside what the simulator predicts for the same plan on links of
// speed B. The nodes' TCP congestion control is --cc (cubic, Linux's default), whatever the host
// uses. Needs root (network namespaces); tears the cluster down whatever happens.
// Prints a table, then one JSON line.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "modelcast/common/args.h"
#include "modelcast/common/file_util.h"
#include "modelcast/common/logging.h"
#include "modelcast/common/units.h"
#include "modelcast/common/subprocess.h"
#include "modelcast/planner/planner.h"
#include "modelcast/model/package.h"
#include "modelcast/model/prepare.h"
#include "modelcast/model/synth.h"
#include "modelcast/sim/simulator.h"

extern char** environ;
using namespace modelcast;
namespace fs = std::filesystem;

namespace {

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "fabric_multicast: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T Must(Result<T> r) {
  if (!r.ok()) Die(r.status().message());
  return std::move(r).value();
}

double UnixNow() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

// The cluster, up for the benchmark's lifetime.
struct Cluster {
  std::string script, prefix;
  Cluster(std::string s, std::string p, int nodes, const std::string& rate, const std::string& cc)
      : script(std::move(s)), prefix(std::move(p)) {
    const std::string cmd =
        script + " up " + std::to_string(nodes) + " --rate " + rate + " --cc " + cc + " --prefix " + prefix;
    if (std::system(cmd.c_str()) != 0) Die("'" + cmd + "' failed");
  }
  ~Cluster() {
    const std::string cmd = script + " down --prefix " + prefix + " >/dev/null";
    if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "fabric_multicast: '%s' failed\n", cmd.c_str());
  }
  std::string Ns(int i) const { return prefix + "-n" + std::to_string(i); }
  static std::string Ip(int i) { return "10.77.0." + std::to_string(10 + i); }
};

// iperf3 goodput from node 1 to node 2, bytes/s.
double Iperf3(const Cluster& c) {
  return Must(bench::Iperf3("ip netns exec " + c.Ns(2), "ip netns exec " + c.Ns(1), Cluster::Ip(2), 15202, ""));
}

struct Proc {
  pid_t pid = -1;
  std::string name;
};

Proc Spawn(const std::vector<std::string>& args, const fs::path& log) {
  // It dies with the benchmark, however the benchmark ends (SpawnChild).
  auto spawned = SpawnChild(args, {log.string(), "=stdout"});
  if (!spawned.ok()) Die("cannot start " + args[0] + ": " + spawned.status().message());
  const pid_t pid = *spawned;
  return {pid, args.size() > 6 ? args[6] : args[0]};
}

// Waits for every process until `deadline` (Unix time); kills (by PID) those still running.
bool WaitAll(std::vector<Proc>& procs, double deadline) {
  bool ok = true;
  for (auto& p : procs) {
    int status = 0;
    while (true) {
      const pid_t r = ::waitpid(p.pid, &status, WNOHANG);
      if (r == p.pid) break;
      if (UnixNow() > deadline) {
        ::kill(p.pid, SIGKILL);
        ::waitpid(p.pid, &status, 0);
        std::fprintf(stderr, "fabric_multicast: %s ran past the deadline and was killed\n", p.name.c_str());
        ok = false;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ok = false;
  }
  return ok;
}

std::string ClusterYaml(int nodes, double bytes_per_s) {
  std::ostringstream y;
  y << "name: netns-bench\ndefaults:\n  gpus: 1\n  gpu_memory: 2GiB\n  gpu_hbm: 10GB/s\n  gpu_tflops: 0.2\n"
    << "  host_memory: 4GiB\n  nic: " << std::llround(bytes_per_s * 8)
    << "bit\n  pcie: 10GB/s\n  ssd: 1GB/s\n  latency: 100us\n"
    << "  port: 7400\nnodes:\n";
  for (int i = 1; i <= nodes; ++i) y << "  - {name: node-" << i << ", address: " << Cluster::Ip(i) << "}\n";
  y << "network:\n  per_transfer_overhead: 100us\n";
  return y.str();
}

}  // namespace

int main(int argc, char** argv) {
  InitLogging(argv[0], 2);
  std::string rate = "250mbit", receivers = "4,8", algorithms = "lambdapipe,chain,binary-tree,unicast", package, work,
              prefix = "mcb", slice = "2MiB", cc = "cubic";
  int64_t layers = 44, blocks = 11, window = 4, recv_window = 2, lookahead = 8, pieces_in_flight = 2;
  int64_t pieces = 2;
  ArgParser p("fabric_multicast", "Multicasts in the netns cluster against the simulator (see the file's header).");
  p.Flag("rate", &rate, "each node's link rate, as tc takes it [250mbit: 9 nodes at 1gbit need more than 2 cores]");
  p.Flag("cc", &cc, "the nodes' TCP congestion control (scripts/netns-cluster.sh --cc) [cubic]");
  p.Flag("receivers", &receivers, "receiver counts to run [4,8]");
  p.Flag("algorithms", &algorithms, "planner algorithms [lambdapipe,chain,binary-tree,unicast]");
  p.Flag("package", &package, "a prepared package to move (default: synthesize 'small' with --layers)");
  p.Flag("layers", &layers, "layers of the synthesized model [44: about 290 MB]");
  p.Flag("blocks", &blocks, "blocks of the synthesized package [11]");
  p.Flag("slice", &slice, "slice size of the synthesized package [2MiB]");
  p.Flag("window", &window, "slices in flight from each node [4]");
  p.Flag("recv-window", &recv_window, "slices landing at each node at once [2]");
  p.Flag("lookahead", &lookahead, "how far down its plan order a node goes for a ready send or receive [8]");
  p.Flag("pieces", &pieces, "slices move in this many pieces each, forwarded as they land; 1: whole slices [2]");
  p.Flag("pieces-in-flight", &pieces_in_flight, "pieces of one slice posted at once by each send [2]");
  p.Flag("work", &work, "working directory (default: a fresh one under /tmp, removed after)");
  p.Flag("prefix", &prefix, "namespace prefix [mcb]");
  bool timeline = false;
  p.Flag("timeline", &timeline,
         "every node writes its slices' timeline (run-K/node-I.timeline.csv under --work, kept): see "
         "scripts/slice-timeline.py");
  Status s = p.Parse(argc, argv);
  if (!s.ok()) Die(s.message());
  if (p.help_requested()) {
    std::fputs(p.Usage().c_str(), stdout);
    return 0;
  }
  if (::geteuid() != 0) Die("needs root (network namespaces)");
  const fs::path self = fs::canonical("/proc/self/exe");
  const fs::path bin = self.parent_path();
  const fs::path source_dir = MODELCAST_SOURCE_DIR;
  const fs::path node_tool = bin / "modelcast-fabric-node";
  if (!fs::exists(node_tool)) Die(node_tool.string() + " is missing (build it)");

  fs::path dir = work;
  if (dir.empty()) {
    char tmpl[] = "/tmp/fabric_multicast.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) Die("cannot create a directory under /tmp");
    dir = tmpl;
  }
  fs::create_directories(dir);
  fs::path pkg = package;
  if (pkg.empty()) {
    pkg = dir / "pkg";
    model::SynthOptions so;
    so.preset = "small";
    so.layers = layers;
    so.replace = true;
    s = model::Synthesize(so, dir / "hf");
    if (!s.ok()) Die(s.message());
    model::PrepareOptions po;
    po.blocks = blocks;
    po.slice_bytes = Must(ParseByteSize(slice));
    po.replace = true;
    po.fsync = false;
    (void)Must(model::Prepare(dir / "hf", pkg, po));
    fs::remove_all(dir / "hf");
  }
  const auto opened = Must(model::Package::Open(pkg));
  uint64_t model_bytes = 0;
  for (const auto& sl : opened.manifest().slices) model_bytes += sl.length;
  const auto counts = bench::SplitCommas(receivers);
  int most = 0;
  for (const auto& c : counts) most = std::max(most, std::stoi(c));

  Cluster cluster((source_dir / "scripts/netns-cluster.sh").string(), prefix, most + 1, rate, cc);
  std::vector<double> iperf;
  for (int i = 0; i < 3; ++i) iperf.push_back(Iperf3(cluster));
  std::sort(iperf.begin(), iperf.end());
  const double b = iperf[1];
  const double ideal = static_cast<double>(model_bytes) / b;
  std::printf(
      "links shaped to %s (TCP congestion control %s); iperf3 goodput B = %s (median of 3); model S = %s in %zu "
      "slices; S/B = %.2f s\n\n",
      rate.c_str(), cc.c_str(), FormatRate(b).c_str(), FormatBytes(model_bytes).c_str(),
      opened.manifest().slices.size(), ideal);
  std::printf("  %-3s %-12s %9s %9s %9s %9s %10s\n", "N", "algorithm", "measured", "/(S/B)", "simulated", "/(S/B)",
              "meas/sim");

  const auto config_node = Must(ConfigNode::ParseString(ClusterYaml(most + 1, b), "bench cluster"));
  const auto config = Must(planner::ClusterConfig::Parse(config_node));
  const auto spec = Must(sim::LoadModelSpec(pkg.string(), 0, 0));
  nlohmann::json out;
  out["bench"] = "fabric_multicast";
  out["rate"] = rate;
  out["cc"] = cc;
  out["iperf3_bytes_per_s"] = b;
  out["model_bytes"] = model_bytes;
  out["slices"] = opened.manifest().slices.size();
  int run = 0;
  bool all_ok = true;
  for (const auto& count : counts) {
    const int n = std::stoi(count);
    sim::ScenarioOptions so;
    so.sources = 1;
    so.targets = n;
    const auto scenario = Must(sim::BuildScenario(config, spec, so));
    for (const auto& algo : bench::SplitCommas(algorithms)) {
      const auto plan = Must(planner::MakePlan(scenario.request, algo));
      const auto predicted = Must(sim::Simulate(scenario, plan, {}));
      const fs::path rdir = dir / ("run-" + std::to_string(++run));
      fs::create_directories(rdir / "rendezvous");
      s = WriteFileAtomic(rdir / "plan.json", plan.ToJson().dump());
      if (!s.ok()) Die(s.message());
      const double start_at = UnixNow() + 3;  // every node up and connected by then
      const double deadline = start_at + 3 * predicted.completion + 30;
      std::vector<Proc> procs;
      for (int i = 1; i <= n + 1; ++i) {
        const std::string name = "node-" + std::to_string(i);
        std::vector<std::string> args = {"ip",
                                         "netns",
                                         "exec",
                                         cluster.Ns(i),
                                         node_tool.string(),
                                         "--name",
                                         name,
                                         "--listen",
                                         Cluster::Ip(i) + ":0",
                                         "--rendezvous",
                                         (rdir / "rendezvous").string(),
                                         "--plan",
                                         (rdir / "plan.json").string(),
                                         "--package",
                                         pkg.string(),
                                         "--tls",
                                         "tcp",
                                         "--net-devices",
                                         "eth0",
                                         "--window",
                                         std::to_string(window),
                                         "--recv-window",
                                         std::to_string(recv_window),
                                         "--lookahead",
                                         std::to_string(lookahead),
                                         "--pieces",
                                         std::to_string(pieces),
                                         "--pieces-in-flight",
                                         std::to_string(pieces_in_flight),
                                         "--deadline",
                                         std::to_string(deadline - UnixNow()),
                                         "--start-at",
                                         std::to_string(start_at),
                                         "--report",
                                         (rdir / (name + ".json")).string()};
        if (timeline) args.insert(args.end(), {"--timeline", (rdir / (name + ".timeline.csv")).string()});
        if (i == 1) {
          args.push_back("--source");
        } else {
          args.insert(args.end(), {"--progress", (rdir / (name + ".progress")).string()});
        }
        procs.push_back(Spawn(args, rdir / (name + ".log")));
        procs.back().name = name;
      }
      const bool ok = WaitAll(procs, deadline + 5);
      double last = 0;
      std::string problem;
      for (int i = 2; ok && i <= n + 1; ++i) {
        auto text = ReadFileToString(rdir / ("node-" + std::to_string(i) + ".json"));
        const auto r = nlohmann::json::parse(text.ok() ? *text : std::string(), nullptr, false);
        if (r.is_discarded() || r.value("bytes_received", uint64_t{0}) != model_bytes) {
          problem = "node-" + std::to_string(i) + " did not receive the whole model";
          break;
        }
        last = std::max(last, r.value("last_receive_unix", 0.0));
      }
      if (!ok || !problem.empty()) {
        all_ok = false;
        std::printf("  %-3d %-12s failed: %s (logs in %s)\n", n, algo.c_str(),
                    problem.empty() ? "a node failed" : problem.c_str(), rdir.c_str());
        continue;
      }
      const double measured = last - start_at;
      std::printf("  %-3d %-12s %8.2fs %9.3f %8.2fs %9.3f %10.3f\n", n, algo.c_str(), measured, measured / ideal,
                  predicted.completion, predicted.completion / ideal, measured / predicted.completion);
      std::fflush(stdout);
      const std::string key = std::to_string(n) + "/" + algo;
      out["runs"][key] = {{"seconds", measured},
                          {"ratio", measured / ideal},
                          {"simulated_seconds", predicted.completion},
                          {"simulated_ratio", predicted.completion / ideal},
                          {"measured_over_simulated", measured / predicted.completion}};
    }
  }
  std::printf("%s\n", out.dump().c_str());
  if (all_ok && work.empty() && !timeline) fs::remove_all(dir);  // else the logs stay for a look
  return all_ok ? 0 : 1;
}
