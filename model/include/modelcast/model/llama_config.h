// The Hugging Face config.json of the Llama-architecture families modelcast serves (Llama 1-3.3,
// Mistral, Qwen2/2.5, Qwen3 dense), and the tensors (HF names and shapes) it implies.
//
// Every key is either implemented (it is read and the executors compute what transformers
// computes for it), known not to change the forward pass (kHarmlessConfigKeys), or refused by
// name: a checkpoint is never served with a key silently ignored.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
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

// The family, from model_type: what differs between them is which projections carry biases,
// whether q and k are normalised per head, and which config keys they honour.
enum class Family { kLlama, kMistral, kQwen2, kQwen3 };
std::string_view FamilyName(Family f);  // "llama", "mistral", "qwen2", "qwen3" (the model_type)

// Rotary embedding scaling (config.json's rope_scaling), as transformers'
// modeling_rope_utils computes each type.
struct RopeScaling {
  enum class Type { kNone, kLinear, kDynamic, kLlama3, kYarn };
  Type type = Type::kNone;
  double factor = 1;
  double low_freq_factor = 1, high_freq_factor = 4;  // llama3
  int64_t original_max_position_embeddings = 0;      // llama3 (required), yarn (0: max_position_embeddings)
  double beta_fast = 32, beta_slow = 1;               // yarn
  std::optional<double> attention_factor, mscale, mscale_all_dim;  // yarn
  bool truncate = true;                                            // yarn

  std::string Describe() const;  // "none", "llama3 (factor 8, ...)"
};

// Keys of config.json known not to change the forward pass (training-only settings, metadata,
// generation defaults, tokenizer ids): read past. Any key neither here nor implemented is
// refused by name.
extern const std::vector<std::string_view> kHarmlessConfigKeys;

struct LlamaConfig {
  std::string architecture = "LlamaForCausalLM";
  std::string model_type = "llama";
  Family family = Family::kLlama;
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
  RopeScaling rope_scaling;
  // Attention limited to the last N positions (Mistral v0.1, Qwen with use_sliding_window):
  // for sequences no longer than N it is full attention, so modelcast serves them and refuses
  // longer ones (MaxPositions).
  std::optional<int64_t> sliding_window;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // Llama: biases on q, k, v and o
  bool qkv_bias = false;        // Qwen2: biases on q, k and v only
  bool qk_norm = false;         // Qwen3: RMSNorm of each head of q and k before the rotation
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

  // The longest sequence served: max_position_embeddings, times a linear, dynamic or yarn
  // scaling's factor, or a shorter sliding window.
  int64_t MaxPositions() const;
  // The rotary inverse frequencies (head_dim / 2 of them) for a forward call whose sequence
  // reaches `seq_len` tokens (only dynamic scaling depends on it), and the factor the rotation's
  // cos and sin are multiplied by (yarn's attention factor; 1 otherwise).
  std::vector<double> RopeInvFreq(int64_t seq_len) const;
  double RopeAttentionFactor() const;
  bool q_bias() const { return attention_bias || qkv_bias; }

  // Every tensor the checkpoint must contain, in execution order: embeddings, then per layer
  // input_layernorm, q/k/v/o projections (+ biases), post_attention_layernorm, gate/up/down,
  // then the final norm and (unless tied) lm_head.
  std::vector<TensorSpec> ExpectedTensors() const;
  uint64_t ParameterCount() const;
};

// Old HF Llama checkpoints carry rotary-embedding buffers that are recomputed at load time.
bool IsIgnorableTensor(const std::string& name);

}  // namespace modelcast::model
