// modelcast-fabric-node: runs one node's share of a multicast plan over a real transport.
//
// A source loads the prepared package into memory; a receiver gets every slice it is planned
// to get, checks each, forwards as planned, and can write what it received out as a
// package. Peers are found through a cluster YAML (addresses and ports) or a rendezvous
// directory where every node publishes the address it bound. Prints a JSON report; exits 1
// with a one-line error naming the peer and slices on failure. (The agent daemon embeds the
// same executor; this is its fabric alone, for tests and benchmarks.)
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include <glog/logging.h>
#include <nlohmann/json.hpp>

#include "modelcast/common/args.h"
#include "modelcast/common/file_util.h"
#include "modelcast/common/logging.h"
#include "modelcast/planner/cluster.h"
#include "modelcast/planner/plan.h"
#include "modelcast/fabric/executor.h"
#include "modelcast/fabric/fault_transport.h"
#include "modelcast/fabric/ucx_transport.h"
#include "modelcast/fabric/transport_factory.h"
#include "modelcast/fabric/verbs_transport.h"
#include "modelcast/model/package.h"

using namespace modelcast;
namespace fs = std::filesystem;

namespace {

int Fail(const Status& s) {
  std::fprintf(stderr, "modelcast-fabric-node: %s\n", s.message().c_str());
  return 1;
}

Result<std::string> PeerAddress(const std::string& peer, const planner::ClusterConfig* cluster,
                                const std::string& rendezvous, double deadline) {
  if (cluster != nullptr) {
    const int i = cluster->FindNode(peer);
    if (i < 0) return NotFound("peer '" + peer + "' is not in cluster '" + cluster->name + "'");
    const auto& n = cluster->nodes[i];
    if (n.address.empty() || n.port == 0)
      return InvalidArgument("node '" + peer + "' has no address and port in the cluster config");
    return n.address + ":" + std::to_string(n.port);
  }
  const fs::path file = fs::path(rendezvous) / (peer + ".addr");
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(deadline);
  while (std::chrono::steady_clock::now() < until) {
    auto text = ReadFileToString(file, 4096);
    if (text.ok() && !text->empty() && text->back() == '\n') return text->substr(0, text->size() - 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return DeadlineExceeded("peer '" + peer + "' did not publish its address in " + rendezvous + " within " +
                          std::to_string(deadline) + " s");
}

}  // namespace

int main(int argc, char** argv) {
  InitLogging(argv[0], 1);
  std::string name, listen = "127.0.0.1:0", cluster_path, rendezvous, plan_path, package, out, tls, devices, seg = "1m",
                    fault, report_path, progress_path, timeline_path, method = "auto", transport_name = "auto";
  bool source = false, verbose = false;
  int64_t window = 4, recv_window = 2, lookahead = 8, pieces_in_flight = 2;
  int64_t pieces = 2;
  double deadline = 60, start_at = 0;
  ArgParser p("modelcast-fabric-node",
              "Runs one node's share of a multicast plan over UCX or raw verbs (see the file's header).");
  p.Flag("name", &name, "this node's name in the plan");
  p.Flag("listen", &listen, "ip:port to listen on [127.0.0.1:0; with --cluster: the node's address and port]");
  p.Flag("cluster", &cluster_path, "cluster YAML giving every node's address and port");
  p.Flag("rendezvous", &rendezvous, "directory where nodes publish and find addresses (instead of --cluster)");
  p.Flag("plan", &plan_path, "plan JSON (modelcast plan --json)");
  p.Flag("package", &package, "the prepared package: its manifest gives the layout; a source also loads its blocks");
  p.Flag("source", &source, "this node holds the whole model at the start");
  p.Flag("out", &out, "write the received model out as a package here");
  p.Flag("transport", &transport_name,
         "auto (raw verbs where an RDMA device is behind --listen, else UCX), ucx or verbs [auto]");
  p.Flag("tls", &tls, "UCX transports (UCX_TLS), e.g. tcp");
  p.Flag("net-devices", &devices, "UCX network devices (UCX_NET_DEVICES), e.g. eth0");
  p.Flag("seg-size", &seg, "UCX TCP segment size [1m]");
  p.Flag("method", &method,
         "how slices travel: auto (writes where each write's arrival can be told, else messages), messages, writes "
         "[auto]");
  p.Flag("window", &window, "slices in flight from this node, started in plan order [4]");
  p.Flag("recv-window", &recv_window, "slices landing here at once, let in in plan order [2]");
  p.Flag("lookahead", &lookahead, "how far down its plan order a node goes for a ready send or receive [8]");
  p.Flag("pieces", &pieces, "slices move in this many pieces each, forwarded as they land; 1: whole slices [2]");
  p.Flag("pieces-in-flight", &pieces_in_flight, "pieces of one slice handed to the transport at once [2]");
  p.Flag("deadline", &deadline, "seconds for the whole run [60]");
  p.Flag("start-at", &start_at,
         "once connected, wait until this Unix time (seconds) to start: a common start for benchmarks");
  p.Flag("fault", &fault, "inject faults: corrupt=N,..;drop=N,..;delay=10ms;fail=PEER@BYTES");
  p.Flag("report", &report_path, "also write the JSON report to this file");
  p.Flag("progress", &progress_path,
         "append a JSON line to this file as each slice arrives (model, slice, source, bytes, started, finished)");
  p.Flag("timeline", &timeline_path,
         "write every slice's stages here as CSV (node,slice,peer,stage,at; CLOCK_MONOTONIC seconds), for "
         "scripts/slice-timeline.py");
  p.Flag("verbose", &verbose, "log at INFO (and VLOG per GLOG_v)");
  Status s = p.Parse(argc, argv);
  if (!s.ok()) {
    std::fprintf(stderr, "modelcast-fabric-node: %s (see --help)\n", s.message().c_str());
    return 2;
  }
  if (p.help_requested()) {
    std::fputs(p.Usage().c_str(), stdout);
    return 0;
  }
  if (verbose) InitLogging(argv[0], 0);
  if (name.empty() || plan_path.empty() || package.empty())
    return Fail(InvalidArgument("--name, --plan and --package are required"));
  if (cluster_path.empty() == rendezvous.empty())
    return Fail(InvalidArgument("give exactly one of --cluster and --rendezvous"));
  std::unique_ptr<planner::ClusterConfig> cluster;
  if (!cluster_path.empty()) {
    auto c = planner::ClusterConfig::Load(cluster_path);
    if (!c.ok()) return Fail(c.status());
    cluster = std::make_unique<planner::ClusterConfig>(*c);
    if (!p.WasSet("listen")) {
      auto a = PeerAddress(name, cluster.get(), "", 0);
      if (!a.ok()) return Fail(a.status());
      listen = *a;
    }
  }
  auto slice_method = fabric::ParseSliceMethod(method);
  if (!slice_method.ok()) return Fail(slice_method.status());
  auto pkg = model::Package::Open(package);
  if (!pkg.ok()) return Fail(pkg.status());
  const fabric::ModelLayout layout = fabric::ModelLayout::FromManifest(pkg->manifest());
  auto plan_text = ReadFileToString(plan_path, 1ull << 30);
  if (!plan_text.ok()) return Fail(plan_text.status());
  const auto plan_json = nlohmann::json::parse(*plan_text, nullptr, false);
  if (plan_json.is_discarded()) return Fail(InvalidArgument(plan_path + ": not valid JSON"));
  auto plan = planner::Plan::FromJson(plan_json);
  if (!plan.ok()) return Fail(plan.status().WithContext(plan_path));
  if (plan->num_slices != layout.slices.size()) {
    return Fail(InvalidArgument("the plan is for " + std::to_string(plan->num_slices) + " slices, model '" +
                                layout.model + "' has " + std::to_string(layout.slices.size())));
  }
  auto fragment = planner::FragmentOf(*plan, name);
  if (!fragment.ok()) return Fail(fragment.status());

  // The model buffer, 4 KiB-aligned; a source fills it from the package's block files.
  AlignedBuffer buffer(layout.buffer_bytes);
  std::vector<bool> held(layout.slices.size(), source);
  if (source) {
    for (size_t b = 0; b < pkg->manifest().blocks.size(); ++b) {
      auto f = File::OpenRead(pkg->BlockPath(static_cast<uint32_t>(b)));
      if (!f.ok()) return Fail(f.status());
      Status r = f->PReadFull(0, {buffer.data() + layout.block_offsets[b], pkg->manifest().blocks[b].file_bytes});
      if (!r.ok()) return Fail(r);
    }
  }

  fabric::UcxOptions uo;
  uo.name = name;
  uo.listen_address = listen;
  uo.tls = tls;
  uo.net_devices = devices;
  uo.tcp_seg_size = seg;
  auto made = fabric::MakeTransport(transport_name, uo);
  if (!made.ok()) return Fail(made.status());
  std::unique_ptr<fabric::Transport> transport = std::move(*made);
  if (!fault.empty()) {
    auto fo = fabric::FaultOptions::Parse(fault);
    if (!fo.ok()) return Fail(fo.status());
    transport = fabric::MakeFaultTransport(std::move(transport), *fo);
  }
  s = transport->Start();
  if (!s.ok()) return Fail(s);
  auto region = transport->Register(buffer.data(), buffer.size(), fabric::MemoryKind::kHost);
  if (!region.ok()) return Fail(region.status());
  if (!rendezvous.empty()) {
    s = WriteFileAtomic(fs::path(rendezvous) / (name + ".addr"), transport->address() + "\n");
    if (!s.ok()) return Fail(s);
  }
  for (const auto& peer : fragment->Peers()) {
    auto addr = PeerAddress(peer, cluster.get(), rendezvous, deadline);
    if (!addr.ok()) return Fail(addr.status());
    s = fabric::ConnectWithRetry(*transport, peer, *addr, std::min(deadline, 30.0));
    if (!s.ok()) return Fail(s);
  }
  if (start_at > 0) {
    const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    if (now > start_at) {
      LOG(WARNING) << "fabric node " << name << ": connected " << now - start_at << " s after --start-at";
    } else {
      std::this_thread::sleep_for(std::chrono::duration<double>(start_at - now));
    }
  }
  fabric::ExecutorOptions eo;
  if (window < 1 || recv_window < 1 || lookahead < 1 || pieces < 1 || pieces_in_flight < 1)
    return Fail(InvalidArgument("--window, --recv-window, --lookahead, --pieces and --pieces-in-flight must be at least 1"));
  eo.pieces = static_cast<size_t>(pieces);
  eo.pieces_in_flight = static_cast<size_t>(pieces_in_flight);
  eo.window = static_cast<size_t>(window);
  eo.recv_window = static_cast<size_t>(recv_window);
  eo.lookahead = static_cast<size_t>(lookahead);
  eo.method = *slice_method;
  eo.region = region->get();
  eo.deadline = deadline;
  eo.timeline = !timeline_path.empty();
  uint64_t events = 0;
  std::unique_ptr<std::ofstream> progress;
  if (!progress_path.empty()) progress = std::make_unique<std::ofstream>(progress_path, std::ios::app);
  eo.on_slice = [&](const fabric::SliceEvent& e) {
    ++events;
    if (!progress) return Status::Ok();
    // One JSON object per line; times in seconds since the run began.
    nlohmann::json line = {{"model", e.model}, {"slice", e.slice},     {"source", e.source},
                           {"bytes", e.bytes}, {"started", e.started}, {"finished", e.finished}};
    *progress << line.dump() << std::endl;
    return Status::Ok();
  };
  const double started_unix =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  auto result = fabric::ExecuteFragment(*transport, layout, buffer.data(), held, *fragment, eo);
  const fabric::TransportStats stats = transport->stats();
  region->reset();
  transport->Stop();
  if (!result.ok()) return Fail(result.status());
  if (!timeline_path.empty()) {
    s = WriteFileAtomic(timeline_path, fabric::TimelineCsv(name, *result));
    if (!s.ok()) return Fail(s);
  }

  if (!out.empty()) {
    auto staging = StagingDirectory::Create(out);
    if (!staging.ok()) return Fail(staging.status());
    for (size_t b = 0; b < pkg->manifest().blocks.size(); ++b) {
      const auto& block = pkg->manifest().blocks[b];
      auto f = File::Create(staging->path() / block.file);
      if (!f.ok()) return Fail(f.status());
      s = f->PWriteFull(0, {buffer.data() + layout.block_offsets[b], block.file_bytes});
      if (s.ok()) s = f->Close();
      if (!s.ok()) return Fail(s);
    }
    s = WriteFileAtomic(staging->path() / model::kManifestFile, pkg->manifest().Serialize());
    if (s.ok()) s = staging->Commit(true);
    if (!s.ok()) return Fail(s);
  }
  nlohmann::json j = {{"node", name},
                      {"ok", true},
                      {"backend", transport->capabilities().backend},
                      {"seconds", result->seconds},
                      {"started_unix", started_unix},
                      {"first_send_unix", result->first_send < 0 ? 0.0 : started_unix + result->first_send},
                      {"last_receive_unix", result->last_receive < 0 ? 0.0 : started_unix + result->last_receive},
                      {"slices_written", result->slices_written},
                      {"bytes_received", result->bytes_received},
                      {"bytes_sent", result->bytes_sent},
                      {"slices_received", result->slices_received},
                      {"slices_sent", result->slices_sent},
                      {"corrupt_refetched", result->corrupt},
                      {"events", events},
                      {"peer_failures", stats.peer_failures}};
  std::printf("%s\n", j.dump().c_str());
  if (!report_path.empty()) {
    s = WriteFileAtomic(report_path, j.dump() + "\n");
    if (!s.ok()) return Fail(s);
  }
  return 0;
}
