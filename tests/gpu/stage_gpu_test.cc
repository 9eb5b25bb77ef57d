// The CUDA stage on a real device. Widened (fp32 throughout), against the float64 reference to
// rounding, as the CPU stage is: every family and rope scaling, whole and split, past 8,192
// positions. In bf16 (its default: half weights and KV cache, products with fp32 accumulation),
// against the same reference within the error of rounding each product's inputs to bf16. Its
// weights read in place in the store's GPU arena give the same logits as uploaded ones, and a
// stage's device memory is its weights' bytes, not an fp32 copy. Skips, saying why, where there
// is no GPU or the build has no CUDA.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "modelcast/model/checkpoint.h"
#include "modelcast/pipeline/pipeline.h"
#include "modelcast/tiers/gpu.h"
#include "modelcast/tiers/store.h"
#include "support/families.h"
#include "support/models.h"
#include "support/pipeline_models.h"
#include "support/reference_llama.h"
#include "support/stage_reference.h"
#include "support/store_fixture.h"
#include "support/temp_dir.h"

namespace modelcast::pipeline {
namespace {

using namespace testing_support;
using namespace std::chrono_literals;

// Rounding the inputs of each product to bf16 (8 significant bits) on these random tiny models:
// the logits' relative error stays below this (each test's report records the worst it saw).
constexpr double kBf16Tolerance = 2e-2;

StageOptions Cuda(bool widen) {
  StageOptions o;
  o.device = Device::kCuda;
  o.widen_weights = widen;
  return o;
}

std::vector<double> Widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (tiers::gpu::Probe(&why).empty()) GTEST_SKIP() << "no GPU: " << why;
  }
};

TEST_F(CudaTest, WidenedMatchesTheReference) {
  ExpectMatchesReference(::modelcast::testing::Tiny(DType::kBF16, 1), Cuda(true));
  auto tied = ::modelcast::testing::Tiny(DType::kF16, 2);
  tied.tie_word_embeddings = true;
  ExpectMatchesReference(tied, Cuda(true));
  auto gqa = ::modelcast::testing::Tiny(DType::kF32, 3);
  gqa.heads = 8, gqa.kv_heads = 2;
  ExpectMatchesReference(gqa, Cuda(true));
}

TEST_F(CudaTest, HalfWeightsNearTheReference) {
  ExpectMatchesReference(::modelcast::testing::Tiny(DType::kBF16, 1), Cuda(false), kBf16Tolerance);
  auto tied = ::modelcast::testing::Tiny(DType::kF16, 2);
  tied.tie_word_embeddings = true;
  ExpectMatchesReference(tied, Cuda(false), kBf16Tolerance);
  // fp32 weights stay fp32: to rounding.
  ExpectMatchesReference(::modelcast::testing::Tiny(DType::kF32, 3), Cuda(false));
}

// Two CUDA stages against one CPU stage, three requests in one batch, then a decode step.
void ExpectSplitAndBatchedMatchTheCpuStage(bool widen, double tolerance) {
  auto p = ::modelcast::testing::PrepareModel(::modelcast::testing::Tiny(DType::kBF16, 4), 4);
  const auto& m = p->package->manifest();
  auto weights = PackageWeights::Load(*p->package);
  ASSERT_TRUE(weights.ok());
  auto cpu = Stage::Create(m.config, {0, 4}, (*weights)->lookup());
  ASSERT_TRUE(cpu.ok());
  auto first = Stage::Create(m.config, {0, 2}, (*weights)->lookup(), Cuda(widen));
  auto second = Stage::Create(m.config, {2, 4}, (*weights)->lookup(), Cuda(widen));
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ASSERT_TRUE(second.ok()) << second.status().ToString();
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
  EXPECT_LT(RelativeError(b.logits, Widen(a.logits)), tolerance);
  // A decode step after the batch: the KV caches on the device were kept.
  StepInput next;
  next.items = {{1, 3, 1}, {3, 5, 1}};
  next.tokens = {13, 14};
  ASSERT_TRUE((*cpu)->Forward(next, &a).ok());
  ASSERT_TRUE((*first)->Forward(next, &mid).ok());
  in2.items = next.items;
  in2.hidden = mid.hidden;
  ASSERT_TRUE((*second)->Forward(in2, &b).ok());
  EXPECT_LT(RelativeError(b.logits, Widen(a.logits)), tolerance);
  EXPECT_EQ((*second)->Held(3), 6);
}

TEST_F(CudaTest, SplitAndBatchedMatchTheCpuStage) {
  ExpectSplitAndBatchedMatchTheCpuStage(true, 1e-5);
  ExpectSplitAndBatchedMatchTheCpuStage(false, kBf16Tolerance);
}

// The store's GPU tier holds the blocks; a stage reads them there in place. The same logits as a
// stage that uploaded the same bytes, and device memory for the weights only once.
TEST_F(CudaTest, WeightsInTheStoresGpuArenaAreReadInPlace) {
  ::modelcast::testing::TempDir dir;
  ::modelcast::testing::MakePackage(dir.path(), dir / "ssd" / "m", "m", 5, 4, 64 << 10);
  auto o = ::modelcast::testing::SmallStore(dir / "ssd", 64 << 20);
  o.gpu_capacity = 64 << 20;
  auto store = tiers::Store::Open(o);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  ASSERT_TRUE((*store)->has_gpu());
  auto manifest = (*store)->FindModel("m");
  ASSERT_NE(manifest, nullptr);
  auto req = (*store)->Promote("m", {}, Tier::kGpu);
  ASSERT_TRUE(req.ok()) << req.status().ToString();
  ASSERT_TRUE((*req)->Wait(60s).ok());
  auto leases = std::make_shared<std::vector<tiers::Lease>>();
  std::map<uint32_t, const uint8_t*> data;
  for (const auto& b : manifest->blocks) {
    auto lease = (*store)->Acquire("m", b.index, Tier::kGpu);
    ASSERT_TRUE(lease.ok()) << lease.status().ToString();
    data[b.index] = lease->data();
    leases->push_back(std::move(*lease));
  }
  auto in_arena = LookupInBlocks(manifest, [&data](uint32_t b) { return data.at(b); });
  const auto& c = manifest->config;
  StageOptions options = Cuda(false);
  options.weights_on_device = true;
  options.weights_owner = leases;
  auto before = tiers::gpu::MemoryInUse(0);
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  auto in_place = Stage::Create(c, {0, c.num_hidden_layers}, in_arena, options);
  ASSERT_TRUE(in_place.ok()) << in_place.status().ToString();
  auto after_in_place = tiers::gpu::MemoryInUse(0);
  ASSERT_TRUE(after_in_place.ok());

  auto pkg = model::Package::Open(dir / "ssd" / "m");
  ASSERT_TRUE(pkg.ok());
  auto host = PackageWeights::Load(*pkg);
  ASSERT_TRUE(host.ok());
  auto uploaded = Stage::Create(c, {0, c.num_hidden_layers}, (*host)->lookup(), Cuda(false));
  ASSERT_TRUE(uploaded.ok()) << uploaded.status().ToString();
  auto after_upload = tiers::gpu::MemoryInUse(0);
  ASSERT_TRUE(after_upload.ok());

  StepInput in;
  in.items = {{1, 0, static_cast<int32_t>(kPrompt.size())}};
  in.tokens = kPrompt;
  StepOutput a, b;
  ASSERT_TRUE((*in_place)->Forward(in, &a).ok());
  ASSERT_TRUE((*uploaded)->Forward(in, &b).ok());
  EXPECT_EQ(a.logits, b.logits);
  // The arena's blocks are the weights: the in-place stage adds its norms and handles only, the
  // uploaded one its matrices in bf16 (no fp32 copy: within 1.1x of their bytes, plus the
  // allocator's rounding and cuBLAS's workspace).
  const uint64_t weights = (*uploaded)->weight_bytes();
  const uint64_t slack = 8u << 20;
  EXPECT_LT(*after_in_place - *before, weights / 4 + slack);
  EXPECT_LT(*after_upload - *after_in_place, weights * 11 / 10 + slack);
  RecordProperty("weight_bytes", std::to_string(weights));
  RecordProperty("in_place_device_bytes", std::to_string(*after_in_place - *before));
  RecordProperty("uploaded_device_bytes", std::to_string(*after_upload - *after_in_place));
}

class CudaFamilyTest : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override {
    std::string why;
    if (tiers::gpu::Probe(&why).empty()) GTEST_SKIP() << "no GPU: " << why;
  }
};

TEST_P(CudaFamilyTest, WidenedMatchesTheReference) {
  ExpectMatchesReference(Options(GetParam(), 21), Cuda(true));
  ExpectSplitMatchesReference(GetParam(), Cuda(true));
}
TEST_P(CudaFamilyTest, HalfNearTheReference) {
  ExpectMatchesReference(Options(GetParam(), 21), Cuda(false), kBf16Tolerance);
  ExpectSplitMatchesReference(GetParam(), Cuda(false), kBf16Tolerance);
}
INSTANTIATE_TEST_SUITE_P(Families, CudaFamilyTest, ::testing::ValuesIn(kVariants), VariantName);

class CudaLongPositionsTest : public CudaFamilyTest {};
TEST_P(CudaLongPositionsTest, WidenedMatchesTheReferencePast8192) {
  ExpectLongPositionsMatchReference(GetParam(), Cuda(true));
}
TEST_P(CudaLongPositionsTest, HalfNearTheReferencePast8192) {
  ExpectLongPositionsMatchReference(GetParam(), Cuda(false), kBf16Tolerance);
}
INSTANTIATE_TEST_SUITE_P(Scaled, CudaLongPositionsTest, ::testing::ValuesIn(kLong), VariantName);

}  // namespace
}  // namespace modelcast::pipeline
