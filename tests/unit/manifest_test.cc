#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "modelcast/model/manifest.h"
#include "modelcast/model/synth.h"

namespace modelcast::model {
namespace {
using nlohmann::json;

LlamaConfig TinyConfig() { return *SynthPresetConfig("tiny"); }

Manifest Plan(int64_t blocks, uint64_t slice_bytes, LlamaConfig c = TinyConfig()) {
  auto m = PlanPackageLayout(c, c.ToJson(), DType::kBF16, "tiny", blocks, slice_bytes);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? *m : Manifest{};
}

TEST(ManifestTest, PartitionLayersIsBalanced) {
  auto p = PartitionLayers(10, 4);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, (std::vector<std::pair<int64_t, int64_t>>{{0, 3}, {3, 6}, {6, 8}, {8, 10}}));
  EXPECT_EQ(PartitionLayers(4, 5).status().message(),
            "--blocks 5 is more than the model's 4 layers (a block holds whole layers)");
  EXPECT_FALSE(PartitionLayers(4, 0).ok());
}

TEST(ManifestTest, LayoutTilesBlocksAndSlices) {
  for (int64_t blocks = 1; blocks <= 4; ++blocks) {
    for (uint64_t slice : {4096ull, 65536ull, 1ull << 20, 64ull << 20}) {
      const Manifest m = Plan(blocks, slice);
      ASSERT_EQ(static_cast<int64_t>(m.blocks.size()), blocks);
      EXPECT_TRUE(m.blocks.front().embeddings);
      EXPECT_TRUE(m.blocks.back().head);
      for (const auto& t : m.tensors) {
        EXPECT_EQ(t.offset % kTensorAlignment, 0u) << t.name;
      }
      uint64_t sum = 0;
      for (const auto& s : m.slices) sum += s.length;
      EXPECT_EQ(sum, m.TotalBytes());
      EXPECT_TRUE(m.Validate("test").ok());
    }
  }
  // Layer 3's tensors live in the block that holds layer 3.
  const Manifest m = Plan(2, 4096);
  EXPECT_EQ(m.FindTensor("model.layers.3.mlp.down_proj.weight")->block, 1u);
  EXPECT_EQ(m.FindTensor("model.embed_tokens.weight")->block, 0u);
  EXPECT_EQ(m.FindTensor("lm_head.weight")->block, 1u);
}

TEST(ManifestTest, SerializeParseRoundTrip) {
  Manifest m = Plan(3, 8192);
  for (auto& s : m.slices) s.xxh3 = 0x0123456789abcdefull ^ s.index;
  auto back = Manifest::Parse(m.Serialize(), "manifest.json");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->Serialize(), m.Serialize());
  EXPECT_EQ(back->slices[5].xxh3, m.slices[5].xxh3);
  EXPECT_EQ(back->config.hidden_size, 128);
}

TEST(ManifestTest, BadSliceSizes) {
  const LlamaConfig c = TinyConfig();
  EXPECT_FALSE(PlanPackageLayout(c, c.ToJson(), DType::kBF16, "t", 2, 0).ok());
  EXPECT_FALSE(PlanPackageLayout(c, c.ToJson(), DType::kBF16, "t", 2, 5000).ok());
  EXPECT_FALSE(PlanPackageLayout(c, c.ToJson(), DType::kBF16, "t", 2, 2ull << 30).ok());
}

// Mutations of a valid manifest, each of which must be refused with a message containing
// the given text.
struct Mutation {
  const char* what;
  std::function<void(json&)> mutate;
  const char* expect;
};

TEST(ManifestTest, MalformedManifestsAreRefused) {
  const std::string good = Plan(2, 65536).Serialize();
  const std::vector<Mutation> mutations = {
      {"format", [](json& j) { j["format"] = "zip"; }, "format is 'zip'"},
      {"missing name", [](json& j) { j.erase("name"); }, "missing field 'name'"},
      {"dtype", [](json& j) { j["dtype"] = "int4"; }, "unsupported model dtype 'int4'"},
      {"slice size", [](json& j) { j["slice_bytes"] = 1000; }, "slice_bytes 1000 must be a positive multiple"},
      {"negative", [](json& j) { j["slice_bytes"] = -4096; }, "slice_bytes: expected a non-negative integer"},
      {"block layers",
       [](json& j) {
         j["blocks"][1]["layers"] = {3, 4};
       },
       "do not continue from layer 2"},
      {"block index", [](json& j) { j["blocks"][1]["index"] = 7; }, "blocks[1]: index is 7"},
      {"file path", [](json& j) { j["blocks"][0]["file"] = "../x.bin"; }, "is not a plain file name"},
      {"same file", [](json& j) { j["blocks"][1]["file"] = j["blocks"][0]["file"]; }, "is used by two blocks"},
      {"file bytes", [](json& j) { j["blocks"][0]["file_bytes"] = 12345; }, "is not bytes rounded up"},
      {"head", [](json& j) { j["blocks"][0]["head"] = true; }, "only the last block holds the head"},
      {"slice offset", [](json& j) { j["slices"][1]["offset"] = 4096; }, "slices[1]: expected index 1"},
      {"slice count", [](json& j) { j["slices"].erase(j["slices"].size() - 1); }, "slices listed, blocks account for"},
      {"checksum", [](json& j) { j["slices"][0]["xxh3"] = "xyz"; }, "checksum 'xyz' is not 16 hex digits"},
      {"tensor overlap", [](json& j) { j["tensors"][2]["offset"] = j["tensors"][1]["offset"]; }, "overlap"},
      {"tensor past block", [](json& j) { j["tensors"][1]["offset"] = 1ull << 40; }, "runs past block 0"},
      {"tensor misaligned", [](json& j) { j["tensors"][1]["offset"] = 100; }, "is not aligned"},
      {"wrong block",
       [](json& j) {  // layer 0's and layer 2's input norms trade places across blocks 0 and 1
         ASSERT_EQ(j["tensors"][1]["name"], "model.layers.0.input_layernorm.weight");
         ASSERT_EQ(j["tensors"][19]["name"], "model.layers.2.input_layernorm.weight");
         std::swap(j["tensors"][1]["block"], j["tensors"][19]["block"]);
         std::swap(j["tensors"][1]["offset"], j["tensors"][19]["offset"]);
       },
       "belongs in block"},
      {"missing tensor", [](json& j) { j["tensors"].erase(3); }, "tensors listed, the config implies"},
      {"duplicate tensor", [](json& j) { j["tensors"][3]["name"] = j["tensors"][2]["name"]; }, "listed twice"},
      {"shape",
       [](json& j) {
         j["tensors"][0]["shape"] = {1024, 64};
       },
       "has the wrong shape"},
      {"total", [](json& j) { j["total_bytes"] = 1; }, "total_bytes 1 is not the blocks' sum"},
      {"config", [](json& j) { j["config"]["hidden_size"] = -1; }, "key 'hidden_size': must be positive"},
      {"too many blocks", [](json& j) { j["config"]["num_hidden_layers"] = 1; }, "2 blocks for 1 layers"},
  };
  for (const auto& m : mutations) {
    json j = json::parse(good);
    m.mutate(j);
    auto r = Manifest::Parse(j.dump(), "pkg/manifest.json");
    ASSERT_FALSE(r.ok()) << m.what;
    EXPECT_NE(r.status().message().find(m.expect), std::string::npos) << m.what << ": " << r.status().message();
    EXPECT_EQ(r.status().message().rfind("pkg/manifest.json", 0), 0u) << m.what << ": " << r.status().message();
  }
}

TEST(ManifestTest, NewerFormatIsUnimplemented) {
  json j = json::parse(Plan(1, 65536).Serialize());
  j["format_version"] = 2;
  auto r = Manifest::Parse(j.dump(), "m.json");
  EXPECT_EQ(r.status().code(), StatusCode::kUnimplemented);
  EXPECT_FALSE(Manifest::Parse("{", "m.json").ok());
  EXPECT_FALSE(Manifest::Parse("[]", "m.json").ok());
}

}  // namespace
}  // namespace modelcast::model
