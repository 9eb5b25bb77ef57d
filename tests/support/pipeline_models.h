// Prepared synthetic models and stages built from a package's blocks, for the pipeline tests.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "modelcast/model/package.h"
#include "modelcast/model/prepare.h"
#include "modelcast/pipeline/pipeline.h"
#include "support/models.h"
#include "support/temp_dir.h"

namespace modelcast::testing {

// A synthesized model prepared into a package of `blocks` blocks.
struct PreparedModel {
  TempDir dir;
  std::unique_ptr<model::Package> package;
};

inline std::unique_ptr<PreparedModel> PrepareModel(const model::SynthOptions& o, int64_t blocks) {
  auto p = std::make_unique<PreparedModel>();
  EXPECT_TRUE(model::Synthesize(o, p->dir / "hf").ok());
  model::PrepareOptions po;
  po.blocks = blocks;
  po.slice_bytes = 64 << 10;
  po.fsync = false;
  auto r = model::Prepare(p->dir / "hf", p->dir / "pkg", po);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  auto pkg = model::Package::Open(p->dir / "pkg");
  EXPECT_TRUE(pkg.ok());
  p->package = std::make_unique<model::Package>(std::move(*pkg));
  return p;
}

// A stage built from only the blocks that hold its layers (and block 0's embedding for a tied
// head), as a node holding just those blocks would.
inline std::unique_ptr<pipeline::Stage> StageFromBlocks(const model::Package& pkg, pipeline::LayerRange r) {
  const auto& m = pkg.manifest();
  std::vector<uint32_t> blocks;
  for (int64_t l = r.first; l < r.end; ++l) blocks.push_back(m.BlockForLayer(l)->index);
  if (r.first == 0 || (r.end == m.config.num_hidden_layers && m.config.tie_word_embeddings)) blocks.push_back(0);
  std::sort(blocks.begin(), blocks.end());
  blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
  auto w = pipeline::PackageWeights::Load(pkg, blocks);
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  if (!w.ok()) return nullptr;
  auto s = pipeline::Stage::Create(m.config, r, (*w)->lookup());
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(*s) : nullptr;
}

// The model cut into `stages` stages, all in this process.
inline std::unique_ptr<pipeline::LocalPipeline> SplitPipeline(const model::Package& pkg, int stages) {
  auto ranges = pipeline::SplitLayers(pkg.manifest().config.num_hidden_layers, stages);
  EXPECT_TRUE(ranges.ok());
  std::vector<std::unique_ptr<pipeline::Stage>> built;
  for (const auto& r : *ranges) built.push_back(StageFromBlocks(pkg, r));
  auto p = pipeline::LocalPipeline::Create(std::move(built));
  EXPECT_TRUE(p.ok());
  return p.ok() ? std::move(*p) : nullptr;
}

}  // namespace modelcast::testing
