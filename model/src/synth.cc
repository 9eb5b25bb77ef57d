#include "modelcast/model/synth.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <vector>

#include <nlohmann/json.hpp>

#include "modelcast/common/file_util.h"
#include "modelcast/model/checkpoint.h"
#include "modelcast/model/safetensors.h"

namespace modelcast::model {
namespace fs = std::filesystem;
namespace {

uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// xoshiro256+ : fast, good enough for weights (the low bits are not used).
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (auto& w : s_) w = SplitMix64(seed);
  }
  // Uniform in [-1, 1).
  float Symmetric() {
    const uint64_t r = Next();
    return static_cast<float>(static_cast<double>(r >> 40) * 0x1.0p-23 - 1.0);
  }

 private:
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t Next() {
    const uint64_t result = s_[0] + s_[3];
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }
  uint64_t s_[4];
};

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

bool EndsWith(const std::string& s, const char* suffix) { return s.ends_with(suffix); }

}  // namespace

Result<LlamaConfig> SynthPresetConfig(const std::string& preset) {
  LlamaConfig c;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  if (preset == "tiny") {  // ~1M parameters
    c.vocab_size = 1024, c.hidden_size = 128, c.intermediate_size = 352, c.num_hidden_layers = 4;
    c.num_attention_heads = 4, c.num_key_value_heads = 2, c.max_position_embeddings = 512;
  } else if (preset == "small") {  // ~52M parameters
    c.vocab_size = 8192, c.hidden_size = 512, c.intermediate_size = 1536, c.num_hidden_layers = 14;
    c.num_attention_heads = 8, c.num_key_value_heads = 4, c.max_position_embeddings = 2048;
  } else if (preset == "medium") {  // ~500M parameters
    c.vocab_size = 32000, c.hidden_size = 1536, c.intermediate_size = 4096, c.num_hidden_layers = 16;
    c.num_attention_heads = 12, c.num_key_value_heads = 4, c.max_position_embeddings = 4096;
  } else {
    return InvalidArgument("unknown preset '" + preset + "' (expected tiny, small or medium)");
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  return c;
}

Result<LlamaConfig> SynthConfig(const SynthOptions& o) {
  MC_ASSIGN_OR_RETURN(LlamaConfig c, SynthPresetConfig(o.preset));
  if (o.layers) c.num_hidden_layers = *o.layers;
  if (o.hidden) c.hidden_size = *o.hidden;
  if (o.intermediate) c.intermediate_size = *o.intermediate;
  if (o.heads) c.num_attention_heads = *o.heads;
  if (o.kv_heads)
    c.num_key_value_heads = *o.kv_heads;
  else if (o.heads)
    c.num_key_value_heads = std::max<int64_t>(1, *o.heads / 2);
  if (o.vocab) c.vocab_size = *o.vocab;
  if (o.hidden || o.heads) {
    if (c.num_attention_heads <= 0 || c.hidden_size % c.num_attention_heads != 0) {
      return InvalidArgument("--hidden " + std::to_string(c.hidden_size) + " is not divisible by --heads " +
                             std::to_string(c.num_attention_heads));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.num_key_value_heads > 0 && c.num_attention_heads % c.num_key_value_heads != 0) {
    return InvalidArgument("--kv-heads " + std::to_string(c.num_key_value_heads) + " does not divide --heads " +
                           std::to_string(c.num_attention_heads));
  }
  c.tie_word_embeddings = o.tie_word_embeddings;
  c.torch_dtype = o.dtype;
  if (o.max_positions) c.max_position_embeddings = *o.max_positions;
  MC_RETURN_IF_ERROR(c.Validate("synth options"));
  // The family's config keys, read back as a checkpoint's would be.
  nlohmann::json j = c.ToJson();
  if (o.family != "llama" && o.family != "mistral" && o.family != "qwen2" && o.family != "qwen3") {
    return InvalidArgument("--family '" + o.family + "' is not one of llama, mistral, qwen2, qwen3");
  }
  j["model_type"] = o.family;
  j.erase("architectures");
  if (o.family != "llama") j.erase("mlp_bias");
  if (o.family == "mistral" || o.family == "qwen2") j.erase("attention_bias");
  if (!o.rope_scaling.empty()) {
    nlohmann::json r = nlohmann::json::parse(o.rope_scaling, nullptr, /*allow_exceptions=*/false);
    if (r.is_discarded()) return InvalidArgument("--rope-scaling is not JSON: " + o.rope_scaling);
    j["rope_scaling"] = r;
  }
  if (o.sliding_window) {
    j["sliding_window"] = *o.sliding_window;
    if (o.family == "qwen2" || o.family == "qwen3") {
      j["use_sliding_window"] = true;
      j["max_window_layers"] = 0;
    }
  }
  return LlamaConfig::FromJson(j, "synth options");
}

void SynthTensorValues(const TensorSpec& spec, uint64_t seed, std::span<float> out) {
  Rng rng(seed ^ Fnv1a(spec.name));
  float center = 0, scale;
  if (EndsWith(spec.name, "norm.weight")) {
    center = 1.0f, scale = 0.1f;
  } else if (EndsWith(spec.name, ".bias")) {
    scale = 0.02f;
  } else if (spec.role == TensorRole::kEmbedding) {
    scale = std::sqrt(3.0f);  // unit variance
  } else {
    scale = 1.0f / std::sqrt(static_cast<float>(spec.shape.back()));  // +-1/sqrt(fan_in)
  }
  for (float& v : out) v = center + scale * rng.Symmetric();
}

Status Synthesize(const SynthOptions& options, const fs::path& out) {
  MC_ASSIGN_OR_RETURN(LlamaConfig config, SynthConfig(options));
  MC_ASSIGN_OR_RETURN(StagingDirectory staging, StagingDirectory::Create(out));
  const auto specs = config.ExpectedTensors();
  std::map<std::string, const TensorSpec*> by_name;
  for (const auto& s : specs) by_name[s.name] = &s;

  // Group tensors into shards in order, each at most shard_bytes (a bigger tensor gets its own).
  std::vector<std::vector<SafetensorsWriteSpec>> shards(1);
  uint64_t shard_size = 0, total = 0;
  for (const auto& s : specs) {
    const uint64_t n = s.NumElements() * DTypeSize(options.dtype);
    if (options.shard_bytes > 0 && shard_size > 0 && shard_size + n > options.shard_bytes) {
      shards.emplace_back();
      shard_size = 0;
    }
    shards.back().push_back({s.name, options.dtype, s.shape});
    shard_size += n;
    total += n;
  }
  std::vector<float> values;
  const TensorFiller fill = [&](const SafetensorsWriteSpec& w, std::span<uint8_t> dst) -> Status {
    const TensorSpec& spec = *by_name.at(w.name);
    values.resize(spec.NumElements());
    SynthTensorValues(spec, options.seed, values);
    switch (w.dtype) {
      case DType::kF32:
        std::memcpy(dst.data(), values.data(), dst.size());
        break;
      case DType::kBF16:
        for (size_t i = 0; i < values.size(); ++i) {
          const uint16_t h = FloatToBf16(values[i]);
          std::memcpy(dst.data() + 2 * i, &h, 2);
        }
        break;
      case DType::kF16:
        for (size_t i = 0; i < values.size(); ++i) {
          const uint16_t h = FloatToF16(values[i]);
          std::memcpy(dst.data() + 2 * i, &h, 2);
        }
        break;
      default:
        return InvalidArgument("synth supports bf16, fp16 and fp32");
    }
    return Status::Ok();
  };
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    std::string file = kHfSingleFile;
    if (shards.size() > 1) {
      char buf[64];
      std::snprintf(buf, sizeof(buf), "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
      file = buf;
      for (const auto& w : shards[i]) weight_map[w.name] = file;
    }
    MC_RETURN_IF_ERROR(WriteSafetensors(staging.path() / file, shards[i], metadata, fill));
  }
  if (shards.size() > 1) {
    nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    MC_RETURN_IF_ERROR(WriteFileAtomic(staging.path() / kHfIndexFile, index.dump(2) + "\n"));
  }
  nlohmann::json cj = config.ToJson();
  cj["modelcast_synth"] = {{"preset", options.preset}, {"seed", options.seed}};
  MC_RETURN_IF_ERROR(WriteFileAtomic(staging.path() / "config.json", cj.dump(2) + "\n"));
  // Make the shard files durable before the directory appears under its final name.
  for (const auto& entry : fs::directory_iterator(staging.path())) {
    MC_ASSIGN_OR_RETURN(File f, File::OpenRead(entry.path()));
    MC_RETURN_IF_ERROR(f.Sync());
  }
  return staging.Commit(options.replace);
}

}  // namespace modelcast::model
