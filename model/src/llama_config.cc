#include "modelcast/model/llama_config.h"

#include "modelcast/common/file_util.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

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

std::string_view FamilyName(Family f) {
  switch (f) {
    case Family::kLlama: return "llama";
    case Family::kMistral: return "mistral";
    case Family::kQwen2: return "qwen2";
    case Family::kQwen3: return "qwen3";
  }
  return "?";
}

const std::vector<std::string_view> kHarmlessConfigKeys = {
    // Metadata and the library's own bookkeeping.
    "_name_or_path", "transformers_version", "torch_dtype_note", "name_or_path", "_attn_implementation_autoset",
    "model_name", "modelcast_synth",
    // Training only: dropout is off at inference, initialisation and tensor-parallel slicing do not
    // change a trained model's output (pretraining_tp's slices sum to the same product).
    "attention_dropout", "hidden_dropout", "initializer_range", "pretraining_tp", "use_cache",
    // Token ids the tokenizer and generation use; the forward pass does not read them.
    "pad_token_id", "sep_token_id", "decoder_start_token_id",
    // Output plumbing of the Python library.
    "output_attentions", "output_hidden_states", "return_dict", "is_encoder_decoder", "is_decoder",
    "tokenizer_class", "id2label", "label2id", "problem_type", "task_specific_params"};

namespace {

// The keys read below: implemented.
const std::set<std::string_view> kImplementedKeys = {
    "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "vocab_size", "max_position_embeddings", "head_dim", "rms_norm_eps", "rope_theta",
    "rope_scaling", "rope_parameters", "partial_rotary_factor" /* 1 only: Unsupported refuses others */,
    "tie_word_embeddings", "attention_bias", "mlp_bias", "bos_token_id",
    "eos_token_id", "hidden_act", "torch_dtype", "dtype", "sliding_window", "use_sliding_window",
    "max_window_layers", "layer_types"};

// Keys that change the forward pass in ways modelcast does not implement: refused, saying why.
std::optional<std::string> Unsupported(const std::string& key, const json& v) {
  if (v.is_null()) return std::nullopt;
  if (key == "quantization_config") return "quantized checkpoints are not supported (serve the bf16 or fp16 weights)";
  if (key == "attn_logit_softcapping" || key == "final_logit_softcapping") return "logit soft-capping is not implemented";
  if (key == "partial_rotary_factor" && !(v.is_number() && v.get<double>() == 1.0)) {
    return "a partial rotary embedding is not implemented";
  }
  if (key == "auto_map") return "the checkpoint names modelling code of its own, which modelcast does not run";
  return std::nullopt;
}

Status ParseRopeScaling(const json& r, const std::string& source, const std::string& key, RopeScaling* out) {
  if (!r.is_object()) return KeyError(source, key, "expected an object or null, got " + r.dump());
  std::string type;
  if (auto it = r.find("rope_type"); it != r.end() && it->is_string()) {
    type = it->get<std::string>();
  } else if (auto it2 = r.find("type"); it2 != r.end() && it2->is_string()) {
    type = it2->get<std::string>();
  } else {
    return KeyError(source, key, "names no rope_type");
  }
  std::set<std::string> allowed = {"rope_type", "type", "rope_theta"};
  RopeScaling s;
  auto number = [&](const char* k, bool required, double* v) -> Status {
    allowed.insert(k);
    auto it = r.find(k);
    if (it == r.end() || it->is_null()) {
      return required ? KeyError(source, key + "." + k, "missing (rope_type " + type + " needs it)") : Status::Ok();
    }
    if (!it->is_number()) return KeyError(source, key + "." + k, "expected a number, got " + it->dump());
    *v = it->get<double>();
    return Status::Ok();
  };
  auto optional_number = [&](const char* k, std::optional<double>* v) -> Status {
    double x = 0;
    allowed.insert(k);
    if (!r.contains(k) || r.at(k).is_null()) return Status::Ok();
    MC_RETURN_IF_ERROR(number(k, true, &x));
    *v = x;
    return Status::Ok();
  };
  if (type == "default") {
    s.type = RopeScaling::Type::kNone;
  } else if (type == "linear" || type == "dynamic") {
    s.type = type == "linear" ? RopeScaling::Type::kLinear : RopeScaling::Type::kDynamic;
    MC_RETURN_IF_ERROR(number("factor", true, &s.factor));
  } else if (type == "llama3") {
    s.type = RopeScaling::Type::kLlama3;
    double original = 0;
    MC_RETURN_IF_ERROR(number("factor", true, &s.factor));
    MC_RETURN_IF_ERROR(number("low_freq_factor", true, &s.low_freq_factor));
    MC_RETURN_IF_ERROR(number("high_freq_factor", true, &s.high_freq_factor));
    MC_RETURN_IF_ERROR(number("original_max_position_embeddings", true, &original));
    s.original_max_position_embeddings = static_cast<int64_t>(original);
    if (!(s.high_freq_factor > s.low_freq_factor) || !(s.low_freq_factor > 0)) {
      return KeyError(source, key, "llama3 needs 0 < low_freq_factor < high_freq_factor");
    }
  } else if (type == "yarn") {
    s.type = RopeScaling::Type::kYarn;
    double original = 0;
    MC_RETURN_IF_ERROR(number("factor", true, &s.factor));
    MC_RETURN_IF_ERROR(number("original_max_position_embeddings", false, &original));
    s.original_max_position_embeddings = static_cast<int64_t>(original);
    MC_RETURN_IF_ERROR(optional_number("attention_factor", &s.attention_factor));
    MC_RETURN_IF_ERROR(optional_number("mscale", &s.mscale));
    MC_RETURN_IF_ERROR(optional_number("mscale_all_dim", &s.mscale_all_dim));
    // transformers: `rope_scaling.get("beta_fast") or 32`: a 0 takes the default too.
    std::optional<double> fast, slow;
    MC_RETURN_IF_ERROR(optional_number("beta_fast", &fast));
    MC_RETURN_IF_ERROR(optional_number("beta_slow", &slow));
    if (fast && *fast != 0) s.beta_fast = *fast;
    if (slow && *slow != 0) s.beta_slow = *slow;
    allowed.insert("truncate");
    if (auto it = r.find("truncate"); it != r.end() && !it->is_null()) {
      if (!it->is_boolean()) return KeyError(source, key + ".truncate", "expected true or false");
      s.truncate = it->get<bool>();
    }
  } else {
    return KeyError(source, key,
                    "rope_type '" + type + "' is not implemented (implemented: default, linear, dynamic, llama3, yarn)");
  }
  for (const auto& [k, v] : r.items()) {
    if (!allowed.count(k)) {
      return KeyError(source, key + "." + k, "not known for rope_type '" + type + "': it may change the rotation");
    }
  }
  if (s.type != RopeScaling::Type::kNone && !(s.factor > 0)) return KeyError(source, key + ".factor", "must be positive");
  *out = s;
  return Status::Ok();
}

}  // namespace

std::string RopeScaling::Describe() const {
  auto num = [](double v) {
    char b[32];
    std::snprintf(b, sizeof b, "%g", v);
    return std::string(b);
  };
  switch (type) {
    case Type::kNone: return "none";
    case Type::kLinear: return "linear (factor " + num(factor) + ")";
    case Type::kDynamic: return "dynamic NTK (factor " + num(factor) + ")";
    case Type::kLlama3:
      return "llama3 (factor " + num(factor) + ", low_freq_factor " + num(low_freq_factor) + ", high_freq_factor " +
             num(high_freq_factor) + ", original " + std::to_string(original_max_position_embeddings) + ")";
    case Type::kYarn:
      return "yarn (factor " + num(factor) +
             (original_max_position_embeddings ? ", original " + std::to_string(original_max_position_embeddings) : "") +
             (attention_factor ? ", attention_factor " + num(*attention_factor) : "") + ")";
  }
  return "?";
}

Result<LlamaConfig> LlamaConfig::FromJson(const json& j, const std::string& source) {
  if (!j.is_object()) return InvalidArgument(source + ": expected a JSON object");
  LlamaConfig c;
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) c.model_type = it->get<std::string>();
  if (c.model_type == "llama") {
    c.family = Family::kLlama;
  } else if (c.model_type == "mistral") {
    c.family = Family::kMistral;
  } else if (c.model_type == "qwen2") {
    c.family = Family::kQwen2;
  } else if (c.model_type == "qwen3") {
    c.family = Family::kQwen3;
  } else {
    return KeyError(source, "model_type",
                    "'" + c.model_type + "' is not a family modelcast serves (llama, mistral, qwen2, qwen3)");
  }
  c.architecture = c.family == Family::kLlama     ? "LlamaForCausalLM"
                   : c.family == Family::kMistral ? "MistralForCausalLM"
                   : c.family == Family::kQwen2   ? "Qwen2ForCausalLM"
                                                  : "Qwen3ForCausalLM";
  if (auto it = j.find("architectures"); it != j.end() && it->is_array() && !it->empty() && (*it)[0].is_string()) {
    c.architecture = (*it)[0].get<std::string>();
  }
  // Every key: implemented, harmless, or refused by name.
  for (const auto& [key, value] : j.items()) {
    if (auto why = Unsupported(key, value)) return KeyError(source, key, *why);
    if (kImplementedKeys.count(key) || value.is_null()) continue;
    if (std::find(kHarmlessConfigKeys.begin(), kHarmlessConfigKeys.end(), key) != kHarmlessConfigKeys.end()) continue;
    return KeyError(source, key,
                    "not known to modelcast: it may change the model's output, so the checkpoint is refused");
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
  // Biases and norms as each family's modelling code places them (it ignores the keys it does
  // not read: Mistral's and Qwen2's projections have fixed biases).
  if (c.family == Family::kLlama || c.family == Family::kQwen3) {
    MC_RETURN_IF_ERROR(GetBool(j, source, "attention_bias", &c.attention_bias));
  }
  if (c.family == Family::kLlama) MC_RETURN_IF_ERROR(GetBool(j, source, "mlp_bias", &c.mlp_bias));
  c.qkv_bias = c.family == Family::kQwen2;
  c.qk_norm = c.family == Family::kQwen3;
  MC_RETURN_IF_ERROR(GetOptionalTokenId(j, source, "bos_token_id", &c.bos_token_id));
  MC_RETURN_IF_ERROR(GetOptionalTokenId(j, source, "eos_token_id", &c.eos_token_id));
  if (auto it = j.find("hidden_act"); it != j.end() && !it->is_null()) {
    if (!it->is_string() || it->get<std::string>() != "silu") {
      return KeyError(source, "hidden_act", it->dump() + " is not implemented (only silu)");
    }
  }
  for (const char* key : {"torch_dtype", "dtype"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    if (!it->is_string()) return KeyError(source, key, "expected a string");
    auto d = ParseModelDType(it->get<std::string>());
    if (!d.ok()) return KeyError(source, key, d.status().message());
    c.torch_dtype = *d;
  }
  if (c.head_dim == 0 && c.num_attention_heads > 0) c.head_dim = c.hidden_size / c.num_attention_heads;
  // Rotary scaling: rope_scaling, or transformers 5's rope_parameters (which may carry the theta).
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    if (it->is_object() && it->contains("rope_theta")) {
      MC_RETURN_IF_ERROR(GetDouble(*it, source + ": " + key, "rope_theta", &c.rope_theta));
    }
    MC_RETURN_IF_ERROR(ParseRopeScaling(*it, source, key, &c.rope_scaling));
  }
  // Sliding-window attention, where the family's modelling code applies it.
  int64_t window = 0;
  bool has_window = false;
  if (auto it = j.find("sliding_window"); it != j.end() && !it->is_null()) {
    MC_RETURN_IF_ERROR(GetInt(j, source, "sliding_window", true, &window));
    has_window = true;
  }
  if (c.family == Family::kMistral) {
    if (has_window) c.sliding_window = window;
  } else if (c.family == Family::kQwen2 || c.family == Family::kQwen3) {
    bool use = false;
    MC_RETURN_IF_ERROR(GetBool(j, source, "use_sliding_window", &use));
    int64_t max_window_layers = 28;  // Qwen2Config's and Qwen3Config's default
    MC_RETURN_IF_ERROR(GetInt(j, source, "max_window_layers", false, &max_window_layers));
    bool any_sliding = use && max_window_layers < c.num_hidden_layers;
    if (auto it = j.find("layer_types"); it != j.end() && !it->is_null()) {
      if (!it->is_array()) return KeyError(source, "layer_types", "expected a list");
      any_sliding = false;
      for (const auto& t : *it) {
        const std::string name = t.is_string() ? t.get<std::string>() : t.dump();
        if (name == "sliding_attention") {
          any_sliding = true;
        } else if (name != "full_attention") {
          return KeyError(source, "layer_types", "layer type '" + name + "' is not implemented");
        }
      }
      any_sliding = any_sliding && use;
    }
    if (any_sliding && has_window) c.sliding_window = window;
  }
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
  if (sliding_window && *sliding_window <= 0) return KeyError(source, "sliding_window", "must be positive");
  if (rope_scaling.type != RopeScaling::Type::kNone && !(rope_scaling.factor > 0)) {
    return KeyError(source, "rope_scaling", "factor must be positive");
  }
  if (rope_scaling.type == RopeScaling::Type::kLlama3 && rope_scaling.original_max_position_embeddings <= 0) {
    return KeyError(source, "rope_scaling", "llama3 needs original_max_position_embeddings > 0");
  }
  return Status::Ok();
}

int64_t LlamaConfig::MaxPositions() const {
  // Scaled rotations reach further than max_position_embeddings, as serving systems count them
  // (vLLM's rule): linear and dynamic by their factor, yarn its original context times its
  // factor; llama3 configs state their reach in max_position_embeddings already.
  int64_t reach = max_position_embeddings;
  const auto& r = rope_scaling;
  if (r.factor > 1) {
    if (r.type == RopeScaling::Type::kLinear || r.type == RopeScaling::Type::kDynamic) {
      reach = static_cast<int64_t>(static_cast<double>(max_position_embeddings) * r.factor);
    } else if (r.type == RopeScaling::Type::kYarn) {
      const int64_t original =
          r.original_max_position_embeddings > 0 ? r.original_max_position_embeddings : max_position_embeddings;
      reach = std::max(max_position_embeddings, static_cast<int64_t>(static_cast<double>(original) * r.factor));
    }
  }
  return sliding_window ? std::min(reach, *sliding_window) : reach;
}

// As transformers' modeling_rope_utils computes each type (in float64 here).
std::vector<double> LlamaConfig::RopeInvFreq(int64_t seq_len) const {
  const int64_t dim = head_dim;
  const auto& r = rope_scaling;
  double base = rope_theta;
  if (r.type == RopeScaling::Type::kDynamic) {
    // NTK: the base grows with the sequence past max_position_embeddings.
    const double len = static_cast<double>(std::max(seq_len, max_position_embeddings));
    const double mp = static_cast<double>(max_position_embeddings);
    base *= std::pow(r.factor * len / mp - (r.factor - 1), static_cast<double>(dim) / static_cast<double>(dim - 2));
  }
  std::vector<double> inv(static_cast<size_t>(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) {
    inv[i] = 1.0 / std::pow(base, static_cast<double>(2 * i) / static_cast<double>(dim));
  }
  switch (r.type) {
    case RopeScaling::Type::kNone:
    case RopeScaling::Type::kDynamic:
      break;
    case RopeScaling::Type::kLinear:
      for (double& f : inv) f /= r.factor;
      break;
    case RopeScaling::Type::kLlama3: {
      const double old_len = static_cast<double>(r.original_max_position_embeddings);
      const double low_wavelen = old_len / r.low_freq_factor, high_wavelen = old_len / r.high_freq_factor;
      for (double& f : inv) {
        const double wavelen = 2 * M_PI / f;
        if (wavelen > low_wavelen) {
          f /= r.factor;  // low frequencies: interpolated
        } else if (!(wavelen < high_wavelen)) {
          // between: a smooth mix of the two
          const double smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
          f = (1 - smooth) * f / r.factor + smooth * f;
        }
      }
      break;
    }
    case RopeScaling::Type::kYarn: {
      const double original = static_cast<double>(
          r.original_max_position_embeddings > 0 ? r.original_max_position_embeddings : max_position_embeddings);
      auto correction_dim = [&](double rotations) {
        return static_cast<double>(dim) * std::log(original / (rotations * 2 * M_PI)) / (2 * std::log(rope_theta));
      };
      double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
      if (r.truncate) low = std::floor(low), high = std::ceil(high);
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(dim - 1));
      if (low == high) high += 0.001;
      for (int64_t i = 0; i < dim / 2; ++i) {
        const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
        const double extrapolation = 1 - ramp;  // 1: keep the frequency, 0: interpolate it
        const double pos_freq = std::pow(rope_theta, static_cast<double>(2 * i) / static_cast<double>(dim));
        inv[i] = 1.0 / (r.factor * pos_freq) * (1 - extrapolation) + 1.0 / pos_freq * extrapolation;
      }
      break;
    }
  }
  return inv;
}

double LlamaConfig::RopeAttentionFactor() const {
  const auto& r = rope_scaling;
  if (r.type != RopeScaling::Type::kYarn) return 1.0;
  if (r.attention_factor) return *r.attention_factor;
  auto mscale = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
  if (r.mscale && r.mscale_all_dim && *r.mscale != 0 && *r.mscale_all_dim != 0) {
    return mscale(r.factor, *r.mscale) / mscale(r.factor, *r.mscale_all_dim);
  }
  return mscale(r.factor, 1);
}

nlohmann::json LlamaConfig::ToJson() const {
  json j = {
      {"architectures", {architecture}},
      {"model_type", std::string(FamilyName(family))},
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
  // The keys each family's modelling code reads, so that FromJson gives this config back.
  if (family == Family::kMistral || family == Family::kQwen2) j.erase("attention_bias");
  if (family != Family::kLlama) j.erase("mlp_bias");
  if (family == Family::kMistral) {
    j["sliding_window"] = sliding_window ? json(*sliding_window) : json(nullptr);
  } else if (family == Family::kQwen2 || family == Family::kQwen3) {
    j["use_sliding_window"] = sliding_window.has_value();
    j["sliding_window"] = sliding_window ? json(*sliding_window) : json(nullptr);
    j["max_window_layers"] = sliding_window ? 0 : num_hidden_layers;
  }
  const auto& r = rope_scaling;
  if (r.type != RopeScaling::Type::kNone) {
    json rs = {{"factor", r.factor}};
    switch (r.type) {
      case RopeScaling::Type::kLinear: rs["rope_type"] = "linear"; break;
      case RopeScaling::Type::kDynamic: rs["rope_type"] = "dynamic"; break;
      case RopeScaling::Type::kLlama3:
        rs["rope_type"] = "llama3";
        rs["low_freq_factor"] = r.low_freq_factor;
        rs["high_freq_factor"] = r.high_freq_factor;
        rs["original_max_position_embeddings"] = r.original_max_position_embeddings;
        break;
      case RopeScaling::Type::kYarn:
        rs["rope_type"] = "yarn";
        if (r.original_max_position_embeddings) rs["original_max_position_embeddings"] = r.original_max_position_embeddings;
        rs["beta_fast"] = r.beta_fast;
        rs["beta_slow"] = r.beta_slow;
        if (r.attention_factor) rs["attention_factor"] = *r.attention_factor;
        if (r.mscale) rs["mscale"] = *r.mscale;
        if (r.mscale_all_dim) rs["mscale_all_dim"] = *r.mscale_all_dim;
        rs["truncate"] = r.truncate;
        break;
      case RopeScaling::Type::kNone: break;
    }
    j["rope_scaling"] = rs;
  }
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
    if (q_bias()) t.push_back({p + "self_attn.q_proj.bias", {q}, TensorRole::kLayer, li});
    t.push_back({p + "self_attn.k_proj.weight", {kv, h}, TensorRole::kLayer, li});
    if (q_bias()) t.push_back({p + "self_attn.k_proj.bias", {kv}, TensorRole::kLayer, li});
    t.push_back({p + "self_attn.v_proj.weight", {kv, h}, TensorRole::kLayer, li});
    if (q_bias()) t.push_back({p + "self_attn.v_proj.bias", {kv}, TensorRole::kLayer, li});
    if (qk_norm) {
      t.push_back({p + "self_attn.q_norm.weight", {head_dim}, TensorRole::kLayer, li});
      t.push_back({p + "self_attn.k_norm.weight", {head_dim}, TensorRole::kLayer, li});
    }
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
