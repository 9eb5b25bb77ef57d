#include "modelcast/model/llama_config.h"

#include "modelcast/common/file_util.h"

namespace modelcast::model {
namespace {

using nlohmann::json;

Status KeyError(const std::string& source, const std::string& key, const std::string& what) {
  return InvalidArgument(source + ": key '" + key + "': " + what);
}

Status GetInt(const json& j, const std::string& source, const char* key, bool required, int64_t* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    return required ? KeyError(source, key, "missing") : Status::Ok();
  }
  if (!it->is_number_integer()) return KeyError(source, key, "expected an integer, got " + it->dump());
  *out = it->get<int64_t>();
  return Status::Ok();
}

Status GetDouble(const json& j, const std::string& source, const char* key, double* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_number()) return KeyError(source, key, "expected a number, got " + it->dump());
  *out = it->get<double>();
  return Status::Ok();
}

Status GetBool(const json& j, const std::string& source, const char* key, bool* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_boolean()) return KeyError(source, key, "expected true or false, got " + it->dump());
  *out = it->get<bool>();
  return Status::Ok();
}

Status GetOptionalTokenId(const json& j, const std::string& source, const char* key, std::optional<int64_t>* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (it->is_array()) {  // Llama 3 lists several EOS ids; the first is the canonical one
    if (it->empty() || !(*it)[0].is_number_integer()) return KeyError(source, key, "expected an integer");
    *out = (*it)[0].get<int64_t>();
    return Status::Ok();
  }
  if (!it->is_number_integer()) return KeyError(source, key, "expected an integer, got " + it->dump());
  *out = it->get<int64_t>();
  return Status::Ok();
}

}  // namespace

uint64_t TensorSpec::NumElements() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

Result<LlamaConfig> LlamaConfig::FromJson(const json& j, const std::string& source) {
  if (!j.is_object()) return InvalidArgument(source + ": expected a JSON object");
  LlamaConfig c;
  if (auto it = j.find("architectures"); it != j.end() && it->is_array() && !it->empty() && (*it)[0].is_string()) {
    c.architecture = (*it)[0].get<std::string>();
  }
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) c.model_type = it->get<std::string>();
  if (c.model_type != "llama") {
    return KeyError(source, "model_type", "'" + c.model_type + "' is not a Llama-family model (expected 'llama')");
  }
  MC_RETURN_IF_ERROR(GetInt(j, source, "hidden_size", true, &c.hidden_size));
  MC_RETURN_IF_ERROR(GetInt(j, source, "intermediate_size", true, &c.intermediate_size));
  MC_RETURN_IF_ERROR(GetInt(j, source, "num_hidden_layers", true, &c.num_hidden_layers));
  MC_RETURN_IF_ERROR(GetInt(j, source, "num_attention_heads", true, &c.num_attention_heads));
  c.num_key_value_heads = c.num_attention_heads;
  MC_RETURN_IF_ERROR(GetInt(j, source, "num_key_value_heads", false, &c.num_key_value_heads));
  MC_RETURN_IF_ERROR(GetInt(j, source, "vocab_size", true, &c.vocab_size));
  MC_RETURN_IF_ERROR(GetInt(j, source, "max_position_embeddings", false, &c.max_position_embeddings));
  MC_RETURN_IF_ERROR(GetInt(j, source, "head_dim", false, &c.head_dim));
  MC_RETURN_IF_ERROR(GetDouble(j, source, "rms_norm_eps", &c.rms_norm_eps));
  MC_RETURN_IF_ERROR(GetDouble(j, source, "rope_theta", &c.rope_theta));
  MC_RETURN_IF_ERROR(GetBool(j, source, "tie_word_embeddings", &c.tie_word_embeddings));
  MC_RETURN_IF_ERROR(GetBool(j, source, "attention_bias", &c.attention_bias));
  MC_RETURN_IF_ERROR(GetBool(j, source, "mlp_bias", &c.mlp_bias));
  MC_RETURN_IF_ERROR(GetOptionalTokenId(j, source, "bos_token_id", &c.bos_token_id));
  MC_RETURN_IF_ERROR(GetOptionalTokenId(j, source, "eos_token_id", &c.eos_token_id));
  if (auto it = j.find("hidden_act"); it != j.end() && it->is_string()) c.hidden_act = it->get<std::string>();
  if (auto it = j.find("torch_dtype"); it != j.end() && !it->is_null()) {
    if (!it->is_string()) return KeyError(source, "torch_dtype", "expected a string");
    auto d = ParseModelDType(it->get<std::string>());
    if (!d.ok()) return KeyError(source, "torch_dtype", d.status().message());
    c.torch_dtype = *d;
  }
  if (c.head_dim == 0 && c.num_attention_heads > 0) c.head_dim = c.hidden_size / c.num_attention_heads;
  MC_RETURN_IF_ERROR(c.Validate(source));
  return c;
}

Result<LlamaConfig> LlamaConfig::FromFile(const std::filesystem::path& path) {
  MC_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, 16ull << 20));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument(path.string() + ": invalid JSON");
  return FromJson(j, path.string());
}

Status LlamaConfig::Validate(const std::string& source) const {
  auto positive = [&](const char* key, int64_t v, int64_t limit) -> Status {
    if (v <= 0) return KeyError(source, key, "must be positive, got " + std::to_string(v));
    if (v > limit)
      return KeyError(source, key, std::to_string(v) + " is beyond the supported " + std::to_string(limit));
    return Status::Ok();
  };
  MC_RETURN_IF_ERROR(positive("hidden_size", hidden_size, 1 << 20));
  MC_RETURN_IF_ERROR(positive("intermediate_size", intermediate_size, 1 << 22));
  MC_RETURN_IF_ERROR(positive("num_hidden_layers", num_hidden_layers, 4096));
  MC_RETURN_IF_ERROR(positive("num_attention_heads", num_attention_heads, 4096));
  MC_RETURN_IF_ERROR(positive("num_key_value_heads", num_key_value_heads, 4096));
  MC_RETURN_IF_ERROR(positive("head_dim", head_dim, 1 << 16));
  MC_RETURN_IF_ERROR(positive("vocab_size", vocab_size, 1 << 24));
  MC_RETURN_IF_ERROR(positive("max_position_embeddings", max_position_embeddings, 1 << 24));
  if (num_attention_heads % num_key_value_heads != 0) {
    return KeyError(source, "num_key_value_heads",
                    std::to_string(num_key_value_heads) + " does not divide num_attention_heads " +
                        std::to_string(num_attention_heads));
  }
  if (head_dim % 2 != 0) return KeyError(source, "head_dim", "must be even for rotary embeddings");
  if (!(rms_norm_eps > 0)) return KeyError(source, "rms_norm_eps", "must be positive");
  if (!(rope_theta > 0)) return KeyError(source, "rope_theta", "must be positive");
  return Status::Ok();
}

nlohmann::json LlamaConfig::ToJson() const {
  json j = {
      {"architectures", {architecture}},
      {"model_type", model_type},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"head_dim", head_dim},
      {"vocab_size", vocab_size},
      {"max_position_embeddings", max_position_embeddings},
      {"rms_norm_eps", rms_norm_eps},
      {"rope_theta", rope_theta},
      {"tie_word_embeddings", tie_word_embeddings},
      {"attention_bias", attention_bias},
      {"mlp_bias", mlp_bias},
      {"hidden_act", hidden_act},
      {"torch_dtype", std::string(DTypeTorchName(torch_dtype))},
  };
  if (bos_token_id) j["bos_token_id"] = *bos_token_id;
  if (eos_token_id) j["eos_token_id"] = *eos_token_id;
  return j;
}

std::vector<TensorSpec> LlamaConfig::ExpectedTensors() const {
  const int64_t h = hidden_size, q = num_attention_heads * head_dim, kv = num_key_value_heads * head_dim;
  const int64_t inter = intermediate_size;
  std::vector<TensorSpec> t;
  t.push_back({"model.embed_tokens.weight", {vocab_size, h}, TensorRole::kEmbedding, -1});
  for (int64_t l = 0; l < num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const int li = static_cast<int>(l);
    t.push_back({p + "input_layernorm.weight", {h}, TensorRole::kLayer, li});
    t.push_back({p + "self_attn.q_proj.weight", {q, h}, TensorRole::kLayer, li});
    if (attention_bias) t.push_back({p + "self_attn.q_proj.bias", {q}, TensorRole::kLayer, li});
    t.push_back({p + "self_attn.k_proj.weight", {kv, h}, TensorRole::kLayer, li});
    if (attention_bias) t.push_back({p + "self_attn.k_proj.bias", {kv}, TensorRole::kLayer, li});
    t.push_back({p + "self_attn.v_proj.weight", {kv, h}, TensorRole::kLayer, li});
    if (attention_bias) t.push_back({p + "self_attn.v_proj.bias", {kv}, TensorRole::kLayer, li});
    t.push_back({p + "self_attn.o_proj.weight", {h, q}, TensorRole::kLayer, li});
    if (attention_bias) t.push_back({p + "self_attn.o_proj.bias", {h}, TensorRole::kLayer, li});
    t.push_back({p + "post_attention_layernorm.weight", {h}, TensorRole::kLayer, li});
    t.push_back({p + "mlp.gate_proj.weight", {inter, h}, TensorRole::kLayer, li});
    if (mlp_bias) t.push_back({p + "mlp.gate_proj.bias", {inter}, TensorRole::kLayer, li});
    t.push_back({p + "mlp.up_proj.weight", {inter, h}, TensorRole::kLayer, li});
    if (mlp_bias) t.push_back({p + "mlp.up_proj.bias", {inter}, TensorRole::kLayer, li});
    t.push_back({p + "mlp.down_proj.weight", {h, inter}, TensorRole::kLayer, li});
    if (mlp_bias) t.push_back({p + "mlp.down_proj.bias", {h}, TensorRole::kLayer, li});
  }
  t.push_back({"model.norm.weight", {h}, TensorRole::kFinal, -1});
  if (!tie_word_embeddings) t.push_back({"lm_head.weight", {vocab_size, h}, TensorRole::kFinal, -1});
  return t;
}

uint64_t LlamaConfig::ParameterCount() const {
  uint64_t n = 0;
  for (const auto& t : ExpectedTensors()) n += t.NumElements();
  return n;
}

bool IsIgnorableTensor(const std::string& name) { return name.ends_with(".self_attn.rotary_emb.inv_freq"); }

}  // namespace modelcast::model
