// Stages against the float64 reference on synthetic models, for the CPU and CUDA stage tests.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "modelcast/model/checkpoint.h"
#include "modelcast/pipeline/pipeline.h"
#include "support/models.h"
#include "support/reference_llama.h"
#include "support/temp_dir.h"

namespace modelcast::pipeline::testing_support {

using model::HfCheckpoint;
namespace testing = ::modelcast::testing;

// ||a - ref|| / ||ref||.
inline double RelativeError(const std::vector<float>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

struct SynthModel {
  testing::TempDir dir;
  std::unique_ptr<CheckpointWeights> weights;
  testing::ReferenceWeights ref;
  model::LlamaConfig config;
};

inline std::unique_ptr<SynthModel> MakeModel(const model::SynthOptions& o) {
  auto m = std::make_unique<SynthModel>();
  EXPECT_TRUE(model::Synthesize(o, m->dir / "hf").ok());
  auto ck = HfCheckpoint::Open(m->dir / "hf");
  EXPECT_TRUE(ck.ok()) << ck.status().ToString();
  auto w = CheckpointWeights::Load(*ck);
  EXPECT_TRUE(w.ok());
  m->weights = std::move(*w);
  auto ref = testing::LoadReferenceWeights(*ck);
  EXPECT_TRUE(ref.ok());
  m->ref = std::move(*ref);
  m->config = ck->config();
  return m;
}

const std::vector<int32_t> kPrompt = {1, 17, 300, 42, 9, 511, 3, 77};

// Prefill of the whole prompt, then the same prompt decoded token by token: each position's
// logits against the reference's.
// (On a device that cannot make the stage here, the test is skipped with the reason.)
// `tolerance`: the relative error allowed (a CUDA stage's bf16 products round their inputs).
inline void ExpectMatchesReference(const model::SynthOptions& o, StageOptions options = {}, double tolerance = 1e-5) {
  auto m = MakeModel(o);
  const auto ref = testing::ReferenceForward(m->ref, std::vector<int>(kPrompt.begin(), kPrompt.end()));
  auto stage = Stage::Create(m->config, {0, m->config.num_hidden_layers}, m->weights->lookup(), options);
  if (options.device != Device::kCpu && !stage.ok() &&
      (stage.status().code() == StatusCode::kFailedPrecondition ||
       stage.status().code() == StatusCode::kUnimplemented)) {
    GTEST_SKIP() << stage.status().message();
  }
  ASSERT_TRUE(stage.ok()) << stage.status().ToString();
  StepInput in;
  in.items = {{1, 0, static_cast<int32_t>(kPrompt.size())}};
  in.tokens = kPrompt;
  StepOutput out;
  ASSERT_TRUE((*stage)->Forward(in, &out).ok());
  double worst = RelativeError(out.logits, ref.logits.back());
  EXPECT_LT(worst, tolerance);
  for (size_t t = 0; t < kPrompt.size(); ++t) {
    StepInput one;
    one.items = {{2, static_cast<int64_t>(t), 1}};
    one.tokens = {kPrompt[t]};
    ASSERT_TRUE((*stage)->Forward(one, &out).ok());
    const double e = RelativeError(out.logits, ref.logits[t]);
    worst = std::max(worst, e);
    EXPECT_LT(e, tolerance) << "position " << t;
  }
  // The worst relative error, in the test's report (--gtest_output=json).
  ::testing::Test::RecordProperty("worst_relative_error", std::to_string(worst));
}

}  // namespace modelcast::pipeline::testing_support
