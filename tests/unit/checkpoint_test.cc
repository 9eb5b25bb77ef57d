#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "modelcast/model/checkpoint.h"
#include "support/models.h"
#include "support/temp_dir.h"

namespace modelcast::model {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

TEST(CheckpointTest, OpensSingleFileCheckpoint) {
  testing::TempDir dir;
  testing::Synth(testing::Tiny(), dir / "m");
  auto ck = HfCheckpoint::Open(dir / "m");
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  EXPECT_FALSE(ck->sharded());
  EXPECT_EQ(ck->files().size(), 1u);
  EXPECT_EQ(ck->config().num_hidden_layers, 4);
  std::vector<std::string> unexpected;
  auto dtype = ck->CheckAgainstConfig(&unexpected);
  ASSERT_TRUE(dtype.ok()) << dtype.status().ToString();
  EXPECT_EQ(*dtype, DType::kBF16);
  EXPECT_TRUE(unexpected.empty());
  EXPECT_EQ(ck->tensors().size(), ck->config().ExpectedTensors().size());
  EXPECT_EQ(ck->TensorBytes(), ck->config().ParameterCount() * 2);
}

TEST(CheckpointTest, OpensShardedCheckpoint) {
  testing::TempDir dir;
  auto o = testing::Tiny(DType::kF32);
  o.shard_bytes = 1 << 20;  // ~4 MB of fp32 weights: several shards
  testing::Synth(o, dir / "m");
  EXPECT_TRUE(fs::exists(dir / "m" / kHfIndexFile));
  auto ck = HfCheckpoint::Open(dir / "m");
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  EXPECT_TRUE(ck->sharded());
  EXPECT_GE(ck->files().size(), 3u);
  auto dtype = ck->CheckAgainstConfig(nullptr);
  ASSERT_TRUE(dtype.ok());
  EXPECT_EQ(*dtype, DType::kF32);
}

TEST(CheckpointTest, MissingTensorForALayerIsNamed) {
  testing::TempDir dir;
  testing::Synth(testing::Tiny(), dir / "m");
  // Claim 5 layers: layer 4's tensors are missing.
  json cfg = json::parse(testing::ReadAll(dir / "m/config.json"));
  cfg["num_hidden_layers"] = 5;
  testing::WriteAll(dir / "m/config.json", cfg.dump());
  auto ck = HfCheckpoint::Open(dir / "m");
  ASSERT_TRUE(ck.ok());
  auto dtype = ck->CheckAgainstConfig(nullptr);
  ASSERT_FALSE(dtype.ok());
  EXPECT_EQ(dtype.status().message(),
            (dir / "m").string() + ": missing tensor 'model.layers.4.input_layernorm.weight' of layer 4");
}

TEST(CheckpointTest, WrongShapeIsNamed) {
  testing::TempDir dir;
  testing::Synth(testing::Tiny(), dir / "m");
  json cfg = json::parse(testing::ReadAll(dir / "m/config.json"));
  cfg["intermediate_size"] = 360;
  testing::WriteAll(dir / "m/config.json", cfg.dump());
  auto ck = HfCheckpoint::Open(dir / "m");
  ASSERT_TRUE(ck.ok());
  auto dtype = ck->CheckAgainstConfig(nullptr);
  ASSERT_FALSE(dtype.ok());
  EXPECT_NE(dtype.status().message().find("mlp.gate_proj.weight' has shape [352, 128], config.json implies [360, 128]"),
            std::string::npos)
      << dtype.status().message();
}

TEST(CheckpointTest, BadConfigIsNamed) {
  testing::TempDir dir;
  testing::Synth(testing::Tiny(), dir / "m");
  json cfg = json::parse(testing::ReadAll(dir / "m/config.json"));
  cfg["num_key_value_heads"] = 3;
  testing::WriteAll(dir / "m/config.json", cfg.dump());
  auto ck = HfCheckpoint::Open(dir / "m");
  ASSERT_FALSE(ck.ok());
  EXPECT_NE(
      ck.status().message().find("config.json: key 'num_key_value_heads': 3 does not divide num_attention_heads 4"),
      std::string::npos)
      << ck.status().message();
  cfg.erase("num_key_value_heads");
  cfg.erase("hidden_size");
  testing::WriteAll(dir / "m/config.json", cfg.dump());
  EXPECT_NE(HfCheckpoint::Open(dir / "m").status().message().find("key 'hidden_size': missing"), std::string::npos);
  testing::WriteAll(dir / "m/config.json", "{nope");
  EXPECT_NE(HfCheckpoint::Open(dir / "m").status().message().find("config.json: invalid JSON"), std::string::npos);
  cfg["model_type"] = "gpt2";
  testing::WriteAll(dir / "m/config.json", cfg.dump());
  EXPECT_NE(HfCheckpoint::Open(dir / "m").status().message().find("not a family modelcast serves"), std::string::npos);
}

TEST(CheckpointTest, IndexProblems) {
  testing::TempDir dir;
  auto o = testing::Tiny(DType::kF32);
  o.shard_bytes = 1 << 20;
  testing::Synth(o, dir / "m");
  const fs::path index = dir / "m" / kHfIndexFile;
  json idx = json::parse(testing::ReadAll(index));
  json bad = idx;
  bad["weight_map"]["model.norm.weight"] = "../../etc/passwd";
  testing::WriteAll(index, bad.dump());
  EXPECT_NE(HfCheckpoint::Open(dir / "m").status().message().find("must be a plain file name"), std::string::npos);
  bad = idx;
  bad["weight_map"]["model.extra.weight"] = idx["weight_map"]["model.norm.weight"];
  testing::WriteAll(index, bad.dump());
  EXPECT_NE(HfCheckpoint::Open(dir / "m").status().message().find("tensor 'model.extra.weight' is mapped to"),
            std::string::npos);
  bad = idx;
  bad["weight_map"]["model.norm.weight"] = "model-00099-of-00099.safetensors";
  testing::WriteAll(index, bad.dump());
  EXPECT_EQ(HfCheckpoint::Open(dir / "m").status().code(), StatusCode::kIOError);  // shard missing
  testing::WriteAll(index, "{}");
  EXPECT_NE(HfCheckpoint::Open(dir / "m").status().message().find("missing 'weight_map'"), std::string::npos);
}

TEST(CheckpointTest, NotACheckpoint) {
  testing::TempDir dir;
  EXPECT_EQ(HfCheckpoint::Open(dir / "nothing").status().code(), StatusCode::kNotFound);
  fs::create_directory(dir / "empty");
  EXPECT_NE(HfCheckpoint::Open(dir / "empty").status().message().find("config.json does not exist"), std::string::npos);
  testing::Synth(testing::Tiny(), dir / "m");
  fs::remove(dir / "m" / kHfSingleFile);
  EXPECT_NE(HfCheckpoint::Open(dir / "m").status().message().find("has neither"), std::string::npos);
}

}  // namespace
}  // namespace modelcast::model
