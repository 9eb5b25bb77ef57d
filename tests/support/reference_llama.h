// A plain, obviously-correct float64 forward pass of the Hugging Face Llama model, written
// from the definition (modeling_llama.py) with no attempt at speed. Tests check modelcast's
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
// stream entering the layer at position t; returns the stream leaving it.
std::vector<std::vector<double>> ReferenceLayer(const ReferenceWeights& w, int64_t layer,
                                                const std::vector<std::vector<double>>& x);

// Runs the whole model over `tokens` (one sequence, causal attention, positions 0..n-1).
ReferenceOutput ReferenceForward(const ReferenceWeights& w, const std::vector<int>& tokens);

}  // namespace modelcast::testing
