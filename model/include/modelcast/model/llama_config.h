// The Hugging Face Llama config.json, and the tensors (HF names and shapes) it implies.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "modelcast/common/dtype.h"
#include "modelcast/common/status.h"

namespace modelcast::model {

// Where a tensor sits in the model: before the layers (embeddings), in layer N, or after
// the layers (final norm, LM head).
enum class TensorRole { kEmbedding, kLayer, kFinal };

struct TensorSpec {
  std::string name;            // HF name, e.g. "model.layers.3.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // row-major, as HF stores it ([out_features, in_features])
  TensorRole role = TensorRole::kLayer;
  int layer = -1;  // for kLayer

  uint64_t NumElements() const;
};

struct LlamaConfig {
  std::string architecture = "LlamaForCausalLM";
  std::string model_type = "llama";
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // hidden_size / num_attention_heads unless config.json says otherwise
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  std::string hidden_act = "silu";
  DType torch_dtype = DType::kBF16;
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> eos_token_id;

  // Reads an HF config.json. Errors name `source` and the offending key.
  static Result<LlamaConfig> FromJson(const nlohmann::json& j, const std::string& source);
  static Result<LlamaConfig> FromFile(const std::filesystem::path& path);
  // The HF config.json representation.
  nlohmann::json ToJson() const;

  // Positive sizes, heads dividing evenly, and so on.
  Status Validate(const std::string& source) const;

  // Every tensor the checkpoint must contain, in execution order: embeddings, then per layer
  // input_layernorm, q/k/v/o projections (+ biases), post_attention_layernorm, gate/up/down,
  // then the final norm and (unless tied) lm_head.
  std::vector<TensorSpec> ExpectedTensors() const;
  uint64_t ParameterCount() const;
};

// Old HF Llama checkpoints carry rotary-embedding buffers that are recomputed at load time.
bool IsIgnorableTensor(const std::string& name);

}  // namespace modelcast::model
