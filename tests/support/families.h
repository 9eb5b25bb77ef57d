// The families modelcast serves (Llama, Mistral, Qwen2, Qwen3) and every rope_scaling type, as
// synthetic models, and the checks every stage kind (CPU, CUDA) passes on them against the
// float64 reference: prefill and token-by-token decode, whole and split into 1 to 4 stages, and
// past 8,192 positions where llama3, yarn and dynamic scaling change the frequencies.
#pragma once

#include <gtest/gtest.h>

#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "modelcast/pipeline/pipeline.h"
#include "support/models.h"
#include "support/stage_reference.h"

namespace modelcast::pipeline::testing_support {

struct Variant {
  const char* name;
  const char* family;
  const char* rope;  // rope_scaling JSON, or ""
  bool tie = false;
  int64_t max_positions = 0;  // max_position_embeddings (0: the preset's)
  int64_t reach = 0;          // the positions it serves, scaling included
};

inline const Variant kVariants[] = {
    {"llama", "llama", ""},
    {"llama31", "llama",
     R"({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64})"},
    {"llama32_tied", "llama",
     R"({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64})",
     true},
    {"llama_linear", "llama", R"({"type": "linear", "factor": 4.0})"},
    {"llama_dynamic", "llama", R"({"type": "dynamic", "factor": 2.0})"},
    {"mistral", "mistral", ""},
    {"qwen2", "qwen2", ""},
    {"qwen25_tied_yarn", "qwen2", R"({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64})", true},
    {"qwen3", "qwen3", ""},
    {"qwen3_yarn", "qwen3",
     R"({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 16,
         "attention_factor": 1.2})"},
};

inline const Variant kLong[] = {
    {"llama31", "llama",
     R"({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 8192})",
     false, 16384, 16384},
    // Qwen2.5's long-context recipe: max_position_embeddings stays the original context.
    {"qwen2_yarn", "qwen2", R"({"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8192})", false, 8192,
     16384},
    // Past max_position_embeddings the base grows with the sequence, call by call.
    {"llama_dynamic", "llama", R"({"type": "dynamic", "factor": 2.0})", false, 8192, 16384},
};

inline void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }
inline std::string VariantName(const ::testing::TestParamInfo<Variant>& i) { return i.param.name; }

inline model::SynthOptions Options(const Variant& v, uint64_t seed) {
  auto o = ::modelcast::testing::Tiny(DType::kBF16, seed);
  o.family = v.family;
  o.rope_scaling = v.rope;
  o.tie_word_embeddings = v.tie;
  return o;
}

// The model cut into 1 to 4 stages, the activations handed on: the last position's logits as
// the reference computes them.
inline void ExpectSplitMatchesReference(const Variant& v, StageOptions options = {}, double tolerance = 1e-5) {
  auto m = MakeModel(Options(v, 22));
  const auto ref = ::modelcast::testing::ReferenceForward(m->ref, std::vector<int>(kPrompt.begin(), kPrompt.end()));
  for (int k = 1; k <= 4; ++k) {
    auto ranges = SplitLayers(m->config.num_hidden_layers, k);
    ASSERT_TRUE(ranges.ok());
    StepInput in;
    in.items = {{3, 0, static_cast<int32_t>(kPrompt.size())}};
    in.tokens = kPrompt;
    StepOutput out;
    for (const auto& r : *ranges) {
      auto stage = Stage::Create(m->config, r, m->weights->lookup(), options);
      ASSERT_TRUE(stage.ok()) << stage.status().ToString();
      ASSERT_TRUE((*stage)->Forward(in, &out).ok());
      in.tokens.clear();
      in.hidden = out.hidden;
    }
    EXPECT_LT(RelativeError(out.logits, ref.logits.back()), tolerance) << k << " stage(s)";
  }
}

// A prompt of 8,200 tokens in one step, then decode steps of one; each against the reference fed
// the same calls (dynamic NTK scaling depends on them). A narrow model keeps the float64
// reference's quadratic attention to seconds.
inline void ExpectLongPositionsMatchReference(const Variant& v, StageOptions options = {}, double tolerance = 1e-5) {
  auto o = Options(v, 23);
  o.layers = 1, o.hidden = 32, o.heads = 2, o.kv_heads = 1, o.intermediate = 64, o.vocab = 96;
  o.max_positions = v.max_positions;
  auto m = MakeModel(o);
  ASSERT_EQ(m->config.MaxPositions(), v.reach);
  constexpr int kPrefill = 8200, kDecode = 3;
  std::mt19937 rng(7);
  std::vector<int32_t> tokens(kPrefill + kDecode);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % 96);
  std::vector<int64_t> calls = {kPrefill};
  for (int i = 0; i < kDecode; ++i) calls.push_back(1);
  const auto ref =
      ::modelcast::testing::ReferenceForward(m->ref, std::vector<int>(tokens.begin(), tokens.end()), calls);
  auto stage = Stage::Create(m->config, {0, 1}, m->weights->lookup(), options);
  ASSERT_TRUE(stage.ok()) << stage.status().ToString();
  StepInput in;
  in.items = {{1, 0, kPrefill}};
  in.tokens.assign(tokens.begin(), tokens.begin() + kPrefill);
  StepOutput out;
  ASSERT_TRUE((*stage)->Forward(in, &out).ok());
  EXPECT_LT(RelativeError(out.logits, ref.logits[kPrefill - 1]), tolerance) << "prefill";
  for (int i = 0; i < kDecode; ++i) {
    StepInput one;
    one.items = {{1, kPrefill + i, 1}};
    one.tokens = {tokens[kPrefill + i]};
    ASSERT_TRUE((*stage)->Forward(one, &out).ok());
    EXPECT_LT(RelativeError(out.logits, ref.logits[kPrefill + i]), tolerance) << "position " << kPrefill + i;
  }
}

}  // namespace modelcast::pipeline::testing_support
