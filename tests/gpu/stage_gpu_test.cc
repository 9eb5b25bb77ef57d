// The CUDA stage against the float64 reference and against the CPU stage: the same logits up to
// rounding, split or whole, batched or alone. Skips, saying why, where there is no GPU or the
// build has no CUDA.
#include <gtest/gtest.h>

#include <cmath>

#include "modelcast/model/checkpoint.h"
#include "modelcast/pipeline/pipeline.h"
#include "support/models.h"
#include "support/pipeline_models.h"
#include "support/reference_llama.h"
#include "support/temp_dir.h"

namespace modelcast::pipeline {
namespace {

double RelativeError(const std::vector<float>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) num += (a[i] - ref[i]) * (a[i] - ref[i]), den += ref[i] * ref[i];
  return std::sqrt(num / den);
}

std::vector<double> Widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// A CUDA stage, or a skip naming why there is none.
#define MAKE_CUDA_STAGE(var, config, range, lookup)                                                        \
  auto var = Stage::Create(config, range, lookup, StageOptions{Device::kCuda});                           \
  if (!var.ok() && (var.status().code() == StatusCode::kFailedPrecondition ||                            \
                    var.status().code() == StatusCode::kUnimplemented)) {                                 \
    GTEST_SKIP() << var.status().message();                                                               \
  }                                                                                                       \
  ASSERT_TRUE(var.ok()) << var.status().ToString()

const std::vector<int32_t> kPrompt = {1, 17, 300, 42, 9, 511, 3, 77};

void ExpectMatchesReference(model::SynthOptions o) {
  testing::TempDir dir;
  testing::Synth(o, dir / "hf");
  auto ck = model::HfCheckpoint::Open(dir / "hf");
  ASSERT_TRUE(ck.ok());
  auto weights = CheckpointWeights::Load(*ck);
  ASSERT_TRUE(weights.ok());
  auto ref_w = testing::LoadReferenceWeights(*ck);
  ASSERT_TRUE(ref_w.ok());
  const auto ref = testing::ReferenceForward(*ref_w, std::vector<int>(kPrompt.begin(), kPrompt.end()));
  const auto& c = ck->config();
  MAKE_CUDA_STAGE(stage, c, (LayerRange{0, c.num_hidden_layers}), (*weights)->lookup());
  StepInput in;
  in.items = {{1, 0, static_cast<int32_t>(kPrompt.size())}};
  in.tokens = kPrompt;
  StepOutput out;
  ASSERT_TRUE((*stage)->Forward(in, &out).ok());
  EXPECT_LT(RelativeError(out.logits, ref.logits.back()), 1e-5);
  for (size_t t = 0; t < kPrompt.size(); ++t) {
    StepInput one;
    one.items = {{2, static_cast<int64_t>(t), 1}};
    one.tokens = {kPrompt[t]};
    ASSERT_TRUE((*stage)->Forward(one, &out).ok());
    EXPECT_LT(RelativeError(out.logits, ref.logits[t]), 1e-5) << "position " << t;
  }
}

TEST(CudaStageTest, MatchesTheReference) {
  ExpectMatchesReference(testing::Tiny(DType::kBF16, 1));
  auto tied = testing::Tiny(DType::kF16, 2);
  tied.tie_word_embeddings = true;
  ExpectMatchesReference(tied);
  auto gqa = testing::Tiny(DType::kF32, 3);
  gqa.heads = 8, gqa.kv_heads = 2;
  ExpectMatchesReference(gqa);
}

TEST(CudaStageTest, SplitAndBatchedMatchTheCpuStage) {
  auto p = testing::PrepareModel(testing::Tiny(DType::kBF16, 4), 4);
  const auto& m = p->package->manifest();
  auto weights = PackageWeights::Load(*p->package);
  ASSERT_TRUE(weights.ok());
  auto cpu = Stage::Create(m.config, {0, 4}, (*weights)->lookup());
  ASSERT_TRUE(cpu.ok());
  MAKE_CUDA_STAGE(first, m.config, (LayerRange{0, 2}), (*weights)->lookup());
  MAKE_CUDA_STAGE(second, m.config, (LayerRange{2, 4}), (*weights)->lookup());
  StepInput in;
  in.items = {{1, 0, 3}, {2, 0, 1}, {3, 0, 5}};
  in.tokens = {4, 5, 6, 7, 8, 9, 10, 11, 12};
  StepOutput a, mid, b;
  ASSERT_TRUE((*cpu)->Forward(in, &a).ok());
  ASSERT_TRUE((*first)->Forward(in, &mid).ok());
  StepInput in2;
  in2.items = in.items;
  in2.hidden = mid.hidden;
  ASSERT_TRUE((*second)->Forward(in2, &b).ok());
  ASSERT_EQ(a.logits.size(), b.logits.size());
  EXPECT_LT(RelativeError(b.logits, Widen(a.logits)), 1e-5);
  // A decode step after the batch: the KV caches on the device were kept.
  StepInput next;
  next.items = {{1, 3, 1}, {3, 5, 1}};
  next.tokens = {13, 14};
  ASSERT_TRUE((*cpu)->Forward(next, &a).ok());
  ASSERT_TRUE((*first)->Forward(next, &mid).ok());
  in2.items = next.items;
  in2.hidden = mid.hidden;
  ASSERT_TRUE((*second)->Forward(in2, &b).ok());
  EXPECT_LT(RelativeError(b.logits, Widen(a.logits)), 1e-5);
  EXPECT_EQ((*second)->Held(3), 6);
}

}  // namespace
}  // namespace modelcast::pipeline
