// The layer executor against the float64 reference (one layer, the whole model), split into
// stages, batched, sampled, and refusing bad steps.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "modelcast/model/checkpoint.h"
#include "modelcast/model/package.h"
#include "modelcast/model/prepare.h"
#include "modelcast/pipeline/pipeline.h"
#include "support/models.h"
#include "support/pipeline_models.h"
#include "support/reference_llama.h"
#include "support/stage_reference.h"
#include "support/temp_dir.h"

namespace modelcast::pipeline {
namespace {

using namespace testing_support;

using model::HfCheckpoint;


TEST(StageTest, OneLayerMatchesTheReference) {
  auto m = MakeModel(testing::Tiny(DType::kBF16, 5));
  const auto& c = m->config;
  // The residual stream entering layer 2, as the reference computes it.
  std::vector<int> tokens(kPrompt.begin(), kPrompt.end());
  std::vector<std::vector<double>> x;
  const auto& emb = m->ref.at("model.embed_tokens.weight");
  for (int t : tokens) x.emplace_back(emb.begin() + t * c.hidden_size, emb.begin() + (t + 1) * c.hidden_size);
  for (int l = 0; l < 2; ++l) x = testing::ReferenceLayer(m->ref, l, x);
  const auto want = testing::ReferenceLayer(m->ref, 2, x);

  auto stage = Stage::Create(c, {2, 3}, m->weights->lookup());
  ASSERT_TRUE(stage.ok()) << stage.status().ToString();
  StepInput in;
  in.items = {{7, 0, static_cast<int32_t>(tokens.size())}};
  for (const auto& row : x) in.hidden.insert(in.hidden.end(), row.begin(), row.end());
  StepOutput out;
  ASSERT_TRUE((*stage)->Forward(in, &out).ok());
  std::vector<double> flat;
  for (const auto& row : want) flat.insert(flat.end(), row.begin(), row.end());
  ASSERT_EQ(out.hidden.size(), flat.size());
  EXPECT_LT(RelativeError(out.hidden, flat), 1e-5);
  EXPECT_EQ((*stage)->Held(7), static_cast<int64_t>(tokens.size()));
}

TEST(StageTest, WholeModelMatchesTheReferenceBf16) { ExpectMatchesReference(testing::Tiny(DType::kBF16, 1)); }
TEST(StageTest, WholeModelMatchesTheReferenceFp16) { ExpectMatchesReference(testing::Tiny(DType::kF16, 2)); }
TEST(StageTest, WholeModelMatchesTheReferenceFp32) { ExpectMatchesReference(testing::Tiny(DType::kF32, 3)); }

TEST(StageTest, TiedHeadAndOtherHeadShapesMatchTheReference) {
  auto o = testing::Tiny(DType::kBF16, 4);
  o.tie_word_embeddings = true;
  ExpectMatchesReference(o);
  auto mha = testing::Tiny(DType::kBF16, 6);
  mha.heads = 4, mha.kv_heads = 4;  // multi-head attention: one KV head per head
  ExpectMatchesReference(mha);
  auto gqa = testing::Tiny(DType::kBF16, 7);
  gqa.heads = 8, gqa.kv_heads = 2, gqa.layers = 3;  // four query heads per KV head
  ExpectMatchesReference(gqa);
}

TEST(StageTest, SmallModelMatchesTheReference) {
  model::SynthOptions o;
  o.preset = "small";
  o.seed = 8;
  ExpectMatchesReference(o);
}

TEST(StageTest, SplitIntoOneToFourStagesGivesTheSameLogitsAndTokens) {
  for (bool tied : {false, true}) {
    auto o = testing::Tiny(DType::kBF16, 11);
    o.tie_word_embeddings = tied;
    auto p = testing::PrepareModel(o, 4);
    std::vector<Generation> runs;
    for (int stages = 1; stages <= 4; ++stages) {
      auto pipe = testing::SplitPipeline(*p->package, stages);
      auto g = Generate(*pipe, 100 + stages, kPrompt, 12, SamplingParams{});
      ASSERT_TRUE(g.ok()) << g.status().ToString();
      runs.push_back(std::move(*g));
      for (const auto& s : pipe->stages()) EXPECT_EQ(s->active_requests(), 0u) << "Generate drops its caches";
    }
    for (int s = 1; s < 4; ++s) {
      EXPECT_EQ(runs[s].tokens, runs[0].tokens) << s + 1 << " stages, tied=" << tied;
      // The same operations in the same order on every split: the logits are identical.
      EXPECT_EQ(runs[s].logits, runs[0].logits) << s + 1 << " stages, tied=" << tied;
    }
  }
}

TEST(StageTest, BatchedRequestsMatchEachAlone) {
  auto m = MakeModel(testing::Tiny(DType::kBF16, 12));
  auto stage = Stage::Create(m->config, {0, m->config.num_hidden_layers}, m->weights->lookup());
  ASSERT_TRUE(stage.ok());
  auto alone = Stage::Create(m->config, {0, m->config.num_hidden_layers}, m->weights->lookup());
  ASSERT_TRUE(alone.ok());
  // Request 1 is decoding (prefilled first), request 2 prefills 5 tokens, request 3 prefills 1.
  StepInput pre;
  pre.items = {{1, 0, 4}};
  pre.tokens = {5, 6, 7, 8};
  StepOutput out;
  ASSERT_TRUE((*stage)->Forward(pre, &out).ok());
  StepInput batch;
  batch.items = {{1, 4, 1}, {2, 0, 5}, {3, 0, 1}};
  batch.tokens = {9, 100, 200, 300, 400, 500, 33};
  ASSERT_TRUE((*stage)->Forward(batch, &out).ok());
  ASSERT_EQ(out.logits.size(), 3u * m->config.vocab_size);

  const std::vector<std::vector<int32_t>> prompts = {{5, 6, 7, 8, 9}, {100, 200, 300, 400, 500}, {33}};
  for (size_t i = 0; i < prompts.size(); ++i) {
    StepInput one;
    one.items = {{50 + i, 0, static_cast<int32_t>(prompts[i].size())}};
    one.tokens = prompts[i];
    StepOutput o1;
    ASSERT_TRUE((*alone)->Forward(one, &o1).ok());
    std::vector<double> want(o1.logits.begin(), o1.logits.end());
    std::vector<float> got(out.logits.begin() + i * m->config.vocab_size,
                           out.logits.begin() + (i + 1) * m->config.vocab_size);
    EXPECT_LT(RelativeError(got, want), 1e-5) << "request " << i + 1;
  }
  EXPECT_EQ((*stage)->Held(1), 5);
  EXPECT_EQ((*stage)->Held(2), 5);
  (*stage)->Drop(2);
  EXPECT_EQ((*stage)->Held(2), 0);
  EXPECT_EQ((*stage)->active_requests(), 2u);
}

TEST(StageTest, BadStepsAreRefusedAndChangeNothing) {
  auto m = MakeModel(testing::Tiny(DType::kBF16, 13));
  StageOptions so;
  so.max_requests = 2;
  auto stage = Stage::Create(m->config, {0, 2}, m->weights->lookup(), so);
  ASSERT_TRUE(stage.ok());
  Stage& s = **stage;
  StepOutput out;
  StepInput ok;
  ok.items = {{1, 0, 2}};
  ok.tokens = {3, 4};
  ASSERT_TRUE(s.Forward(ok, &out).ok());
  EXPECT_EQ(out.hidden.size(), 2u * m->config.hidden_size);

  auto expect = [&](StepInput in, StatusCode code, const std::string& words) {
    Status st = s.Forward(in, &out);
    EXPECT_EQ(st.code(), code) << st.ToString();
    EXPECT_NE(st.message().find(words), std::string::npos) << st.ToString();
    EXPECT_EQ(s.Held(1), 2) << "a refused step changed request 1's cache";
    EXPECT_EQ(s.active_requests(), 1u);
  };
  StepInput wrong_pos = ok;  // request 1 again from 0: a repeated step
  expect(wrong_pos, StatusCode::kFailedPrecondition, "arrives at position 0 but layers 0-1 holds 2");
  // A request this stage never saw, mid-generation: its earlier steps went to a stage since
  // stopped (NotFound: the router takes it for the engine's fault and goes on elsewhere).
  StepInput unknown;
  unknown.items = {{7, 5, 1}};
  unknown.tokens = {3};
  expect(unknown, StatusCode::kNotFound, "request 7 arrives at position 5 but layers 0-1 holds none of its tokens");
  StepInput bad_token;
  bad_token.items = {{1, 2, 1}};
  bad_token.tokens = {static_cast<int32_t>(m->config.vocab_size)};
  expect(bad_token, StatusCode::kInvalidArgument, "outside the vocabulary");
  StepInput twice;
  twice.items = {{1, 2, 1}, {1, 3, 1}};
  twice.tokens = {1, 2};
  expect(twice, StatusCode::kInvalidArgument, "appears twice");
  StepInput too_long;
  too_long.items = {{1, 2, static_cast<int32_t>(m->config.max_position_embeddings)}};
  too_long.tokens.assign(m->config.max_position_embeddings, 1);
  expect(too_long, StatusCode::kOutOfRange, "max_position_embeddings");
  StepInput too_many;
  too_many.items = {{2, 0, 1}, {3, 0, 1}};
  too_many.tokens = {1, 2};
  expect(too_many, StatusCode::kResourceExhausted, "limit of 2");
  StepInput count;
  count.items = {{1, 2, 2}};
  count.tokens = {1};
  expect(count, StatusCode::kInvalidArgument, "2 tokens in its requests but 1 token ids");

  auto later = Stage::Create(m->config, {2, 4}, m->weights->lookup());
  ASSERT_TRUE(later.ok());
  StepInput short_hidden;
  short_hidden.items = {{1, 0, 2}};
  short_hidden.hidden.assign(m->config.hidden_size, 0.f);
  Status st = (*later)->Forward(short_hidden, &out);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("activation values"), std::string::npos) << st.ToString();
}

TEST(StageTest, MissingOrMisshapenWeightsAreNamed) {
  auto p = testing::PrepareModel(testing::Tiny(DType::kBF16, 14), 4);
  auto w = PackageWeights::Load(*p->package, {0, 1});
  ASSERT_TRUE(w.ok());
  const auto& c = p->package->manifest().config;
  auto s = Stage::Create(c, {1, 3}, (*w)->lookup());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kNotFound);
  EXPECT_NE(s.status().message().find("model.layers.2.input_layernorm.weight"), std::string::npos)
      << s.status().ToString();
  EXPECT_NE(s.status().message().find("block 2"), std::string::npos) << s.status().ToString();

  model::LlamaConfig wide = c;
  wide.intermediate_size += 1;
  auto s2 = Stage::Create(wide, {0, 1}, (*w)->lookup());
  ASSERT_FALSE(s2.ok());
  EXPECT_NE(s2.status().message().find("mlp.gate_proj.weight has shape"), std::string::npos)
      << s2.status().ToString();
  auto s3 = Stage::Create(c, {3, 9}, (*w)->lookup());
  EXPECT_EQ(s3.status().code(), StatusCode::kInvalidArgument);
  auto s4 = Stage::Create(c, {0, 1}, (*w)->lookup(), StageOptions{Device::kCuda});
  // Without CUDA in the build the error says so; with it, on a machine without a GPU, it says that.
  if (!s4.ok()) {
    EXPECT_EQ(s4.status().code(),
              MODELCAST_TEST_HAVE_CUDA_STAGE ? StatusCode::kFailedPrecondition : StatusCode::kUnimplemented)
        << s4.status().ToString();
  }
  EXPECT_FALSE(SplitLayers(4, 5).ok());
  EXPECT_FALSE(CheckCoverage({{0, 2}, {3, 4}}, 4).ok());
  EXPECT_FALSE(CheckCoverage({{0, 2}, {1, 4}}, 4).ok());
  EXPECT_TRUE(CheckCoverage({{0, 2}, {2, 4}}, 4).ok());
}

TEST(SamplerTest, SeededSamplingIsRepeatableAndTopPNarrows) {
  std::vector<float> logits = {1.0f, 2.0f, 0.5f, 2.0f, -1.0f};
  EXPECT_EQ(Argmax(logits), 1);  // the first of equal maxima
  SamplingParams p{0.8, 1.0, 42};
  Sampler a(p), b(p);
  std::vector<int32_t> sa, sb;
  for (int i = 0; i < 200; ++i) sa.push_back(a.Next(logits)), sb.push_back(b.Next(logits));
  EXPECT_EQ(sa, sb);
  std::set<int32_t> distinct(sa.begin(), sa.end());
  EXPECT_GE(distinct.size(), 4u) << "temperature 0.8 over 200 draws reaches most tokens";
  Sampler c(SamplingParams{0.8, 1.0, 43});
  std::vector<int32_t> sc;
  for (int i = 0; i < 200; ++i) sc.push_back(c.Next(logits));
  EXPECT_NE(sa, sc) << "another seed, another sequence";
  // top_p 0.5: only the two most likely tokens (1 and 3, each ~0.34 of the mass) survive.
  Sampler d(SamplingParams{1.0, 0.5, 7});
  for (int i = 0; i < 200; ++i) {
    const int32_t t = d.Next(logits);
    EXPECT_TRUE(t == 1 || t == 3) << t;
  }
  EXPECT_FALSE((SamplingParams{-1, 1, 0}).Validate().ok());
  EXPECT_FALSE((SamplingParams{1, 0, 0}).Validate().ok());
  EXPECT_FALSE((SamplingParams{1, 1.5, 0}).Validate().ok());
  EXPECT_FALSE((SamplingParams{NAN, 1, 0}).Validate().ok());
}

TEST(SamplerTest, SampledGenerationIsTheSameOnEverySplit) {
  auto p = testing::PrepareModel(testing::Tiny(DType::kBF16, 15), 4);
  std::vector<std::vector<int32_t>> runs;
  for (int stages : {1, 3}) {
    auto pipe = testing::SplitPipeline(*p->package, stages);
    auto g = Generate(*pipe, 1, kPrompt, 16, SamplingParams{0.9, 0.95, 1234});
    ASSERT_TRUE(g.ok());
    runs.push_back(g->tokens);
  }
  EXPECT_EQ(runs[0], runs[1]);
}

}  // namespace
}  // namespace modelcast::pipeline
