// executor_bench: decode speed of the layer executor on a synthetic model, at batch 1 and 16,
// against the memory-bandwidth bound measured in the same run: a decode step must read every
// weight once, so tokens/s at batch 1 cannot beat (memcpy bandwidth) / (bytes of weights read
// per token). The figure is the ratio of the two. With --device cuda the bound is the GPU's
// memory bandwidth (a device-to-device cudaMemcpy, bytes read plus written) and the stage computes
// from bf16 weights on the device (fp32 copies with --widen).
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "modelcast/common/args.h"
#include "modelcast/common/logging.h"
#include "modelcast/model/checkpoint.h"
#include "modelcast/pipeline/stage.h"
#include "modelcast/tiers/gpu.h"

namespace fs = std::filesystem;
using namespace modelcast;
using bench::Check;
using bench::Now;

namespace {

// Bytes copied per second by memcpy of `bytes` (best of `reps`). The buffers must be larger than
// the last-level cache, or this measures the cache.
double MemcpyBandwidth(uint64_t bytes, int reps) {
  std::vector<uint8_t> a(bytes, 1), b(bytes, 2);
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const double t0 = Now();
    std::memcpy(b.data(), a.data(), bytes);
    const double t = Now() - t0;
    best = std::max(best, static_cast<double>(bytes) / t);
    a[r] = b[bytes - 1 - r];  // keep the copies observable
  }
  return best;
}

// Bytes read per second by every core streaming its share of `bytes` (an XOR reduction, best
// of `reps`): the tighter bound, since a decode step only reads its weights.
double ReadBandwidth(uint64_t bytes, int reps) {
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<uint64_t> a(bytes / 8, 0x0123456789abcdefull);
  std::vector<uint64_t> sums(threads);
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const double t0 = Now();
    std::vector<std::thread> ts;
    for (unsigned k = 0; k < threads; ++k) {
      ts.emplace_back([&, k] {
        const size_t n = a.size() / threads, begin = k * n;
        uint64_t x0 = 0, x1 = 0, x2 = 0, x3 = 0;
        for (size_t i = begin; i + 4 <= begin + n; i += 4) x0 ^= a[i], x1 ^= a[i + 1], x2 ^= a[i + 2], x3 ^= a[i + 3];
        sums[k] = x0 ^ x1 ^ x2 ^ x3;
      });
    }
    for (auto& t : ts) t.join();
    best = std::max(best, static_cast<double>(bytes) / (Now() - t0));
  }
  uint64_t all = 0;
  for (uint64_t v : sums) all ^= v;
  if (all == 1) std::printf(" ");  // keep the reduction observable
  return best;
}

// The process's resident set (VmRSS), in bytes.
uint64_t ResidentBytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

// Tokens per second over `steps` decode steps of `batch` requests, each prefilled first.
double DecodeRate(pipeline::Stage& stage, int batch, int steps, uint64_t first_request) {
  const auto& c = stage.config();
  pipeline::StepInput pre;
  for (int b = 0; b < batch; ++b) {
    pre.items.push_back({first_request + b, 0, 16});
    for (int t = 0; t < 16; ++t) pre.tokens.push_back(static_cast<int32_t>((b * 131 + t * 17) % c.vocab_size));
  }
  pipeline::StepOutput out;
  Check(stage.Forward(pre, &out));
  pipeline::StepInput step;
  for (int b = 0; b < batch; ++b) step.items.push_back({first_request + b, 16, 1});
  step.tokens.assign(batch, 7);
  const double t0 = Now();
  for (int s = 0; s < steps; ++s) {
    Check(stage.Forward(step, &out));
    for (int b = 0; b < batch; ++b) {
      step.items[b].position += 1;
      step.tokens[b] = static_cast<int32_t>(std::max_element(out.logits.begin() + b * c.vocab_size,
                                                             out.logits.begin() + (b + 1) * c.vocab_size) -
                                            (out.logits.begin() + b * c.vocab_size));
    }
  }
  const double t = Now() - t0;
  for (int b = 0; b < batch; ++b) stage.Drop(first_request + b);
  return static_cast<double>(batch) * steps / t;
}

}  // namespace

int main(int argc, char** argv) {
  bench::ProgramName() = "executor_bench";
  InitLogging(argv[0], 1);
  std::string preset = "small", work = "bench-work", device = "cpu";
  int64_t reps = 5, steps = 48, memcpy_mib = 1024;
  ArgParser p("executor_bench", "decode tokens/s of the layer executor against the memory-bandwidth bound, same run");
  p.Flag("preset", &preset, "synthetic model [small]");
  p.Flag("work", &work, "where the synthesized model is kept [bench-work]");
  p.Flag("device", &device, "cpu or cuda [cpu]");
  p.Flag("reps", &reps, "repetitions [5]");
  p.Flag("steps", &steps, "decode steps per repetition [48]");
  p.Flag("memcpy-mib", &memcpy_mib, "size of each memcpy buffer, beyond the last-level cache [1024]");
  bool widen = false;
  p.Flag("widen", &widen, "compute from fp32 copies of the weights (OpenBLAS), for comparison");
  Check(p.Parse(argc, argv));
  if (p.help_requested()) {
    std::fputs(p.Usage().c_str(), stdout);
    return 0;
  }
  if (device != "cpu" && device != "cuda") Check(InvalidArgument("--device " + device + ": cpu or cuda"));
  fs::create_directories(fs::absolute(work));
  const fs::path src = bench::SynthesizedModel(fs::absolute(work), preset);
  auto ck = model::HfCheckpoint::Open(src);
  if (!ck.ok()) bench::Die(ck.status());
  auto weights = pipeline::CheckpointWeights::Load(*ck);
  if (!weights.ok()) bench::Die(weights.status());
  // The weights in memory, as the store's host buffers hold them; the stage reads them there
  // (or, with --widen, from fp32 copies, as the CPU stage did before it computed from bf16).
  std::shared_ptr<pipeline::CheckpointWeights> source = std::move(*weights);
  pipeline::StageOptions so;
  so.device = device == "cuda" ? pipeline::Device::kCuda : pipeline::Device::kCpu;
  so.weights_owner = source;
  so.widen_weights = widen;
  const uint64_t rss_before = ResidentBytes();
  const double build_start = Now();
  auto stage = pipeline::Stage::Create(ck->config(), {0, ck->config().num_hidden_layers}, source->lookup(), so);
  const double build_s = Now() - build_start;
  if (!stage.ok()) bench::Die(stage.status());
  const uint64_t rss_stage = ResidentBytes() - rss_before;
  const double weight_bytes = static_cast<double>((*stage)->weight_bytes());

  std::vector<double> bw, rbw, b1, b16;
  DecodeRate(**stage, 1, 4, 1);  // warm up
  for (int r = 0; r < reps; ++r) {
    if (device == "cuda") {  // the device's memory: a device-to-device copy, bytes read and written
      auto gbw = tiers::gpu::DeviceCopyBandwidth(so.gpu_device, static_cast<uint64_t>(memcpy_mib) << 20, 3);
      if (!gbw.ok()) bench::Die(gbw.status());
      bw.push_back(*gbw);
      rbw.push_back(*gbw);
    } else {
      bw.push_back(MemcpyBandwidth(static_cast<uint64_t>(memcpy_mib) << 20, 3));
      rbw.push_back(ReadBandwidth(static_cast<uint64_t>(memcpy_mib) << 20, 3));
    }
    b1.push_back(DecodeRate(**stage, 1, static_cast<int>(steps), 1000 + r * 100));
    b16.push_back(DecodeRate(**stage, 16, static_cast<int>(steps / 4), 5000 + r * 100));
  }
  const double bandwidth = bench::Median(bw), rate1 = bench::Median(b1), rate16 = bench::Median(b16);
  const double bound = bandwidth / weight_bytes;
  const double read_bandwidth = bench::Median(rbw), read_bound = read_bandwidth / weight_bytes;
  std::printf("model %s (%s, %.1f MB of weights read per step%s), device %s\n", preset.c_str(),
              std::string(DTypeShortName(ck->config().torch_dtype)).c_str(), weight_bytes / 1e6,
              widen ? " as fp32 copies" : "", device.c_str());
  std::printf("stage built in %.1f ms (%.1f ms per GB of weights), %.1f MB resident beyond the weights' source\n",
              build_s * 1000, build_s * 1000 / (weight_bytes / 1e9), static_cast<double>(rss_stage) / 1e6);
  std::printf("memcpy bandwidth            %8.2f GB/s (%lld MiB buffers, median of %lld)\n", bandwidth / 1e9,
              static_cast<long long>(memcpy_mib), static_cast<long long>(reps));
  std::printf("read bandwidth, all cores   %8.2f GB/s\n", read_bandwidth / 1e9);
  std::printf("bound at batch 1            %8.1f tokens/s (memcpy), %.1f tokens/s (read)\n", bound, read_bound);
  std::printf("decode, batch 1             %8.1f tokens/s   %.2f of the memcpy bound, %.2f of the read bound\n", rate1,
              rate1 / bound, rate1 / read_bound);
  std::printf("decode, batch 16            %8.1f tokens/s   %.1fx batch 1\n", rate16, rate16 / rate1);
  nlohmann::json j = {{"bench", "executor_bench"},
                      {"preset", preset},
                      {"device", device},
                      {"weight_bytes", weight_bytes},
                      {"memcpy_gbps", bandwidth / 1e9},
                      {"bound_tokens_per_s", bound},
                      {"batch1_tokens_per_s", rate1},
                      {"batch16_tokens_per_s", rate16},
                      {"batch1_over_bound", rate1 / bound},
                      {"read_gbps", read_bandwidth / 1e9},
                      {"batch1_over_read_bound", rate1 / read_bound},
                      {"stage_build_s", build_s},
                      {"stage_build_ms_per_gb", build_s * 1000 / (weight_bytes / 1e9)},
                      {"stage_resident_bytes", rss_stage},
                      {"widen", widen}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}
