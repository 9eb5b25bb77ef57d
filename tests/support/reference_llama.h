// A plain, obviously-correct float64 forward pass of the Hugging Face Llama-architecture models
// (modeling_llama.py, and Mistral's, Qwen2's and Qwen3's differences: biases on q/k/v, per-head
// q/k norms, and every rope_scaling type of modeling_rope_utils.py), written from the
// definitions with no attempt at speed. Tests check modelcast's
// executors and synthesized weights against it.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "modelcast/common/status.h"
#include "modelcast/model/checkpoint.h"
#include "modelcast/model/llama_config.h"

namespace modelcast::testing {

struct ReferenceWeights {
  model::LlamaConfig config;
  std::map<std::string, std::vector<double>> tensors;  // HF name -> row-major values

  const std::vector<double>& at(const std::string& name) const;
};

// Loads every tensor the config implies from an HF checkpoint, widened to float64.
Result<ReferenceWeights> LoadReferenceWeights(const model::HfCheckpoint& checkpoint);

struct ReferenceOutput {
  std::vector<std::vector<double>> logits;  // [position][vocab]
  // Root-mean-square of the residual stream after each layer, the largest over positions.
  std::vector<double> residual_rms;
};

// One decoder layer over the residual stream of one sequence (positions 0..n-1): x[t] is the
// stream entering the layer at position t; returns the stream leaving it. `call_end[t]`: the
// sequence length at the end of the forward call that fed token t (empty: one call of all).
std::vector<std::vector<double>> ReferenceLayer(const ReferenceWeights& w, int64_t layer,
                                                const std::vector<std::vector<double>>& x,
                                                const std::vector<int64_t>& call_end = {});

// Runs the whole model over `tokens` (one sequence, causal attention, positions 0..n-1).
// `calls`: how many tokens each forward call fed (a prefill, then decode steps of one), which
// only dynamic NTK scaling depends on; empty: one call of all of them.
ReferenceOutput ReferenceForward(const ReferenceWeights& w, const std::vector<int>& tokens,
                                 const std::vector<int64_t>& calls = {});

}  // namespace modelcast::testing
