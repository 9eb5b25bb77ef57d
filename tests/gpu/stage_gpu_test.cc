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
#include "support/stage_reference.h"
#include "support/temp_dir.h"

namespace modelcast::pipeline {
namespace {

using namespace testing_support;

std::vector<double> Widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// A CUDA stage, or a skip naming why there is none.
#define MAKE_CUDA_STAGE(var, config, range, lookup)                                                        \
  auto var = Stage::Create(config, range, lookup, StageOptions{Device::kCuda});                           \
  if (!var.ok() && (var.status().code() == StatusCode::kFailedPrecondition ||                            \
                    var.status().code() == StatusCode::kUnimplemented)) {                                 \
    GTEST_SKIP() << var.status().message();                                                               \
  }                                                                                                       \
  ASSERT_TRUE(var.ok()) << var.status().ToString()

TEST(CudaStageTest, MatchesTheReference) {
  const StageOptions cuda{Device::kCuda};
  ExpectMatchesReference(testing::Tiny(DType::kBF16, 1), cuda);
  auto tied = testing::Tiny(DType::kF16, 2);
  tied.tie_word_embeddings = true;
  ExpectMatchesReference(tied, cuda);
  auto gqa = testing::Tiny(DType::kF32, 3);
  gqa.heads = 8, gqa.kv_heads = 2;
  ExpectMatchesReference(gqa, cuda);
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
