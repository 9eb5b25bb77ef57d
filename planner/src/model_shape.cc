#include "modelcast/planner/model_shape.h"

#include <algorithm>

#include "modelcast/model/synth.h"

namespace modelcast::planner {

uint64_t ModelShape::TotalBytes() const {
  uint64_t n = 0;
  for (uint64_t b : slice_bytes) n += b;
  return n;
}

uint64_t ModelShape::MaxSliceBytes() const {
  return slice_bytes.empty() ? 0 : *std::max_element(slice_bytes.begin(), slice_bytes.end());
}

uint32_t ModelShape::TotalLayers() const {
  uint32_t n = 0;
  for (uint32_t l : block_layers) n += l;
  return n;
}

Status ModelShape::Validate() const {
  const std::string what = "model '" + name + "': ";
  if (slice_bytes.empty()) return InvalidArgument(what + "has no slices");
  if (block_layers.empty()) return InvalidArgument(what + "has no blocks");
  if (block_first_slice.size() != block_layers.size() + 1 || block_first_slice.front() != 0 ||
      block_first_slice.back() != slice_bytes.size()) {
    return InvalidArgument(what + "blocks do not tile its slices");
  }
  for (size_t j = 0; j < block_layers.size(); ++j) {
    if (block_first_slice[j + 1] <= block_first_slice[j])
      return InvalidArgument(what + "block " + std::to_string(j) + " has no slice");
    if (block_layers[j] == 0) return InvalidArgument(what + "block " + std::to_string(j) + " has no layer");
  }
  for (size_t i = 0; i < slice_bytes.size(); ++i) {
    if (slice_bytes[i] == 0) return InvalidArgument(what + "slice " + std::to_string(i) + " is empty");
  }
  return Status::Ok();
}

ModelShape ModelShape::FromManifest(const model::Manifest& m) {
  ModelShape s;
  s.name = m.name;
  for (const auto& sl : m.slices) s.slice_bytes.push_back(sl.length);
  for (const auto& b : m.blocks) {
    s.block_first_slice.push_back(b.first_slice);
    s.block_layers.push_back(static_cast<uint32_t>(b.end_layer - b.first_layer));
  }
  s.block_first_slice.push_back(static_cast<uint32_t>(m.slices.size()));
  return s;
}

Result<ModelShape> ModelShape::FromConfig(const std::string& name, const model::LlamaConfig& config, DType dtype,
                                          int64_t num_blocks, uint64_t slice_bytes) {
  MC_ASSIGN_OR_RETURN(model::Manifest m,
                      model::PlanPackageLayout(config, config.ToJson(), dtype, name, num_blocks, slice_bytes));
  return FromManifest(m);
}

namespace {

model::LlamaConfig Llama(int64_t hidden, int64_t inter, int64_t layers, int64_t heads, int64_t kv, int64_t vocab,
                         double theta) {
  model::LlamaConfig c;
  c.hidden_size = hidden;
  c.intermediate_size = inter;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv;
  c.head_dim = hidden / heads;
  c.vocab_size = vocab;
  c.rope_theta = theta;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 4096;
  c.torch_dtype = DType::kBF16;
  return c;
}

}  // namespace

std::vector<std::string> KnownModelNames() {
  return {"llama-2-7b",  "llama-2-13b", "llama-2-70b", "llama-3-8b",
          "llama-3-70b", "synth-tiny",  "synth-small", "synth-medium"};
}

Result<model::LlamaConfig> KnownModelConfig(const std::string& name) {
  // Shapes as published in each model's config.json.
  if (name == "llama-2-7b") return Llama(4096, 11008, 32, 32, 32, 32000, 1e4);
  if (name == "llama-2-13b") return Llama(5120, 13824, 40, 40, 40, 32000, 1e4);
  if (name == "llama-2-70b") return Llama(8192, 28672, 80, 64, 8, 32000, 1e4);
  if (name == "llama-3-8b") return Llama(4096, 14336, 32, 32, 8, 128256, 5e5);
  if (name == "llama-3-70b") return Llama(8192, 28672, 80, 64, 8, 128256, 5e5);
  if (name.rfind("synth-", 0) == 0) return model::SynthPresetConfig(name.substr(6));
  std::string list;
  for (const auto& n : KnownModelNames()) list += (list.empty() ? "" : ", ") + n;
  return NotFound("unknown model '" + name + "' (known: " + list + "; or give a config.json or package path)");
}

}  // namespace modelcast::planner
