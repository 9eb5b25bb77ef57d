// Where a stage finds its weights: a lookup from HF tensor name to bytes in memory, whatever
// put them there (a prepared package read from disk, the tiered store's block buffers, an HF
// checkpoint). The executor knows nothing of how its weights arrived.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "modelcast/common/dtype.h"
#include "modelcast/common/status.h"
#include "modelcast/model/checkpoint.h"
#include "modelcast/model/manifest.h"
#include "modelcast/model/package.h"

namespace modelcast::pipeline {

struct TensorRef {
  const uint8_t* data = nullptr;  // valid while the source that gave it lives
  DType dtype = DType::kBF16;
  std::vector<int64_t> shape;
};

// NotFound naming the tensor when the source lacks it.
using WeightLookup = std::function<Result<TensorRef>(const std::string& name)>;

// Tensors inside block buffers laid out as the manifest says. `block_data(b)` returns block b's
// buffer (its file bytes), or nullptr when this holder lacks the block.
WeightLookup LookupInBlocks(std::shared_ptr<const model::Manifest> manifest,
                            std::function<const uint8_t*(uint32_t block)> block_data);

// Blocks of a prepared package read into memory (checked against their checksums).
class PackageWeights {
 public:
  // Reads `blocks` (empty: every block) of the package.
  static Result<std::unique_ptr<PackageWeights>> Load(const model::Package& package,
                                                      std::vector<uint32_t> blocks = {});
  WeightLookup lookup() const;
  const model::Manifest& manifest() const { return *manifest_; }

 private:
  std::shared_ptr<const model::Manifest> manifest_;
  std::map<uint32_t, std::vector<uint8_t>> blocks_;
};

// Every tensor of an HF checkpoint read into memory.
class CheckpointWeights {
 public:
  static Result<std::unique_ptr<CheckpointWeights>> Load(const model::HfCheckpoint& checkpoint);
  WeightLookup lookup() const;

 private:
  std::map<std::string, std::pair<TensorRef, std::vector<uint8_t>>> tensors_;
};

}  // namespace modelcast::pipeline
