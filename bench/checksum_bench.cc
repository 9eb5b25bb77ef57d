// checksum_bench: the throughput of modelcast's XXH3 (Xxh3, the build checksum.cc picks: AVX2
// where the CPU has it) against the shared libxxhash's XXH3_64bits in the same run, over a piece
// that stays in cache (256 KiB, how pieces are hashed as they land) and a whole slice (16 MiB,
// how a landed slice is verified). The values must be equal. Prints a table, then one JSON line.
#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "modelcast/common/args.h"
#include "modelcast/common/checksum.h"
#include "modelcast/common/logging.h"

using namespace modelcast;
using bench::Die;
using bench::Now;

namespace {
volatile uint64_t g_sink;
}  // namespace

int main(int argc, char** argv) {
  bench::ProgramName() = "checksum_bench";
  InitLogging(argv[0], 1);
  int64_t reps = 5;
  double seconds = 0.3;
  ArgParser p("checksum_bench", "XXH3 throughput: modelcast's against the shared libxxhash's (see the file's header).");
  p.Flag("reps", &reps, "alternating measurements of each, the median kept [5]");
  p.Flag("seconds", &seconds, "length of one measurement [0.3]");
  Status s = p.Parse(argc, argv);
  if (!s.ok()) Die(s);
  if (p.help_requested()) {
    std::fputs(p.Usage().c_str(), stdout);
    return 0;
  }
  if (reps < 1 || !(seconds > 0)) Die(InvalidArgument("--reps must be at least 1 and --seconds more than 0"));
  std::vector<uint8_t> data((16 << 20) + 1);
  std::mt19937_64 rng(3);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  nlohmann::json out = {{"bench", "checksum_bench"}, {"implementation", Xxh3Implementation()}};
  std::printf("XXH3-64, modelcast's build (%s) against the shared libxxhash's, median of %lld\n",
              Xxh3Implementation(), static_cast<long long>(reps));
  std::printf("  %-10s %14s %14s %7s\n", "bytes", "modelcast GB/s", "library GB/s", "ratio");
  for (size_t size : {size_t{256} << 10, size_t{16} << 20}) {
    const uint8_t* at = data.data() + 1;  // unaligned, as a piece of a slice may be
    if (Xxh3(at, size) != XXH3_64bits(at, size)) Die(Internal("the two builds of XXH3 disagree"));
    // GB/s of `f` over `seconds`, hashing the same bytes again and again.
    auto rate = [&](auto f) {
      uint64_t sink = 0, bytes = 0;
      const double t0 = Now();
      double t = t0;
      while (t - t0 < seconds) {
        sink += f(at, size);
        bytes += size;
        t = Now();
      }
      g_sink = sink;  // the calls are kept
      return static_cast<double>(bytes) / (t - t0) / 1e9;
    };
    std::vector<double> ours, lib;
    for (int64_t r = 0; r < reps; ++r) {
      lib.push_back(rate([](const void* d, size_t n) { return XXH3_64bits(d, n); }));
      ours.push_back(rate([](const void* d, size_t n) { return Xxh3(d, n); }));
    }
    std::sort(ours.begin(), ours.end());
    std::sort(lib.begin(), lib.end());
    const double a = ours[ours.size() / 2], b = lib[lib.size() / 2];
    std::printf("  %-10zu %14.1f %14.1f %7.2f\n", size, a, b, a / b);
    out["sizes"][std::to_string(size)] = {{"modelcast_gb_s", a}, {"library_gb_s", b}, {"ratio", a / b}};
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
