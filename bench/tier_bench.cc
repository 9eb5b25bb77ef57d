// tier_bench: the tiered store's loads against the baselines of the same run.
//
//   SSD -> host, page cache dropped: the store's Promote (io_uring, O_DIRECT, checksums
//   verified) against fio reading the same block files sequentially with O_DIRECT, 1 MiB
//   blocks, queue depth 32.
//   Warm (files in the page cache): the store (O_DIRECT still, so it reads the device) and a
//   plain single-threaded pread loop from the page cache.
//   With a GPU: host -> GPU and SSD -> GPU against cudaMemcpy from pinned memory.
//
// Prints a table, then one JSON line.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "modelcast/common/args.h"
#include "modelcast/common/file_util.h"
#include "modelcast/common/logging.h"
#include "modelcast/common/units.h"
#include "modelcast/model/package.h"
#include "modelcast/model/prepare.h"
#include "modelcast/model/synth.h"
#include "modelcast/tiers/gpu.h"
#include "modelcast/tiers/host_pool.h"
#include "modelcast/tiers/store.h"

namespace modelcast {
namespace {
namespace fs = std::filesystem;
using bench::Check;
using bench::Die;
using bench::Median;
using bench::Now;

bool DropCaches() {
  ::sync();
  const int fd = ::open("/proc/sys/vm/drop_caches", O_WRONLY);
  if (fd < 0) return false;
  const bool ok = ::write(fd, "3\n", 2) == 2;
  ::close(fd);
  return ok;
}

// The data leaves the page cache; the files' inodes are read back (as opening the store does),
// so neither side pays for metadata reads in its timed part.
void DropData(const std::vector<std::string>& files) {
  DropCaches();
  for (const auto& f : files) {
    std::error_code ec;
    (void)fs::file_size(f, ec);
  }
}

// fio: sequential O_DIRECT reads of the files (fio's default round-robin over them), 1 MiB, queue depth 32.
// `extra`: more fio options (registered buffers, batched submission).
double FioGBps(const std::vector<std::string>& files, const std::string& extra) {
  std::string names;
  for (const auto& f : files) names += (names.empty() ? "" : ":") + f;
  auto out = bench::Shell("fio --name=seq --rw=read --bs=1M --iodepth=32 --direct=1 --ioengine=io_uring " + extra +
                          " --filename=" + names + " --output-format=json 2>/dev/null");
  if (!out.ok()) Die(out.status());
  auto j = nlohmann::json::parse(*out, nullptr, false);
  if (j.is_discarded() || !j.contains("jobs")) Die(Unavailable("fio gave no result (is it installed?)"));
  return j["jobs"][0]["read"]["bw_bytes"].get<double>() / 1e9;
}

// A plain loop: pread 1 MiB at a time, one thread, through the page cache, into a buffer
// the size of the model (touched beforehand, as the store's pool is), as a load must.
double PreadLoopGBps(const std::vector<std::string>& files, AlignedBuffer& dst) {
  uint64_t bytes = 0;
  const double start = Now();
  for (const auto& f : files) {
    auto file = File::OpenRead(f);
    if (!file.ok()) Die(file.status());
    for (uint64_t off = 0;;) {
      const ssize_t n = ::pread(file->fd(), dst.data() + bytes, std::min<uint64_t>(1 << 20, dst.size() - bytes),
                                static_cast<off_t>(off));
      if (n <= 0) break;
      off += static_cast<uint64_t>(n);
      bytes += static_cast<uint64_t>(n);
    }
  }
  return bytes / (Now() - start) / 1e9;
}

tiers::StoreOptions Options(const fs::path& ssd, uint64_t host, uint64_t gpu, bool uring) {
  tiers::StoreOptions o;
  o.ssd_dir = ssd;
  o.ssd_capacity = 1ull << 40;
  o.host_capacity = host;
  o.gpu_capacity = gpu;
  o.io_uring = uring;
  o.maintain_interval = 0;
  return o;
}

// Seconds for one Promote of the whole model to `to` in a freshly opened store (first
// promoting to `stage` untimed, when given).
double TimedPromote(const tiers::StoreOptions& o, const std::string& model, tiers::Tier to,
                    std::optional<tiers::Tier> stage = std::nullopt, const std::function<void()>& before = nullptr) {
  auto store = tiers::Store::Open(o);
  if (!store.ok()) Die(store.status());
  if (before) before();
  if (stage) {
    auto r = (*store)->Promote(model, {}, *stage);
    if (!r.ok()) Die(r.status());
    Check((*r)->Wait(std::chrono::minutes(10)));
  }
  const double t0 = Now();
  auto r = (*store)->Promote(model, {}, to);
  if (!r.ok()) Die(r.status());
  Check((*r)->Wait(std::chrono::minutes(10)));
  return Now() - t0;
}

}  // namespace
}  // namespace modelcast

int main(int argc, char** argv) {
  modelcast::bench::ProgramName() = "tier_bench";
  using namespace modelcast;
  InitLogging(argv[0], 1);
  std::string preset = "medium", work = "bench-work", model_dir;
  int64_t reps = 7, blocks = 8, queue_depth = 32;
  double slice_mib = 16;
  ArgParser p("tier_bench",
              "the tiered store's SSD -> host (and GPU) loads against fio / pread / cudaMemcpy, same run");
  p.Flag("preset", &preset, "model to synthesize when --model is not given [medium]");
  p.Flag("model", &model_dir, "an existing HF checkpoint to prepare instead");
  p.Flag("work", &work, "scratch directory on the disk under test [bench-work]");
  p.Flag("reps", &reps, "repetitions [7]");
  p.Flag("blocks", &blocks, "blocks for prepare [8]");
  p.Flag("slice-mib", &slice_mib, "slice size for prepare [16]");
  p.Flag("queue-depth", &queue_depth, "the store's reads in flight [32]");
  Check(p.Parse(argc, argv));
  if (p.help_requested()) {
    std::fputs(p.Usage().c_str(), stdout);
    return 0;
  }
  const fs::path w = fs::absolute(work);
  const fs::path ssd = w / "tier-ssd";
  fs::create_directories(ssd);
  fs::path src = model_dir;
  if (src.empty()) src = bench::SynthesizedModel(w, preset);
  const std::string name = "bench-" + src.filename().string();
  if (!fs::exists(ssd / name / "manifest.json")) {
    model::PrepareOptions o;
    o.blocks = blocks;
    o.slice_bytes = static_cast<uint64_t>(slice_mib * 1048576);
    o.name = name;
    o.replace = true;
    auto r = model::Prepare(src, ssd / name, o);
    if (!r.ok()) Die(r.status());
  }
  auto pkg = model::Package::Open(ssd / name);
  if (!pkg.ok()) Die(pkg.status());
  const auto& m = pkg->manifest();
  std::vector<std::string> files;
  uint64_t file_bytes = 0;
  for (const auto& b : m.blocks) {
    files.push_back((ssd / name / b.file).string());
    file_bytes += b.file_bytes;
  }
  const uint64_t host_cap = AlignUp(file_bytes, 1 << 21) + (64 << 20);
  auto opts = [&](bool uring, uint64_t gpu = 0) {
    auto o = Options(ssd, host_cap, gpu, uring);
    o.queue_depth = static_cast<unsigned>(queue_depth);
    return o;
  };
  { auto warm = tiers::Store::Open(opts(true)); }  // first open verifies the package (not timed)

  const bool dropped = DropCaches();
  if (!dropped) std::printf("NOTE: cannot drop the page cache (not root?): the cold figures are not cold\n");
  std::map<std::string, std::vector<double>> gbps;
  AlignedBuffer dst(file_bytes);
  std::memset(dst.data(), 0, dst.size());
  auto gb = [&](double secs) { return file_bytes / secs / 1e9; };
  auto drop = [&] { DropData(files); };
  for (int64_t r = 0; r < reps; ++r) {
    // Cold: each measurement starts with the page cache dropped; the order rotates.
    const std::vector<std::function<void()>> cold = {
        [&] {
          DropData(files);
          gbps["fio O_DIRECT QD32"].push_back(FioGBps(files, ""));
        },
        [&] {
          DropData(files);
          gbps["fio + fixedbufs, batched"].push_back(
              FioGBps(files, "--fixedbufs=1 --iodepth_batch_submit=8 --iodepth_batch_complete_min=1"));
        },
        [&] { gbps["store (io_uring)"].push_back(gb(TimedPromote(opts(true), name, tiers::Tier::kHost, {}, drop))); },
        [&] {
          gbps["store (pread threads)"].push_back(gb(TimedPromote(opts(false), name, tiers::Tier::kHost, {}, drop)));
        },
    };
    for (size_t i = 0; i < cold.size(); ++i) cold[(i + static_cast<size_t>(r)) % cold.size()]();
    // Warm: the files in the page cache.
    PreadLoopGBps(files, dst);  // brings the files into the page cache
    gbps["warm: pread loop"].push_back(PreadLoopGBps(files, dst));
    gbps["warm: store (io_uring)"].push_back(gb(TimedPromote(opts(true), name, tiers::Tier::kHost)));
  }

  nlohmann::json j;
  j["bench"] = "tier_bench";
  j["model"] = name;
  j["bytes"] = file_bytes;
  j["slices"] = m.slices.size();
  j["reps"] = reps;
  j["page_cache_dropped"] = dropped;
  std::printf("\ntier_bench: %s, %s in %zu block files, %zu slices, %lld reps%s\n", name.c_str(),
              FormatBytes(file_bytes).c_str(), files.size(), m.slices.size(), (long long)reps,
              dropped ? ", page cache dropped before each cold run" : "");
  std::printf("  %-24s %8s %15s\n", "method", "GB/s", "min - max");
  for (const auto& [k, v] : gbps) {
    const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    std::printf("  %-24s %8.2f %7.2f - %.2f\n", k.c_str(), Median(v), *lo, *hi);
    j["gbps"][k] = Median(v);
  }
  // Against the better fio of each repetition.
  std::vector<double> ratio;
  for (size_t i = 0; i < gbps["fio O_DIRECT QD32"].size(); ++i) {
    ratio.push_back(gbps["store (io_uring)"][i] /
                    std::max(gbps["fio O_DIRECT QD32"][i], gbps["fio + fixedbufs, batched"][i]));
  }
  j["ssd_to_host_vs_fio"] = Median(ratio);
  j["ssd_to_host_vs_fio_median_of_medians"] =
      Median(gbps["store (io_uring)"]) /
      std::max(Median(gbps["fio O_DIRECT QD32"]), Median(gbps["fio + fixedbufs, batched"]));
  j["warm_store_vs_pread_loop"] = Median(gbps["warm: store (io_uring)"]) / Median(gbps["warm: pread loop"]);
  std::printf("  SSD -> host / better fio: %.3f (median of per-rep ratios; target >= 0.9)\n", Median(ratio));
  std::printf("  warm: store / pread loop: %.3f\n", j["warm_store_vs_pread_loop"].get<double>());

  std::string why;
  if (tiers::gpu::Probe(&why).empty()) {
    std::printf("  GPU: skipped (%s)\n", why.c_str());
    j["gpu"] = "skipped: " + why;
  } else {
    // cudaMemcpy from pinned memory in 64 MiB pieces: the host -> GPU peak.
    auto pinned = tiers::HostPool::Create(file_bytes, true);
    if (!pinned.ok()) Die(pinned.status());
    std::memset((*pinned)->base(), 1, file_bytes);
    auto dev = tiers::gpu::DeviceMemory::Allocate(0, file_bytes);
    if (!dev.ok()) Die(dev.status());
    std::vector<double> memcpy_gbps, h2g, s2g;
    for (int64_t r = 0; r < reps; ++r) {
      const double t0 = Now();
      for (uint64_t off = 0; off < file_bytes; off += 64 << 20) {
        Check(tiers::gpu::CopySync(0, tiers::gpu::Direction::kHostToDevice, (*dev)->base() + off,
                                   (*pinned)->base() + off, std::min<uint64_t>(64 << 20, file_bytes - off)));
      }
      memcpy_gbps.push_back(gb(Now() - t0));
      h2g.push_back(gb(TimedPromote(opts(true, file_bytes + (64 << 20)), name, tiers::Tier::kGpu, tiers::Tier::kHost)));
      s2g.push_back(gb(TimedPromote(opts(true, file_bytes + (64 << 20)), name, tiers::Tier::kGpu, {}, drop)));
    }
    const double peak = Median(memcpy_gbps);
    const double slower =
        std::min(peak, std::max(Median(gbps["fio O_DIRECT QD32"]), Median(gbps["fio + fixedbufs, batched"])));
    std::printf("  %-24s %8.2f\n  %-24s %8.2f\n  %-24s %8.2f\n", "cudaMemcpy pinned", peak, "store host -> GPU",
                Median(h2g), "store SSD -> GPU", Median(s2g));
    std::printf("  host -> GPU / cudaMemcpy: %.3f (target >= 0.9)\n", Median(h2g) / peak);
    std::printf("  SSD -> GPU time / slower link's time: %.3f (target <= 1.1)\n", slower / Median(s2g));
    j["gbps"]["cudaMemcpy pinned"] = peak;
    j["gbps"]["store host -> GPU"] = Median(h2g);
    j["gbps"]["store SSD -> GPU"] = Median(s2g);
    j["host_to_gpu_vs_memcpy"] = Median(h2g) / peak;
    j["ssd_to_gpu_time_vs_slower_link"] = slower / Median(s2g);
  }
  std::printf("%s\n", j.dump().c_str());
  return 0;
}
