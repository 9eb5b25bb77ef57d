// A pipeline: stages that together cover every layer of a model, run in order for each step.
// Local (every stage in this process) or spread over nodes (activations over the fabric); a
// full local instance is a pipeline of one stage.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "modelcast/common/status.h"
#include "modelcast/pipeline/sampler.h"
#include "modelcast/pipeline/stage.h"

namespace modelcast::pipeline {

class Pipeline {
 public:
  virtual ~Pipeline() = default;
  // Runs the step through every stage: token ids in, each item's last-token logits out.
  virtual Status Step(const StepInput& input, StepOutput* output) = 0;
  // Frees the request's KV caches on every stage.
  virtual void Drop(uint64_t request) = 0;
  // Called from another thread: ends a Step in progress now with Cancelled (a step that waits
  // in stages still being built, given back). The stages may still run it; what they return
  // is dropped. The default does nothing: the step ends when it ends.
  virtual void Interrupt() {}
  virtual int64_t vocab_size() const = 0;
  // The longest sequence (prompt and generated tokens) the model takes.
  virtual int64_t max_positions() const = 0;
};

class LocalPipeline final : public Pipeline {
 public:
  // The stages must cover the model's layers in order, without gap or overlap.
  static Result<std::unique_ptr<LocalPipeline>> Create(std::vector<std::unique_ptr<Stage>> stages);
  Status Step(const StepInput& input, StepOutput* output) override;
  void Drop(uint64_t request) override;
  int64_t vocab_size() const override { return stages_.front()->config().vocab_size; }
  int64_t max_positions() const override { return stages_.front()->config().MaxPositions(); }
  const std::vector<std::unique_ptr<Stage>>& stages() const { return stages_; }

 private:
  std::vector<std::unique_ptr<Stage>> stages_;
};

// Checks that `ranges` tile [0, num_layers) in order; the error names the gap or overlap.
Status CheckCoverage(const std::vector<LayerRange>& ranges, int64_t num_layers);

struct Generation {
  std::vector<int32_t> tokens;               // the generated tokens
  std::vector<std::vector<float>> logits;    // the logits each token was chosen from
};

// One request alone through a pipeline: the prompt prefilled in one step, then one step per
// generated token, stopping after max_tokens or at `stop` (when >= 0, included). The request's
// caches are dropped at the end.
Result<Generation> Generate(Pipeline& pipeline, uint64_t request, const std::vector<int32_t>& prompt,
                            int max_tokens, const SamplingParams& sampling, int32_t stop = -1);

}  // namespace modelcast::pipeline
