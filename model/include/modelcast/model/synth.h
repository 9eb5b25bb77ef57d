// `modelcast synth`: Llama-architecture models (Llama, Mistral, Qwen2, Qwen3 layouts) in exactly the HF on-disk format, with weights
// from a seeded generator, for tests, demos and benchmarks.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>

#include "modelcast/common/dtype.h"
#include "modelcast/common/status.h"
#include "modelcast/model/llama_config.h"

namespace modelcast::model {

struct SynthOptions {
  std::string preset = "tiny";  // tiny (~2 MB bf16), small (~100 MB), medium (~1 GB)
  DType dtype = DType::kBF16;
  uint64_t seed = 0;
  // Overrides of the preset's shape.
  std::optional<int64_t> layers, hidden, intermediate, heads, kv_heads, vocab;
  bool tie_word_embeddings = false;
  // The family's layout and config keys: llama, mistral, qwen2 (q/k/v biases) or qwen3
  // (per-head q/k norms, explicit head_dim).
  std::string family = "llama";
  // config.json's rope_scaling as JSON text (e.g. {"rope_type": "llama3", ...}); empty: none.
  std::string rope_scaling;
  std::optional<int64_t> sliding_window, max_positions;
  // Split into shards of at most this many bytes (plus an index), as HF does for large
  // models. 0: one model.safetensors whatever the size.
  uint64_t shard_bytes = 0;
  bool replace = false;
};

// The preset's config before overrides; an unknown name is an error listing the presets.
Result<LlamaConfig> SynthPresetConfig(const std::string& preset);
// The preset with the options' overrides applied and validated.
Result<LlamaConfig> SynthConfig(const SynthOptions& options);

// Writes the model into `out` (atomically: a staging directory renamed at the end).
Status Synthesize(const SynthOptions& options, const std::filesystem::path& out);

// The values of one tensor, as Synthesize writes them (before conversion to the dtype):
// norm weights near 1, embeddings uniform with unit variance, linear weights uniform in
// +-1/sqrt(fan_in) (PyTorch's nn.Linear default), biases small. Deterministic in (seed, name).
void SynthTensorValues(const TensorSpec& spec, uint64_t seed, std::span<float> out);

}  // namespace modelcast::model
