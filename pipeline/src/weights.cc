#include "modelcast/pipeline/weights.h"

#include "modelcast/common/file_util.h"

namespace modelcast::pipeline {

WeightLookup LookupInBlocks(std::shared_ptr<const model::Manifest> manifest,
                            std::function<const uint8_t*(uint32_t block)> block_data) {
  return [manifest = std::move(manifest), block_data = std::move(block_data)](const std::string& name)
             -> Result<TensorRef> {
    const model::TensorEntry* t = manifest->FindTensor(name);
    if (t == nullptr) return NotFound("model '" + manifest->name + "' has no tensor " + name);
    const uint8_t* base = block_data(t->block);
    if (base == nullptr) {
      return NotFound("tensor " + name + " of model '" + manifest->name + "' is in block " +
                      std::to_string(t->block) + ", which this holder lacks");
    }
    return TensorRef{base + t->offset, t->dtype, t->shape};
  };
}

Result<std::unique_ptr<PackageWeights>> PackageWeights::Load(const model::Package& package,
                                                             std::vector<uint32_t> blocks) {
  const model::Manifest& m = package.manifest();
  if (blocks.empty()) {
    for (const auto& b : m.blocks) blocks.push_back(b.index);
  }
  auto w = std::unique_ptr<PackageWeights>(new PackageWeights());
  w->manifest_ = std::make_shared<model::Manifest>(m);
  for (uint32_t b : blocks) {
    if (b >= m.blocks.size()) {
      return InvalidArgument("model '" + m.name + "' has " + std::to_string(m.blocks.size()) +
                             " blocks; there is no block " + std::to_string(b));
    }
    const model::BlockEntry& be = m.blocks[b];
    std::vector<uint8_t> bytes(be.file_bytes);
    for (uint32_t s = be.first_slice; s < be.first_slice + be.num_slices; ++s) {
      const model::SliceEntry& se = m.slices[s];
      MC_RETURN_IF_ERROR(package.ReadSlice(s, std::span<uint8_t>(bytes.data() + se.offset, se.length)));
    }
    w->blocks_[b] = std::move(bytes);
  }
  return w;
}

WeightLookup PackageWeights::lookup() const {
  return LookupInBlocks(manifest_, [this](uint32_t block) -> const uint8_t* {
    auto it = blocks_.find(block);
    return it == blocks_.end() ? nullptr : it->second.data();
  });
}

Result<std::unique_ptr<CheckpointWeights>> CheckpointWeights::Load(const model::HfCheckpoint& checkpoint) {
  auto w = std::make_unique<CheckpointWeights>();
  for (const auto& [name, entry] : checkpoint.tensors()) {
    std::vector<uint8_t> bytes(entry.tensor->nbytes());
    MC_RETURN_IF_ERROR(entry.file->Read(*entry.tensor, 0, bytes));
    auto& slot = w->tensors_[name];
    slot.second = std::move(bytes);
    slot.first = TensorRef{slot.second.data(), entry.tensor->dtype, entry.tensor->shape};
  }
  return w;
}

WeightLookup CheckpointWeights::lookup() const {
  return [this](const std::string& name) -> Result<TensorRef> {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) return NotFound("checkpoint has no tensor " + name);
    return it->second.first;
  };
}

}  // namespace modelcast::pipeline
