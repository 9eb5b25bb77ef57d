// config.json of the families as their owners publish them (Meta, Mistral AI, Qwen), read as
// transformers reads them; and the keys refused by name.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "modelcast/model/llama_config.h"

namespace modelcast::model {
namespace {

using nlohmann::json;

// meta-llama/Llama-3.1-8B-Instruct
const char* kLlama31_8B = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})";

// meta-llama/Llama-3.2-1B
const char* kLlama32_1B = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
  "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256})";

// mistralai/Mistral-7B-v0.1
const char* kMistral01 = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
  "sliding_window": 4096, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.34.0.dev0", "use_cache": true, "vocab_size": 32000})";

// mistralai/Mistral-7B-v0.3
const char* kMistral03 = R"({
  "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
  "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.42.0.dev0", "use_cache": true, "vocab_size": 32768})";

// Qwen/Qwen2.5-7B-Instruct
const char* kQwen25_7B = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
  "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
  "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": true, "use_sliding_window": false,
  "vocab_size": 152064})";

// Qwen/Qwen3-8B
const char* kQwen3_8B = R"({
  "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 12288,
  "max_position_embeddings": 40960, "max_window_layers": 36, "model_type": "qwen3",
  "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
  "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 151936})";

LlamaConfig Parse(const char* text) {
  auto c = LlamaConfig::FromJson(json::parse(text), "config.json");
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? *c : LlamaConfig{};
}

bool HasTensor(const LlamaConfig& c, const std::string& name) {
  for (const auto& t : c.ExpectedTensors()) {
    if (t.name == name) return true;
  }
  return false;
}

// Parameter counts as their model cards give them: the tensors each config implies, counted.
TEST(LlamaConfigTest, PublishedConfigsReadAsTheirFamiliesWithTheirParameterCounts) {
  const LlamaConfig l31 = Parse(kLlama31_8B);
  EXPECT_EQ(l31.family, Family::kLlama);
  EXPECT_EQ(l31.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(l31.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(l31.MaxPositions(), 131072);
  EXPECT_EQ(l31.ParameterCount(), 8030261248ull);
  EXPECT_EQ(l31.eos_token_id.value_or(0), 128001);

  const LlamaConfig l32 = Parse(kLlama32_1B);
  EXPECT_TRUE(l32.tie_word_embeddings);
  EXPECT_FALSE(HasTensor(l32, "lm_head.weight"));
  EXPECT_EQ(l32.ParameterCount(), 1235814400ull);

  const LlamaConfig m01 = Parse(kMistral01);
  EXPECT_EQ(m01.family, Family::kMistral);
  ASSERT_TRUE(m01.sliding_window.has_value());
  EXPECT_EQ(m01.MaxPositions(), 4096);  // within the window, attention is full
  EXPECT_EQ(m01.ParameterCount(), 7241732096ull);
  const LlamaConfig m03 = Parse(kMistral03);
  EXPECT_FALSE(m03.sliding_window.has_value());
  EXPECT_EQ(m03.MaxPositions(), 32768);
  EXPECT_EQ(m03.ParameterCount(), 7248023552ull);

  const LlamaConfig q25 = Parse(kQwen25_7B);
  EXPECT_EQ(q25.family, Family::kQwen2);
  EXPECT_FALSE(q25.sliding_window.has_value());  // use_sliding_window: false
  EXPECT_TRUE(HasTensor(q25, "model.layers.0.self_attn.q_proj.bias"));
  EXPECT_TRUE(HasTensor(q25, "model.layers.0.self_attn.v_proj.bias"));
  EXPECT_FALSE(HasTensor(q25, "model.layers.0.self_attn.o_proj.bias"));
  EXPECT_EQ(q25.ParameterCount(), 7615616512ull);
  // Qwen's long-context recipe adds yarn to the same config.
  json yarn = json::parse(kQwen25_7B);
  yarn["rope_scaling"] = {{"factor", 4.0}, {"original_max_position_embeddings", 32768}, {"type", "yarn"}};
  const auto q25y = LlamaConfig::FromJson(yarn, "config.json");
  ASSERT_TRUE(q25y.ok()) << q25y.status().ToString();
  EXPECT_EQ(q25y->rope_scaling.type, RopeScaling::Type::kYarn);
  EXPECT_EQ(q25y->MaxPositions(), 131072);
  EXPECT_NEAR(q25y->RopeAttentionFactor(), 0.1 * std::log(4.0) + 1, 1e-12);

  const LlamaConfig q3 = Parse(kQwen3_8B);
  EXPECT_EQ(q3.family, Family::kQwen3);
  EXPECT_EQ(q3.head_dim, 128);
  EXPECT_TRUE(q3.qk_norm);
  EXPECT_TRUE(HasTensor(q3, "model.layers.35.self_attn.k_norm.weight"));
  EXPECT_FALSE(HasTensor(q3, "model.layers.0.self_attn.q_proj.bias"));
  EXPECT_EQ(q3.ParameterCount(), 8190735360ull);
}

// What the parsed config writes is what it reads back.
TEST(LlamaConfigTest, EachFamilyRoundTripsThroughItsOwnKeys) {
  for (const char* text : {kLlama31_8B, kLlama32_1B, kMistral01, kMistral03, kQwen25_7B, kQwen3_8B}) {
    const LlamaConfig a = Parse(text);
    auto b = LlamaConfig::FromJson(a.ToJson(), "round trip");
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    EXPECT_EQ(b->ToJson(), a.ToJson());
    EXPECT_EQ(b->MaxPositions(), a.MaxPositions());
    EXPECT_EQ(b->RopeInvFreq(a.MaxPositions()), a.RopeInvFreq(a.MaxPositions()));
  }
}

// Llama 3.1's frequencies: the highest unchanged, the lowest divided by 8 (its wavelength is far
// beyond 8192 positions), the ones between mixed.
TEST(LlamaConfigTest, Llama3ScalingKeepsHighFrequenciesAndDividesLowOnes) {
  const LlamaConfig c = Parse(kLlama31_8B);
  const auto inv = c.RopeInvFreq(1);
  ASSERT_EQ(inv.size(), 64u);
  EXPECT_DOUBLE_EQ(inv[0], 1.0);
  const double plain_last = std::pow(500000.0, -126.0 / 128.0);
  EXPECT_NEAR(inv[63], plain_last / 8, plain_last * 1e-12);
  int mixed = 0;
  for (size_t i = 0; i < inv.size(); ++i) {
    const double plain = std::pow(500000.0, -2.0 * static_cast<double>(i) / 128.0);
    if (inv[i] < plain && inv[i] > plain / 8) mixed++;
  }
  EXPECT_GT(mixed, 0);
}

Status Refusal(json j) { return LlamaConfig::FromJson(j, "ck/config.json").status(); }

void ExpectRefused(const json& j, const std::string& key, const std::string& why) {
  Status st = Refusal(j);
  ASSERT_FALSE(st.ok()) << j.dump();
  EXPECT_NE(st.message().find("ck/config.json: key '" + key + "'"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find(why), std::string::npos) << st.message();
}

TEST(LlamaConfigTest, KeysThatWouldChangeTheOutputAreRefusedByName) {
  const json base = json::parse(kLlama31_8B);
  json j = base;
  j["quantization_config"] = {{"quant_method", "awq"}};
  ExpectRefused(j, "quantization_config", "quantized");
  j = base;
  j["final_logit_softcapping"] = 30.0;
  ExpectRefused(j, "final_logit_softcapping", "soft-capping");
  j = base;
  j["partial_rotary_factor"] = 0.5;
  ExpectRefused(j, "partial_rotary_factor", "partial rotary");
  j = base;
  j["partial_rotary_factor"] = 1.0;
  EXPECT_TRUE(Refusal(j).ok());
  j = base;
  j["auto_map"] = {{"AutoModelForCausalLM", "modeling_x.X"}};
  ExpectRefused(j, "auto_map", "modelling code");
  j = base;
  j["some_new_knob"] = 3;
  ExpectRefused(j, "some_new_knob", "not known to modelcast");
  j = base;
  j["hidden_act"] = "gelu";
  ExpectRefused(j, "hidden_act", "only silu");
  j = base;
  j["rope_scaling"]["rope_type"] = "longrope";
  ExpectRefused(j, "rope_scaling", "rope_type 'longrope' is not implemented");
  j = base;
  j["rope_scaling"]["beta_fast"] = 32;
  ExpectRefused(j, "rope_scaling.beta_fast", "not known for rope_type 'llama3'");
  j = base;
  j["rope_scaling"].erase("original_max_position_embeddings");
  ExpectRefused(j, "rope_scaling.original_max_position_embeddings", "missing");
  j = base;
  j["model_type"] = "gemma2";
  ExpectRefused(j, "model_type", "not a family modelcast serves");
  j = json::parse(kQwen3_8B);
  j["layer_types"] = {"full_attention", "chunked_attention"};
  ExpectRefused(j, "layer_types", "'chunked_attention' is not implemented");
  // Keys known not to matter, null values, and the keys a family's code ignores, pass.
  j = base;
  j["pad_token_id"] = 0;
  j["some_null_knob"] = nullptr;
  EXPECT_TRUE(Refusal(j).ok());
  for (auto k : kHarmlessConfigKeys) EXPECT_FALSE(k.empty());
}

// Qwen's sliding window applies only with use_sliding_window and on the layers past
// max_window_layers: then the positions served are the window's.
TEST(LlamaConfigTest, QwenSlidingWindowCountsOnlyWhereItApplies) {
  json j = json::parse(kQwen25_7B);
  j["use_sliding_window"] = true;
  j["sliding_window"] = 4096;
  EXPECT_EQ(LlamaConfig::FromJson(j, "c")->MaxPositions(), 32768);  // max_window_layers 28: no layer slides
  j["max_window_layers"] = 20;
  EXPECT_EQ(LlamaConfig::FromJson(j, "c")->MaxPositions(), 4096);
  j["layer_types"] = std::vector<std::string>(28, "full_attention");
  EXPECT_EQ(LlamaConfig::FromJson(j, "c")->MaxPositions(), 32768);
}

}  // namespace
}  // namespace modelcast::model
