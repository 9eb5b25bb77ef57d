#include <gtest/gtest.h>

#include <cmath>

#include "modelcast/model/checkpoint.h"
#include "modelcast/model/synth.h"
#include "support/models.h"
#include "support/reference_llama.h"
#include "support/temp_dir.h"

namespace modelcast::model {
namespace {

TEST(SynthTest, PresetSizes) {
  // tiny ~ a few MB, small ~ 100 MB, medium ~ 1 GB at bf16.
  const uint64_t tiny = SynthPresetConfig("tiny")->ParameterCount() * 2;
  const uint64_t small = SynthPresetConfig("small")->ParameterCount() * 2;
  const uint64_t medium = SynthPresetConfig("medium")->ParameterCount() * 2;
  EXPECT_GT(tiny, 1u << 20);
  EXPECT_LT(tiny, 8u << 20);
  EXPECT_GT(small, 80u << 20);
  EXPECT_LT(small, 130u << 20);
  EXPECT_GT(medium, 900u << 20);
  EXPECT_LT(medium, 1200u << 20);
  EXPECT_EQ(SynthPresetConfig("huge").status().message(), "unknown preset 'huge' (expected tiny, small or medium)");
}

TEST(SynthTest, OverridesAreValidated) {
  SynthOptions o;
  o.layers = 2;
  o.hidden = 256;
  o.heads = 8;
  auto c = SynthConfig(o);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->num_hidden_layers, 2);
  EXPECT_EQ(c->head_dim, 32);
  EXPECT_EQ(c->num_key_value_heads, 4);
  o.heads = 7;
  EXPECT_NE(SynthConfig(o).status().message().find("not divisible by --heads 7"), std::string::npos);
  o.heads = 8;
  o.kv_heads = 3;
  EXPECT_NE(SynthConfig(o).status().message().find("--kv-heads 3 does not divide --heads 8"), std::string::npos);
  o.kv_heads.reset();
  o.layers = 0;
  EXPECT_FALSE(SynthConfig(o).ok());
}

TEST(SynthTest, DeterministicInSeed) {
  testing::TempDir dir;
  testing::Synth(testing::Tiny(DType::kBF16, 5), dir / "a");
  testing::Synth(testing::Tiny(DType::kBF16, 5), dir / "b");
  testing::Synth(testing::Tiny(DType::kBF16, 6), dir / "c");
  const std::string a = testing::ReadAll(dir / "a/model.safetensors");
  EXPECT_EQ(a, testing::ReadAll(dir / "b/model.safetensors"));
  EXPECT_NE(a, testing::ReadAll(dir / "c/model.safetensors"));
}

TEST(SynthTest, RefusesExistingOutput) {
  testing::TempDir dir;
  testing::Synth(testing::Tiny(), dir / "a");
  EXPECT_EQ(Synthesize(testing::Tiny(), dir / "a").code(), StatusCode::kAlreadyExists);
  auto o = testing::Tiny();
  o.replace = true;
  EXPECT_TRUE(Synthesize(o, dir / "a").ok());
}

TEST(SynthTest, WeightScales) {
  const LlamaConfig c = *SynthPresetConfig("tiny");
  for (const auto& spec : c.ExpectedTensors()) {
    std::vector<float> v(spec.NumElements());
    SynthTensorValues(spec, 3, v);
    double sum = 0, sq = 0;
    for (float x : v) sum += x, sq += static_cast<double>(x) * x;
    const double mean = sum / v.size(), var = sq / v.size() - mean * mean;
    if (spec.name.ends_with("norm.weight")) {
      EXPECT_NEAR(mean, 1.0, 0.05) << spec.name;
    } else if (spec.role == TensorRole::kEmbedding) {
      EXPECT_NEAR(var, 1.0, 0.05) << spec.name;
    } else {
      const double fan_in = static_cast<double>(spec.shape.back());
      EXPECT_NEAR(var * 3 * fan_in, 1.0, 0.1) << spec.name;  // uniform in +-1/sqrt(fan_in)
    }
  }
}

// Activations stay finite and of sane size through every layer, so later tests comparing
// executors against the reference compare meaningful numbers.
void ExpectSaneForward(const SynthOptions& o) {
  testing::TempDir dir;
  testing::Synth(o, dir / "m");
  auto ck = HfCheckpoint::Open(dir / "m");
  ASSERT_TRUE(ck.ok());
  auto w = testing::LoadReferenceWeights(*ck);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  const std::vector<int> tokens = {1, 17, 300, 42, 9, 511};
  const auto out = testing::ReferenceForward(*w, tokens);
  ASSERT_EQ(out.residual_rms.size(), static_cast<size_t>(ck->config().num_hidden_layers));
  for (size_t l = 0; l < out.residual_rms.size(); ++l) {
    EXPECT_TRUE(std::isfinite(out.residual_rms[l])) << "layer " << l;
    EXPECT_GT(out.residual_rms[l], 0.1) << "layer " << l;
    EXPECT_LT(out.residual_rms[l], 100.0) << "layer " << l;
  }
  for (const auto& logits : out.logits) {
    double mx = -1e300, mn = 1e300;
    for (double x : logits) {
      ASSERT_TRUE(std::isfinite(x));
      mx = std::max(mx, x), mn = std::min(mn, x);
    }
    EXPECT_GT(mx - mn, 1.0) << "logits are nearly flat: greedy decoding would be meaningless";
  }
}

TEST(SynthTest, TinyForwardIsSane) { ExpectSaneForward(testing::Tiny()); }

TEST(SynthTest, SmallForwardIsSane) {
  SynthOptions o;
  o.preset = "small";
  o.dtype = DType::kBF16;
  ExpectSaneForward(o);
}

}  // namespace
}  // namespace modelcast::model
