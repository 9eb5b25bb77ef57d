// The families modelcast serves (Llama, Mistral, Qwen2, Qwen3) and every rope_scaling type,
// computed by the CPU stage against the float64 reference: prefill and token-by-token decode,
// whole and split into stages, and at positions past 8,192 where llama3, yarn and dynamic
// scaling change the frequencies.
#include <gtest/gtest.h>

#include "modelcast/pipeline/pipeline.h"
#include "support/models.h"
#include "support/families.h"

namespace modelcast::pipeline {
namespace {

using namespace testing_support;

class FamilyTest : public ::testing::TestWithParam<Variant> {};

TEST_P(FamilyTest, PrefillAndDecodeMatchTheReference) { ExpectMatchesReference(Options(GetParam(), 21)); }
TEST_P(FamilyTest, SplitIntoStagesMatchesTheReference) { ExpectSplitMatchesReference(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Families, FamilyTest, ::testing::ValuesIn(kVariants), VariantName);

class LongPositionsTest : public ::testing::TestWithParam<Variant> {};

TEST_P(LongPositionsTest, MatchTheReferencePast8192) { ExpectLongPositionsMatchReference(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Scaled, LongPositionsTest, ::testing::ValuesIn(kLong), VariantName);

// Mistral v0.1's sliding window: sequences within it are full attention and served; one that
// would pass it is refused, naming the window, and nothing changes.
TEST(SlidingWindowTest, SequencesPastTheWindowAreRefused) {
  auto o = testing::Tiny(DType::kBF16, 24);
  o.family = "mistral";
  o.sliding_window = 8;
  auto m = MakeModel(o);
  EXPECT_EQ(m->config.MaxPositions(), 8);
  auto stage = Stage::Create(m->config, {0, m->config.num_hidden_layers}, m->weights->lookup());
  ASSERT_TRUE(stage.ok());
  StepInput in;
  in.items = {{1, 0, 8}};
  in.tokens = kPrompt;
  StepOutput out;
  ASSERT_TRUE((*stage)->Forward(in, &out).ok());
  StepInput more;
  more.items = {{1, 8, 1}};
  more.tokens = {5};
  Status st = (*stage)->Forward(more, &out);
  EXPECT_EQ(st.code(), StatusCode::kOutOfRange);
  EXPECT_NE(st.message().find("sliding window of 8"), std::string::npos) << st.message();
  EXPECT_EQ((*stage)->Held(1), 8);
}

}  // namespace
}  // namespace modelcast::pipeline
