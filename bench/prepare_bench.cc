// bench/prepare_bench: `prepare` of a model against a plain copy of the same bytes, in the
// same run, on the same (page-cached) source.
//
// Baselines: `cp -r` of the checkpoint directory (coreutils uses copy_file_range, an
// in-kernel copy) and a read+write loop with 1 MiB buffers. Each is timed durable (prepare
// fsyncs every file before the rename; the copies fsync every file they wrote) and, as a
// second view, without durability (prepare with fsync off, the copies without fsync). The
// runs alternate and the medians are compared; a `sync` between runs, outside the timing,
// keeps one run's writeback from landing in the next. The VM this was written on returns
// freed memory to its host, so some runs pay page faults others do not: the table shows
// each method's spread, and ratios come from both the medians and the best runs.
//
// Prints a table, then one JSON line with every figure.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "modelcast/common/args.h"
#include "modelcast/common/file_util.h"
#include "modelcast/common/logging.h"
#include "modelcast/common/units.h"
#include "modelcast/common/subprocess.h"
#include "modelcast/model/checkpoint.h"
#include "modelcast/model/prepare.h"
#include "modelcast/model/synth.h"

namespace fs = std::filesystem;
using namespace modelcast;

namespace {
using bench::Check;
using bench::Die;
using bench::Median;
using bench::Now;

Status RunCommand(const std::vector<std::string>& argv) {
  auto spawned = SpawnChild(argv);  // dies with the benchmark
  if (!spawned.ok()) return spawned.status();
  const pid_t pid = *spawned;
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return Internal("command failed: " + argv[0]);
  return Status::Ok();
}

Status FsyncTree(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    MC_ASSIGN_OR_RETURN(File f, File::OpenRead(e.path()));
    MC_RETURN_IF_ERROR(f.Sync());
  }
  return FsyncDirectory(dir);
}

// Copies every file of src into dst with read() and write() through one 1 MiB buffer.
Status CopyLoop(const fs::path& src, const fs::path& dst, bool durable) {
  fs::create_directory(dst);
  AlignedBuffer buf(1 << 20);
  for (const auto& e : fs::directory_iterator(src)) {
    MC_ASSIGN_OR_RETURN(File in, File::OpenRead(e.path()));
    MC_ASSIGN_OR_RETURN(File out, File::Create(dst / e.path().filename()));
    for (;;) {
      ssize_t n = ::read(in.fd(), buf.data(), buf.size());
      if (n < 0) return IOError("read " + e.path().string(), errno);
      if (n == 0) break;
      if (::write(out.fd(), buf.data(), static_cast<size_t>(n)) != n) return IOError("write", errno);
    }
    if (durable) MC_RETURN_IF_ERROR(out.Sync());
  }
  return durable ? FsyncDirectory(dst) : Status::Ok();
}

}  // namespace

int main(int argc, char** argv) {
  modelcast::bench::ProgramName() = "prepare_bench";
  InitLogging(argv[0], 1);
  std::string preset = "medium", work, model_dir;
  int64_t reps = 11, blocks = 8;
  double slice_mib = 16;
  ArgParser p("prepare_bench", "prepare of a model against cp and a read+write loop of the same bytes, same run.");
  p.Flag("preset", &preset, "model to synthesize when --model is not given [medium]");
  p.Flag("model", &model_dir, "an existing HF checkpoint to prepare instead");
  p.Flag("work", &work, "scratch directory on the disk under test [build/bench-work]");
  p.Flag("reps", &reps, "repetitions of each method [11]");
  p.Flag("blocks", &blocks, "blocks for prepare [8]");
  p.Flag("slice-mib", &slice_mib, "slice size for prepare [16]");
  Check(p.Parse(argc, argv));
  if (p.help_requested()) {
    std::fputs(p.Usage().c_str(), stdout);
    return 0;
  }
  if (work.empty()) work = "bench-work";
  fs::create_directories(work);
  const fs::path w = fs::absolute(work);
  fs::path src = model_dir;
  if (src.empty()) src = bench::SynthesizedModel(w, preset);
  auto ck = model::HfCheckpoint::Open(src);
  if (!ck.ok()) Die(ck.status());
  uint64_t src_bytes = 0;
  for (const auto& e : fs::directory_iterator(src)) src_bytes += fs::file_size(e.path());
  const uint64_t tensor_bytes = ck->TensorBytes();
  // Warm the page cache: every method reads a cached source.
  Check(RunCommand({"sh", "-c", "cat '" + src.string() + "'/* > /dev/null"}));

  using Method = std::function<Status(const fs::path& dst)>;
  auto prepare = [&](bool durable) -> Method {
    return [&, durable](const fs::path& dst) -> Status {
      model::PrepareOptions o;
      o.blocks = blocks;
      o.slice_bytes = static_cast<uint64_t>(slice_mib * 1048576);
      o.fsync = durable;
      return model::Prepare(src, dst, o).status();
    };
  };
  auto cp = [&](bool durable) -> Method {
    return [&, durable](const fs::path& dst) -> Status {
      MC_RETURN_IF_ERROR(RunCommand({"cp", "-r", src.string(), dst.string()}));
      return durable ? FsyncTree(dst) : Status::Ok();
    };
  };
  auto loop = [&](bool durable) -> Method {
    return [&, durable](const fs::path& dst) { return CopyLoop(src, dst, durable); };
  };
  const std::vector<std::pair<std::string, Method>> methods = {
      {"prepare (fsync)", prepare(true)},     {"cp -r + fsync", cp(true)}, {"read/write + fsync", loop(true)},
      {"prepare (no fsync)", prepare(false)}, {"cp -r", cp(false)},        {"read/write", loop(false)},
  };
  std::map<std::string, std::vector<double>> secs;
  for (int64_t r = 0; r < reps; ++r) {
    for (size_t i = 0; i < methods.size(); ++i) {
      // Rotate the order each repetition so no method always runs first.
      const auto& [name, run] = methods[(i + static_cast<size_t>(r)) % methods.size()];
      const fs::path dst = w / "out";
      fs::remove_all(dst);
      ::sync();
      const double t0 = Now();
      Check(run(dst));
      secs[name].push_back(Now() - t0);
      fs::remove_all(dst);
      ::sync();
    }
  }
  nlohmann::json j;
  j["bench"] = "prepare_bench";
  j["model"] = src.filename().string();
  j["tensor_bytes"] = tensor_bytes;
  j["source_bytes"] = src_bytes;
  j["reps"] = reps;
  std::printf("\nprepare_bench: %s, %s of tensors (%s on disk), %lld reps\n", src.filename().c_str(),
              FormatBytes(tensor_bytes).c_str(), FormatBytes(src_bytes).c_str(), (long long)reps);
  std::printf("  %-20s %9s %11s %15s\n", "method", "seconds", "GB/s", "min - max (s)");
  for (const auto& [name, _] : methods) {
    const double m = Median(secs[name]);
    const double bytes = name.rfind("prepare", 0) == 0 ? tensor_bytes : src_bytes;
    const auto [lo, hi] = std::minmax_element(secs[name].begin(), secs[name].end());
    std::printf("  %-20s %9.3f %11.2f %7.3f - %.3f\n", name.c_str(), m, bytes / m / 1e9, *lo, *hi);
    j["seconds"][name] = m;
    j["gbps"][name] = bytes / m / 1e9;
  }
  // Ratios of rates, from the medians and (more reproducible on a noisy VM) the minima.
  auto best = [&](const std::string& n) { return *std::min_element(secs[n].begin(), secs[n].end()); };
  struct Pair {
    const char* label;
    const char* prepare;
    const char* copy;
    const char* key;
  };
  std::printf("  %-36s %8s %8s\n", "ratio (prepare rate / copy rate)", "median", "best");
  for (const Pair& p :
       {Pair{"prepare / cp, durable", "prepare (fsync)", "cp -r + fsync", "vs_cp_durable"},
        Pair{"prepare / read-write, durable", "prepare (fsync)", "read/write + fsync", "vs_loop_durable"},
        Pair{"prepare / cp, no fsync", "prepare (no fsync)", "cp -r", "vs_cp_nofsync"},
        Pair{"prepare / read-write, no fsync", "prepare (no fsync)", "read/write", "vs_loop_nofsync"}}) {
    const double bytes_ratio = static_cast<double>(tensor_bytes) / static_cast<double>(src_bytes);
    const double med = Median(secs[p.copy]) / Median(secs[p.prepare]) * bytes_ratio;
    const double min = best(p.copy) / best(p.prepare) * bytes_ratio;
    std::printf("  %-36s %8.2f %8.2f\n", p.label, med, min);
    j[std::string("ratio_") + p.key] = med;
    j[std::string("ratio_best_") + p.key] = min;
  }
  std::printf("%s\n", j.dump().c_str());
  return 0;
}
