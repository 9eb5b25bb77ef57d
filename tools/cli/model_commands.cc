// synth, prepare, inspect, verify, version.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "command.h"
#include "modelcast/text/tokenizer.h"
#include "modelcast/common/build_info.h"
#include "modelcast/common/progress.h"
#include "modelcast/common/units.h"
#include "modelcast/model/checkpoint.h"
#include "modelcast/model/package.h"
#include "modelcast/model/prepare.h"
#include "modelcast/model/synth.h"

namespace modelcast::cli {
namespace fs = std::filesystem;
using model::LlamaConfig;

namespace {

std::string DescribeConfig(const LlamaConfig& c, DType dtype) {
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "%s (%s), %lld layers, hidden %lld, %lld heads (%lld kv, dim %lld), mlp %lld, vocab %lld, %s%s",
                c.architecture.c_str(), std::string(model::FamilyName(c.family)).c_str(),
                (long long)c.num_hidden_layers, (long long)c.hidden_size, (long long)c.num_attention_heads,
                (long long)c.num_key_value_heads, (long long)c.head_dim, (long long)c.intermediate_size,
                (long long)c.vocab_size, std::string(DTypeShortName(dtype)).c_str(),
                c.tie_word_embeddings ? ", tied embeddings" : "");
  return buf;
}

// What a layer holds beyond Llama's plain projections, the rotation and the positions served.
std::string DescribeAttention(const LlamaConfig& c) {
  char theta[32];
  std::snprintf(theta, sizeof theta, "%g", c.rope_theta);
  std::string s = "rope theta " + std::string(theta) + ", scaling " + c.rope_scaling.Describe() + "; " +
                  std::to_string(c.MaxPositions()) + " positions";
  if (c.sliding_window) s += " (sliding window " + std::to_string(*c.sliding_window) + ")";
  if (c.attention_bias) s += "; q/k/v/o biases";
  if (c.qkv_bias) s += "; q/k/v biases";
  if (c.qk_norm) s += "; q/k norms per head";
  if (c.mlp_bias) s += "; mlp biases";
  return s;
}

nlohmann::json ConfigJson(const LlamaConfig& c) {
  nlohmann::json j = {{"family", model::FamilyName(c.family)},
                      {"rope_theta", c.rope_theta},
                      {"rope_scaling", c.rope_scaling.Describe()},
                      {"max_positions", c.MaxPositions()},
                      {"qkv_bias", c.q_bias()},
                      {"qk_norm", c.qk_norm}};
  if (c.sliding_window) j["sliding_window"] = *c.sliding_window;
  return j;
}

std::string FormatCount(uint64_t n) {
  char buf[32];
  if (n >= 1'000'000'000)
    std::snprintf(buf, sizeof(buf), "%.2f B", n / 1e9);
  else if (n >= 1'000'000)
    std::snprintf(buf, sizeof(buf), "%.2f M", n / 1e6);
  else
    std::snprintf(buf, sizeof(buf), "%llu", (unsigned long long)n);
  return buf;
}

Result<uint64_t> SliceBytesFromMib(double mib) {
  const double bytes = mib * 1024 * 1024;
  if (!(mib > 0) || bytes != std::floor(bytes) || static_cast<uint64_t>(bytes) % 4096 != 0 || bytes > (1ull << 30)) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%g", mib);
    return InvalidArgument(std::string("--slice-mib ") + buf +
                           " must be a multiple of 4 KiB (1/256 MiB) between 4 KiB and 1024 MiB");
  }
  return static_cast<uint64_t>(bytes);
}

}  // namespace

int RunSynth(const std::vector<std::string>& args) {
  model::SynthOptions o;
  std::string out, dtype = "bf16";
  int64_t seed = 0;
  std::optional<int64_t> shard_mib;
  ArgParser p("modelcast synth",
              "Writes a Llama-architecture model with seeded random weights, in exactly the Hugging\n"
              "Face on-disk format (config.json + safetensors).");
  p.Flag("preset", &o.preset, "tiny (~2 MB), small (~100 MB) or medium (~1 GB) at bf16 [tiny]");
  p.Flag("dtype", &dtype, "bf16, fp16 or fp32 [bf16]");
  p.Flag("seed", &seed, "generator seed [0]");
  p.Flag("out", &out, "output directory (must not exist unless --force)");
  p.Flag("layers", &o.layers, "override the number of layers");
  p.Flag("hidden", &o.hidden, "override hidden_size");
  p.Flag("intermediate", &o.intermediate, "override intermediate_size");
  p.Flag("heads", &o.heads, "override num_attention_heads");
  p.Flag("kv-heads", &o.kv_heads, "override num_key_value_heads");
  p.Flag("vocab", &o.vocab, "override vocab_size");
  p.Flag("tie", &o.tie_word_embeddings, "tie the LM head to the embeddings");
  p.Flag("family", &o.family, "llama, mistral, qwen2 or qwen3: the family's tensors and config keys [llama]");
  p.Flag("rope-scaling", &o.rope_scaling, "config.json's rope_scaling, as JSON (e.g. '{\"rope_type\": \"yarn\", \"factor\": 4}')");
  p.Flag("sliding-window", &o.sliding_window, "an active sliding window of this many positions");
  p.Flag("max-positions", &o.max_positions, "override max_position_embeddings");
  p.Flag("shard-mib", &shard_mib, "split into safetensors shards of at most this many MiB");
  p.Flag("force", &o.replace, "replace --out if it exists");
  if (int rc = ParseOrExit("synth", p, args); rc >= 0) return rc;
  if (out.empty()) return Fail("synth", InvalidArgument("--out is required"));
  auto d = ParseModelDType(dtype);
  if (!d.ok()) return Fail("synth", d.status());
  o.dtype = *d;
  if (seed < 0) return Fail("synth", InvalidArgument("--seed must be non-negative"));
  o.seed = static_cast<uint64_t>(seed);
  if (shard_mib) {
    if (*shard_mib <= 0) return Fail("synth", InvalidArgument("--shard-mib must be positive"));
    o.shard_bytes = static_cast<uint64_t>(*shard_mib) << 20;
  }
  auto config = model::SynthConfig(o);
  if (!config.ok()) return Fail("synth", config.status());
  Status s = model::Synthesize(o, out);
  if (!s.ok()) return Fail("synth", s);
  const uint64_t params = config->ParameterCount();
  std::printf("synthesized %s model (%s parameters, %s, seed %llu) into %s: %s\n", o.preset.c_str(),
              FormatCount(params).c_str(), dtype.c_str(), (unsigned long long)o.seed, out.c_str(),
              FormatBytes(params * DTypeSize(o.dtype)).c_str());
  return kExitOk;
}

int RunPrepare(const std::vector<std::string>& args) {
  std::string src, dst;
  model::PrepareOptions o;
  o.blocks = 0;
  double slice_mib = 16;
  ArgParser p("modelcast prepare",
              "Re-lays an HF checkpoint out into a modelcast package: one contiguous, 4 KiB-aligned file\n"
              "per block of layers, cut into checksummed slices, described by manifest.json. The\n"
              "package is written next to DST and renamed into place only when complete.");
  p.Positional("SRC", &src, "HF checkpoint directory (config.json + safetensors)");
  p.Positional("DST", &dst, "package directory to create");
  p.Flag("blocks", &o.blocks, "number of blocks (groups of consecutive layers) [min(layers, 4)]");
  p.Flag("slice-mib", &slice_mib, "slice size in MiB, a multiple of 4 KiB (e.g. 0.25) [16]");
  p.Flag("name", &o.name, "model name recorded in the manifest [SRC's directory name]");
  p.Flag("force", &o.replace, "replace DST if it exists");
  if (int rc = ParseOrExit("prepare", p, args); rc >= 0) return rc;
  auto slice = SliceBytesFromMib(slice_mib);
  if (!slice.ok()) return Fail("prepare", slice.status());
  o.slice_bytes = *slice;
  if (p.WasSet("blocks") && o.blocks < 1) return Fail("prepare", InvalidArgument("--blocks must be at least 1"));
  if (!p.WasSet("blocks")) {
    auto c = LlamaConfig::FromFile(fs::path(src) / "config.json");
    o.blocks = c.ok() ? std::min<int64_t>(4, c->num_hidden_layers) : 1;  // a bad config is reported by Prepare
  }
  std::unique_ptr<ProgressBar> bar;
  o.progress = [&](uint64_t n) {
    if (bar) bar->Add(n);
  };
  // The total is known once the checkpoint is read; size the bar from the tensor bytes.
  if (auto ck = model::HfCheckpoint::Open(src); ck.ok())
    bar = std::make_unique<ProgressBar>("prepare", ck->TensorBytes());
  auto r = model::Prepare(src, dst, o);
  if (bar) bar->Finish();
  if (!r.ok()) return Fail("prepare", r.status());
  const auto& m = r->manifest;
  std::printf("prepared '%s' into %s: %zu blocks, %zu slices of %s, %s in %.2f s (%s)\n", m.name.c_str(), dst.c_str(),
              m.blocks.size(), m.slices.size(), FormatBytes(m.slice_bytes).c_str(), FormatBytes(r->bytes).c_str(),
              r->seconds, FormatRate(r->bytes / std::max(r->seconds, 1e-9)).c_str());
  if (!r->skipped_tensors.empty())
    std::printf("skipped %zu tensor(s) the model does not use\n", r->skipped_tensors.size());
  return kExitOk;
}

namespace {

// What serves text for the model in `dir`: its tokenizer.json or tokenizer.model, or why it
// cannot, or the fallback.
std::string DescribeTokenizer(const std::filesystem::path& dir) {
  auto t = text::LoadTokenizer(dir);
  if (t.status().code() == StatusCode::kNotFound) {
    return "none (no tokenizer.json or tokenizer.model): text is served through the byte-level fallback";
  }
  if (!t.ok()) return "the tokenizer cannot be used: " + t.status().message() + " (send token ids)";
  std::error_code ec;
  return (*t)->Describe() + (std::filesystem::exists(dir / "tokenizer.json", ec) ? " (tokenizer.json)" : " (tokenizer.model)");
}

int InspectPackage(const model::Package& pkg, bool json) {
  const auto& m = pkg.manifest();
  if (json) {
    nlohmann::json j = {{"kind", "package"},
                        {"path", pkg.dir().string()},
                        {"name", m.name},
                        {"dtype", DTypeShortName(m.dtype)},
                        {"parameters", m.config.ParameterCount()},
                        {"layers", m.config.num_hidden_layers},
                        {"blocks", m.blocks.size()},
                        {"slices", m.slices.size()},
                        {"slice_bytes", m.slice_bytes},
                        {"total_bytes", m.TotalBytes()},
                        {"tokenizer", DescribeTokenizer(pkg.dir())},
                        {"config", ConfigJson(m.config)}};
    std::printf("%s\n", j.dump().c_str());
    return kExitOk;
  }
  std::printf("package    %s (%s v%d)\n", pkg.dir().c_str(), model::kPackageFormat, model::kPackageFormatVersion);
  std::printf("model      %s: %s\n", m.name.c_str(), DescribeConfig(m.config, m.dtype).c_str());
  std::printf("attention  %s\n", DescribeAttention(m.config).c_str());
  std::printf("parameters %s (%s)\n", FormatCount(m.config.ParameterCount()).c_str(),
              FormatBytes(m.TotalBytes()).c_str());
  std::printf("slices     %zu of %s\n", m.slices.size(), FormatBytes(m.slice_bytes).c_str());
  std::printf("tokenizer  %s\n", DescribeTokenizer(pkg.dir()).c_str());
  std::printf("\n  block  layers     bytes       slices       contents\n");
  for (const auto& b : m.blocks) {
    std::string contents = (b.embeddings ? "embeddings + " : "") + std::string("layers ") +
                           std::to_string(b.first_layer) + "-" + std::to_string(b.end_layer - 1) +
                           (b.head ? " + norm, lm_head" : "");
    std::string slices = std::to_string(b.first_slice) + "-" + std::to_string(b.first_slice + b.num_slices - 1);
    std::printf("  %-5u  %3lld-%-5lld  %-10s  %-11s  %s\n", b.index, (long long)b.first_layer,
                (long long)b.end_layer - 1, FormatBytes(b.bytes).c_str(), slices.c_str(), contents.c_str());
  }
  if (!m.skipped_tensors.empty()) std::printf("\nskipped tensors: %zu\n", m.skipped_tensors.size());
  return kExitOk;
}

int InspectCheckpoint(const model::HfCheckpoint& ck, bool json) {
  std::vector<std::string> unexpected;
  auto dtype = ck.CheckAgainstConfig(&unexpected);
  if (!dtype.ok()) return Fail("inspect", dtype.status());
  if (json) {
    nlohmann::json j = {{"kind", "hf-checkpoint"},
                        {"path", ck.dir().string()},
                        {"dtype", DTypeShortName(*dtype)},
                        {"parameters", ck.config().ParameterCount()},
                        {"layers", ck.config().num_hidden_layers},
                        {"files", ck.files().size()},
                        {"tensors", ck.tensors().size()},
                        {"tensor_bytes", ck.TensorBytes()},
                        {"unused_tensors", unexpected},
                        {"tokenizer", DescribeTokenizer(ck.dir())},
                        {"config", ConfigJson(ck.config())}};
    std::printf("%s\n", j.dump().c_str());
    return kExitOk;
  }
  std::printf("checkpoint %s (Hugging Face, %zu safetensors file%s)\n", ck.dir().c_str(), ck.files().size(),
              ck.files().size() == 1 ? "" : "s");
  std::printf("model      %s\n", DescribeConfig(ck.config(), *dtype).c_str());
  std::printf("attention  %s\n", DescribeAttention(ck.config()).c_str());
  std::printf("parameters %s (%s)\n", FormatCount(ck.config().ParameterCount()).c_str(),
              FormatBytes(ck.TensorBytes()).c_str());
  std::printf("tensors    %zu, every one the config implies present with its shape\n", ck.tensors().size());
  std::printf("tokenizer  %s\n", DescribeTokenizer(ck.dir()).c_str());
  if (!unexpected.empty())
    std::printf("unused     %zu tensor(s), first '%s'\n", unexpected.size(), unexpected.front().c_str());
  return kExitOk;
}

}  // namespace

int RunInspect(const std::vector<std::string>& args) {
  std::string path;
  bool json = false;
  ArgParser p("modelcast inspect", "Summarises a prepared package (manifest.json) or an HF checkpoint (config.json).");
  p.Positional("PATH", &path, "package or HF checkpoint directory");
  p.Flag("json", &json, "print one JSON object instead of the table");
  if (int rc = ParseOrExit("inspect", p, args); rc >= 0) return rc;
  std::error_code ec;
  if (fs::exists(fs::path(path) / model::kManifestFile, ec)) {
    auto pkg = model::Package::Open(path);
    if (!pkg.ok()) return Fail("inspect", pkg.status());
    return InspectPackage(*pkg, json);
  }
  auto ck = model::HfCheckpoint::Open(path);
  if (!ck.ok()) {
    if (ck.status().code() == StatusCode::kNotFound && !fs::exists(fs::path(path) / "config.json", ec)) {
      return Fail("inspect",
                  NotFound(path + " is neither a package (no manifest.json) nor an HF checkpoint (no config.json)"));
    }
    return Fail("inspect", ck.status());
  }
  return InspectCheckpoint(*ck, json);
}

int RunVerify(const std::vector<std::string>& args) {
  std::string path;
  ArgParser p("modelcast verify",
              "Re-reads every block file of a package and checks every slice's XXH3 checksum.\n"
              "Exits 1 and names the first bad slice when any is bad.");
  p.Positional("PKG", &path, "package directory");
  if (int rc = ParseOrExit("verify", p, args); rc >= 0) return rc;
  auto pkg = model::Package::Open(path);
  if (!pkg.ok()) return Fail("verify", pkg.status());
  const auto start = std::chrono::steady_clock::now();
  ProgressBar bar("verify", pkg->manifest().TotalBytes());
  auto report = pkg->Verify([&](uint64_t n) { bar.Add(n); });
  bar.Finish();
  if (!report.ok()) return Fail("verify", report.status());
  if (!report->bad.empty()) {
    std::string msg = pkg->Describe(report->bad.front());
    if (report->bad.size() > 1) msg += " (" + std::to_string(report->bad.size()) + " bad slices in all)";
    return Fail("verify", Corruption(msg));
  }
  if (!report->bad_files.empty()) return Fail("verify", Corruption(report->bad_files.front()));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("verified '%s': %llu slices, %s, %llu tokenizer file(s), all checksums match (%.2f s, %s)\n",
              pkg->manifest().name.c_str(), (unsigned long long)report->slices_checked,
              FormatBytes(report->bytes_checked).c_str(), (unsigned long long)report->files_checked, secs,
              FormatRate(report->bytes_checked / std::max(secs, 1e-9)).c_str());
  return kExitOk;
}

int RunVersion(const std::vector<std::string>& args) {
  ArgParser p("modelcast version", "Prints the version, what this build contains, and the GPUs this machine offers.");
  if (int rc = ParseOrExit("version", p, args); rc >= 0) return rc;
  const BuildInfo b = GetBuildInfo();
  const GpuProbe g = ProbeGpus();
  std::printf("modelcast %s (%s, %s)\n", b.version.c_str(), b.build_type.c_str(), b.compiler.c_str());
  std::printf("backends  verbs: %s   CUDA: %s\n", b.verbs ? "built" : "not built", b.cuda ? "built" : "not built");
  if (g.device_count > 0)
    std::printf("GPUs      %d\n", g.device_count);
  else
    std::printf("GPUs      none (%s)\n", g.reason.c_str());
  return kExitOk;
}

}  // namespace modelcast::cli
