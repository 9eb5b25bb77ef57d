// What the CPU and CUDA stages share: their weights converted to fp32 on the host, and the
// checks every step passes before it changes anything.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "modelcast/pipeline/stage.h"

namespace modelcast::pipeline {

// One nn.Linear: w is [out, in] row-major; b is empty without a bias.
struct Linear {
  std::vector<float> w, b;
  int64_t out = 0, in = 0;
};

// One decoder layer, with q/k/v fused into one product ([q; k; v] rows) and gate/up into
// another ([gate; up] rows): fewer, larger matrix products per step.
struct Layer {
  std::vector<float> input_norm, post_norm;
  Linear qkv, o, gate_up, down;
};

struct StageWeights {
  std::vector<Layer> layers;
  std::shared_ptr<Linear> embedding;  // [vocab, hidden]: the first stage, and a tied last one
  std::vector<float> final_norm;      // the last stage
  std::shared_ptr<Linear> head;       // the last stage: lm_head, or the embedding when tied
  std::vector<double> inv_freq;       // rotary: theta^(-2i/head_dim), i < head_dim / 2

  static Result<StageWeights> Load(const model::LlamaConfig& config, LayerRange layers, const WeightLookup& lookup);
  // Bytes of weights a step reads (the layers' matrices and norms, and the head).
  uint64_t StepBytes() const;
};

// The checks of Stage::Forward's contract; `held` gives the tokens a stage holds for a request.
Status CheckStep(const Stage& stage, const StepInput& input, int64_t max_requests,
                 const std::function<int64_t(uint64_t)>& held, size_t active);

Result<std::unique_ptr<Stage>> CreateCpuStage(const model::LlamaConfig& config, LayerRange layers,
                                              const WeightLookup& weights, StageOptions options);
// Unimplemented naming the reason where CUDA was not built.
Result<std::unique_ptr<Stage>> CreateCudaStage(const model::LlamaConfig& config, LayerRange layers,
                                               const WeightLookup& weights, StageOptions options);

}  // namespace modelcast::pipeline
