// What the planner needs to know of a model: its slices (sizes, in block order), how they
// group into blocks, and how many layers each block holds.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "modelcast/common/status.h"
#include "modelcast/model/llama_config.h"
#include "modelcast/model/manifest.h"

namespace modelcast::planner {

struct ModelShape {
  std::string name;
  std::vector<uint64_t> slice_bytes;        // per slice, in block order
  std::vector<uint32_t> block_first_slice;  // num_blocks + 1 entries; block j = [first[j], first[j+1])
  std::vector<uint32_t> block_layers;       // layers per block (execution cost of a stage)

  uint32_t num_slices() const { return static_cast<uint32_t>(slice_bytes.size()); }
  uint32_t num_blocks() const { return static_cast<uint32_t>(block_layers.size()); }
  uint64_t TotalBytes() const;
  uint64_t MaxSliceBytes() const;
  uint32_t TotalLayers() const;

  // Consistency: at least one slice and block, blocks tile the slices, every block has a
  // slice and a layer. Errors name the shape.
  Status Validate() const;

  // The shape of a prepared package.
  static ModelShape FromManifest(const model::Manifest& manifest);
  // The shape `modelcast prepare --blocks B --slice-mib ...` would produce for this config.
  static Result<ModelShape> FromConfig(const std::string& name, const model::LlamaConfig& config, DType dtype,
                                       int64_t num_blocks, uint64_t slice_bytes);
};

// Llama-family configs the simulator and planner CLI know by name ("llama-2-7b",
// "llama-2-13b", "llama-2-70b", "llama-3-8b", "llama-3-70b") plus modelcast's synth presets
// ("synth-tiny", "synth-small", "synth-medium").
Result<model::LlamaConfig> KnownModelConfig(const std::string& name);
std::vector<std::string> KnownModelNames();

}  // namespace modelcast::planner
