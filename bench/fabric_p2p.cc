// bench/fabric_p2p: two processes moving 1 GiB in slices over UCX on loopback, against
// `iperf3 -l 1M` (one TCP stream) measured in the same run.
//
// Modes: the transport alone, both ways it can move a slice (`am`: active messages that the
// receiver lands where it accepts them; `put`: one-sided RMA puts into the receiver's
// registered buffer, one flush at the end; `am-verify`: active messages whose receiver checks
// each slice's XXH3 on a thread of its own as it lands, the executor's verification alone), and
// the plan executor that agents run, with
// either (`exec-messages`, `exec-writes`: per slice a put, a flush and a "landed"
// notification, the receiver checking each slice's XXH3 before counting it). For each,
// several UCX TCP segment sizes and slice sizes, a window of slices in flight. The receiver
// checks an XXH3 of everything it got. The benchmark re-executes itself as the sender
// (--role send). Prints a table, then one JSON line.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <optional>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "modelcast/common/args.h"
#include "modelcast/common/checksum.h"
#include "modelcast/common/file_util.h"
#include "modelcast/common/logging.h"
#include "modelcast/common/units.h"
#include "modelcast/common/subprocess.h"
#include "modelcast/fabric/executor.h"
#include "modelcast/fabric/ucx_transport.h"

extern char** environ;
using namespace modelcast;
using namespace modelcast::fabric;

namespace {

constexpr uint16_t kStart = 10, kData = 11, kRegion = 12, kDone = 13;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "fabric_p2p: %s\n", what.c_str());
  std::exit(1);
}

void Check(const Status& s) {
  if (!s.ok()) Die(s.message());
}

std::vector<uint8_t> U64(uint64_t v) {
  std::vector<uint8_t> b(8);
  std::memcpy(b.data(), &v, 8);
  return b;
}

uint64_t ReadU64(const std::vector<uint8_t>& b) {
  uint64_t v = 0;
  if (b.size() >= 8) std::memcpy(&v, b.data(), 8);
  return v;
}

Status WaitFor(const std::function<void(Done)>& op) {
  auto p = std::make_shared<std::promise<Status>>();
  auto f = p->get_future();
  op([p](Status s) { p->set_value(s); });
  if (f.wait_for(std::chrono::seconds(60)) != std::future_status::ready) return DeadlineExceeded("benchmark step");
  return f.get();
}

// The same pseudo-random bytes on both sides (so the receiver knows every slice's checksum).
void Fill(uint8_t* data, uint64_t bytes) {
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (uint64_t i = 0; i < bytes / 8; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    std::memcpy(data + 8 * i, &x, 8);
  }
}

// The executor's view of the bytes: one block of `slice`-byte slices, all from the sender.
struct Exec {
  ModelLayout layout;
  PlanFragment sender{"sender", {}, {}}, receiver{"receiver", {}, {}};

  Exec(const uint8_t* data, uint64_t bytes, uint64_t slice) {
    layout.model = "p2p";
    layout.buffer_bytes = bytes;
    layout.block_offsets = {0};
    for (uint64_t off = 0; off < bytes; off += slice) {
      const uint64_t len = std::min(slice, bytes - off);
      const auto i = static_cast<uint32_t>(layout.slices.size());
      layout.slices.push_back({off, len, Xxh3(data + off, len), 0});
      sender.sends.push_back({i, "receiver", i});
      receiver.receives.push_back({i, "sender", i});
    }
  }
};

bool IsExec(const std::string& mode) { return mode.rfind("exec-", 0) == 0; }

// The receiving executor's --recv-window (slices landing at once), set once from the flags.
size_t g_recv_window = 2;
// --pieces: how many pieces the executor cuts each slice into, set once from the flags.
size_t g_pieces = 2;
size_t g_pieces_in_flight = 2;
// --timeline: where both ends write their slices' timelines (empty: not recorded).
std::string g_timeline;

ExecutorOptions ExecOptions(const std::string& mode, const MemoryRegion* region, size_t window) {
  ExecutorOptions o;
  o.method = mode == "exec-writes" ? SliceMethod::kWrites : SliceMethod::kMessages;
  o.region = region;
  o.window = window;
  o.recv_window = g_recv_window;
  o.pieces = g_pieces;
  o.pieces_in_flight = g_pieces_in_flight;
  o.deadline = 120;
  o.timeline = !g_timeline.empty();
  return o;
}

std::unique_ptr<Transport> MakeTransport(const std::string& name, const std::string& seg) {
  UcxOptions o;
  o.name = name;
  o.tls = "tcp";
  o.tcp_seg_size = seg;
  auto t = MakeUcxTransport(o);
  if (!t.ok()) Die(t.status().message());
  Check((*t)->Start());
  return std::move(*t);
}

// The sender: connects, then moves `bytes` in `slice`-byte pieces by messages or puts.
int Send(const std::string& address, const std::string& mode, const std::string& seg, uint64_t bytes, uint64_t slice,
         size_t window) {
  auto t = MakeTransport("sender", seg);
  AlignedBuffer data(bytes);
  Fill(data.data(), bytes);
  const uint64_t sum = Xxh3(data.data(), bytes);
  auto local = t->Register(data.data(), bytes, MemoryKind::kHost);
  if (!local.ok()) Die(local.status().message());
  std::promise<RemoteRegion> region;
  t->SetMessageHandler([&](const IncomingMessage& m, AcceptPayload accept) {
    if (m.type != kRegion) return accept(nullptr, [](Status) {});
    auto text = std::make_shared<std::string>(m.payload_size, '\0');
    accept(reinterpret_cast<uint8_t*>(text->data()),
           [&, text](Status) { region.set_value(*RemoteRegion::Parse(*text)); });
  });
  Check(WaitFor([&](Done d) { t->Connect("receiver", address, d); }));
  RemoteRegion remote;
  if (mode == "put") remote = region.get_future().get();
  // The executor's view (checksums of every slice) is built before the receiver's clock starts:
  // hashing the payload is not moving it.
  std::optional<Exec> exec;
  if (IsExec(mode)) exec.emplace(data.data(), bytes, slice);
  // The executor's messages are held from here until it takes them.
  if (IsExec(mode)) t->SetMessageHandler(nullptr);
  Check(WaitFor([&](Done d) { t->Send("receiver", kStart, {}, {}, d); }));
  if (IsExec(mode)) {
    auto report = ExecuteFragment(*t, exec->layout, data.data(), std::vector<bool>(exec->layout.slices.size(), true),
                                  exec->sender, ExecOptions(mode, local->get(), window));
    Check(report.status());
    if (!g_timeline.empty()) Check(WriteFileAtomic(g_timeline + ".sender.csv", TimelineCsv("sender", *report)));
    local->reset();
    t->Stop();
    return 0;
  }
  std::mutex mu;
  std::condition_variable cv;
  size_t in_flight = 0;
  Status failure;
  for (uint64_t off = 0; off < bytes; off += slice) {
    const uint64_t len = std::min(slice, bytes - off);
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return in_flight < window; });
    ++in_flight;
    lock.unlock();
    Done done = [&](Status s) {
      std::lock_guard l(mu);
      --in_flight;
      if (!s.ok()) failure = s;
      cv.notify_all();
    };
    if (mode == "put") {
      t->Write("receiver", **local, off, remote, off, len, done);
    } else {
      t->Send("receiver", kData, U64(off), {data.data() + off, len}, done);
    }
  }
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return in_flight == 0; });
  }
  Check(failure);
  if (mode == "put") Check(WaitFor([&](Done d) { t->Flush("receiver", d); }));
  Check(WaitFor([&](Done d) { t->Send("receiver", kDone, U64(sum), {}, d); }));
  local->reset();
  t->Stop();
  return 0;
}

// The receiver: returns the seconds from the sender's start to the last byte in place.
double Receive(const std::string& self, const std::string& mode, const std::string& seg, uint64_t bytes, uint64_t slice,
               size_t window) {
  auto t = MakeTransport("receiver", seg);
  AlignedBuffer buffer(bytes);
  std::unique_ptr<Exec> exec;
  // am-verify: active messages, each slice's XXH3 checked on a thread of its own as it lands
  // (what the executor's verifier does, without the rest of the executor).
  const bool verify = mode == "am-verify";
  if (IsExec(mode) || verify) {
    Fill(buffer.data(), bytes);
    exec = std::make_unique<Exec>(buffer.data(), bytes, slice);
  }
  std::memset(buffer.data(), 0, bytes);
  auto region = t->Register(buffer.data(), bytes, MemoryKind::kHost);
  if (!region.ok()) Die(region.status().message());
  std::mutex mu;
  std::condition_variable cv;
  std::chrono::steady_clock::time_point start, end;
  uint64_t landed = 0, expected_sum = 0, verified = 0;
  bool done = false;
  Status failure;
  std::deque<uint64_t> to_verify;  // offsets of landed slices (am-verify)
  std::thread verifier;
  if (verify) {
    verifier = std::thread([&] {
      std::unique_lock lock(mu);
      while (verified < bytes && failure.ok()) {
        cv.wait(lock, [&] { return !to_verify.empty() || !failure.ok(); });
        if (to_verify.empty()) break;
        const uint64_t off = to_verify.front();
        to_verify.pop_front();
        const SliceInfo& info = exec->layout.slices[off / slice];
        lock.unlock();
        const bool good = Xxh3(buffer.data() + off, info.length) == info.xxh3;
        lock.lock();
        if (!good) failure = Corruption("slice at " + std::to_string(off) + " failed its checksum");
        verified += info.length;
        if (verified == bytes) end = std::chrono::steady_clock::now();
        cv.notify_all();
      }
    });
  }
  t->SetMessageHandler([&](const IncomingMessage& m, AcceptPayload accept) {
    std::lock_guard lock(mu);
    if (m.type == kStart) {
      start = std::chrono::steady_clock::now();
      cv.notify_all();
    } else if (m.type == kDone) {
      expected_sum = ReadU64(m.header);
      done = true;
      if (mode == "put") end = std::chrono::steady_clock::now();
      cv.notify_all();
    } else if (m.type == kData) {
      const uint64_t off = ReadU64(m.header);
      if (off + m.payload_size > bytes) return accept(nullptr, [](Status) {});
      accept(buffer.data() + off, [&, off, size = m.payload_size](Status s) {
        std::lock_guard l(mu);
        if (!s.ok()) failure = s;
        landed += size;
        if (verify) to_verify.push_back(off);
        if (landed == bytes && !verify) end = std::chrono::steady_clock::now();
        cv.notify_all();
      });
      return;
    }
    accept(nullptr, [](Status) {});
  });
  // Start the sender, then (for puts) hand it our region once it has connected.
  std::vector<std::string> args = {self,
                                   "--role",
                                   "send",
                                   "--connect",
                                   t->address(),
                                   "--mode",
                                   mode,
                                   "--seg-size",
                                   seg,
                                   "--bytes",
                                   std::to_string(bytes),
                                   "--slice",
                                   std::to_string(slice),
                                   "--window",
                                   std::to_string(window),
                                   "--recv-window",
                                   std::to_string(g_recv_window),
                                   "--pieces",
                                   std::to_string(g_pieces),
                                   "--pieces-in-flight",
                                   std::to_string(g_pieces_in_flight),
                                   "--timeline",
                                   g_timeline};
  // The sender dies with the benchmark, however it ends (SpawnChild).
  auto spawned = SpawnChild(args);
  if (!spawned.ok()) Die("cannot start the sender: " + spawned.status().message());
  const pid_t pid = *spawned;
  if (mode == "put") {
    const std::string text = (*region)->remote().Serialize();
    Status sent;
    for (int i = 0; i < 500; ++i) {  // until the sender has connected (it says hello first)
      sent = WaitFor([&](Done d) {
        t->Send("sender", kRegion, {}, {reinterpret_cast<const uint8_t*>(text.data()), text.size()}, d);
      });
      if (sent.ok()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    Check(sent);
  }
  if (IsExec(mode)) {
    {
      std::unique_lock lock(mu);
      if (!cv.wait_for(lock, std::chrono::seconds(60), [&] { return start.time_since_epoch().count() != 0; })) {
        Die("the sender did not start within 60 s");
      }
    }
    auto report = ExecuteFragment(*t, exec->layout, buffer.data(), std::vector<bool>(exec->layout.slices.size(), false),
                                  exec->receiver, ExecOptions(mode, region->get(), window));
    Check(report.status());
    if (!g_timeline.empty()) Check(WriteFileAtomic(g_timeline + ".receiver.csv", TimelineCsv("receiver", *report)));
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) Die("the sender failed");
    if (report->bytes_received != bytes)
      Die("the executor received " + std::to_string(report->bytes_received) + " bytes");
    region->reset();
    t->Stop();
    return report->last_receive;
  }
  {
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, std::chrono::seconds(120), [&] {
          return done && (mode == "put" || landed == bytes) && (!verify || verified == bytes || !failure.ok());
        })) {
      Die("the transfer did not finish within 120 s");
    }
  }
  if (verifier.joinable()) verifier.join();
  Check(failure);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) Die("the sender failed");
  if (Xxh3(buffer.data(), bytes) != expected_sum) Die("the received bytes differ from the sent ones");
  region->reset();
  t->Stop();
  return std::chrono::duration<double>(end - start).count();
}

double Iperf3Loopback() {
  auto b = bench::Iperf3("", "", "127.0.0.1", 15201, "-l 1M");
  if (!b.ok()) Die(b.status().message());
  return *b;
}

}  // namespace

int main(int argc, char** argv) {
  InitLogging(argv[0], getenv("P2P_VERBOSE") ? 0 : 2);
  std::string role = "receive", connect, mode = "am", seg = "256k", modes = "am,am-verify,put,exec-messages,exec-writes",
              segs = "64k,256k,1m", slices = "4,16,64";
  int64_t bytes = 1ll << 30, slice = 16 << 20, window = 4, recv_window = 2, reps = 2, baseline_runs = 3;
  int64_t pieces = 2;
  int64_t pieces_in_flight = 2;
  ArgParser p("fabric_p2p", "UCX between two processes on loopback against iperf3 (see the file's header).");
  p.Flag("role", &role, "receive (the benchmark) or send (started by it)");
  p.Flag("connect", &connect, "sender: the receiver's address");
  p.Flag("mode", &mode, "sender: am, am-verify, put, exec-messages or exec-writes");
  p.Flag("seg-size", &seg, "sender: UCX TCP segment size");
  p.Flag("bytes", &bytes, "bytes to move [1 GiB]");
  p.Flag("slice", &slice, "sender: slice bytes");
  p.Flag("window", &window, "slices in flight [4]");
  p.Flag("recv-window", &recv_window, "the receiving executor's slices landing at once [2]");
  p.Flag("pieces", &pieces, "the executor's pieces a slice (1: whole slices) [2]");
  p.Flag("pieces-in-flight", &pieces_in_flight, "the executor's pieces of one slice posted at once [2]");
  p.Flag("modes", &modes, "modes to measure [am,am-verify,put,exec-messages,exec-writes]");
  p.Flag("segs", &segs, "UCX TCP segment sizes to try [64k,256k,1m]");
  p.Flag("slices", &slices, "slice sizes in MiB to try [4,16,64]");
  p.Flag("timeline", &g_timeline,
         "exec modes: both ends write their slices' timelines to PREFIX.sender.csv and PREFIX.receiver.csv (the "
         "last configuration run wins): see scripts/slice-timeline.py");
  p.Flag("baseline-runs", &baseline_runs, "iperf3 runs (the median is the baseline; 0 skips it) [3]");
  p.Flag("reps", &reps, "repetitions of each configuration (the best is kept) [2]");
  Status s = p.Parse(argc, argv);
  if (!s.ok()) Die(s.message());
  if (p.help_requested()) {
    std::fputs(p.Usage().c_str(), stdout);
    return 0;
  }
  if (recv_window < 1) Die("--recv-window must be at least 1");
  g_recv_window = static_cast<size_t>(recv_window);
  if (pieces < 1) Die("--pieces must be at least 1");
  g_pieces = static_cast<size_t>(pieces);
  if (pieces_in_flight < 1) Die("--pieces-in-flight must be at least 1");
  g_pieces_in_flight = static_cast<size_t>(pieces_in_flight);
  if (role == "send")
    return Send(connect, mode, seg, static_cast<uint64_t>(bytes), static_cast<uint64_t>(slice), window);

  std::vector<double> iperf;
  for (int i = 0; i < baseline_runs; ++i) iperf.push_back(Iperf3Loopback());
  std::sort(iperf.begin(), iperf.end());
  const double baseline = iperf.empty() ? 1.0 : iperf[iperf.size() / 2];
  std::printf("iperf3 -l 1M, one stream, loopback (median of 3): %s\n\n", FormatRate(baseline).c_str());
  std::printf("  %-14s %-8s %-10s %10s %8s\n", "mode", "segment", "slice", "GB/s", "ratio");
  nlohmann::json out;
  out["bench"] = "fabric_p2p";
  out["bytes"] = bytes;
  out["iperf3_bytes_per_s"] = baseline;
  double best = 0, best_exec = 0;
  std::string best_name, best_exec_name;
  for (const auto& m : bench::SplitCommas(modes)) {
    for (const auto& g : bench::SplitCommas(segs)) {
      for (const auto& sl : bench::SplitCommas(slices)) {
        const uint64_t slice_bytes = static_cast<uint64_t>(std::stod(sl) * 1048576);
        double fastest = 1e9;
        for (int r = 0; r < reps; ++r) {
          fastest = std::min(fastest, Receive(argv[0], m, g, static_cast<uint64_t>(bytes), slice_bytes, window));
        }
        const double rate = static_cast<double>(bytes) / fastest;
        std::printf("  %-14s %-8s %-10s %10.2f %8.2f\n", m.c_str(), g.c_str(), (sl + " MiB").c_str(), rate / 1e9,
                    rate / baseline);
        const std::string key = m + "/" + g + "/" + sl + "MiB";
        out["bytes_per_s"][key] = rate;
        if (rate > best) best = rate, best_name = key;
        if (IsExec(m) && rate > best_exec) best_exec = rate, best_exec_name = key;
      }
    }
  }
  out["best"] = best_name;
  out["best_ratio_to_iperf3"] = best / baseline;
  std::printf("  best: %s at %s, %.2f of iperf3\n", best_name.c_str(), FormatRate(best).c_str(), best / baseline);
  if (best_exec > 0) {
    out["best_executor"] = best_exec_name;
    out["best_executor_ratio_to_iperf3"] = best_exec / baseline;
    std::printf("  best through the plan executor: %s at %s, %.2f of iperf3\n", best_exec_name.c_str(),
                FormatRate(best_exec).c_str(), best_exec / baseline);
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
