// A pipeline stage: a contiguous range of a Llama-family model's decoder layers, with exactly
// the semantics of the Hugging Face implementation (modeling_llama.py) for the same config.json
// and weights: RMSNorm, rotary embeddings in HF's rotate_half layout with the config's
// rope_theta, grouped-query attention, SwiGLU MLP, a tied or untied LM head. The first stage
// embeds token ids; the last applies the final norm and the LM head; a stage that is both is
// the whole model.
//
// A step runs one iteration of iteration-level batching: several requests, each with some
// tokens (a prompt being prefilled, or the one token being decoded), their linear layers
// computed as one matrix product over every token of the step. Each request's KV cache stays in
// the stage that computed it, until Drop.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "modelcast/common/status.h"
#include "modelcast/model/llama_config.h"
#include "modelcast/pipeline/weights.h"

namespace modelcast::pipeline {

struct LayerRange {
  int64_t first = 0;  // layers [first, end)
  int64_t end = 0;
  std::string ToString() const;  // "layers 0-15"
};

// One request's share of a step.
struct StepItem {
  uint64_t request = 0;
  // The position of the item's first token; it must equal the number of tokens this stage
  // already holds for the request (0 for a new request), so a lost or repeated step is an
  // error, not a silently wrong answer.
  int64_t position = 0;
  int32_t num_tokens = 0;
};

struct StepInput {
  std::vector<StepItem> items;
  std::vector<int32_t> tokens;  // the first stage's input: every item's tokens, in item order
  std::vector<float> hidden;    // a later stage's input: [total tokens, hidden_size]
  size_t total_tokens() const;
};

struct StepOutput {
  std::vector<float> hidden;  // a stage before the last: [total tokens, hidden_size]
  std::vector<float> logits;  // the last stage: [items, vocab_size], each item's last token
};

enum class Device { kCpu, kCuda };

struct StageOptions {
  Device device = Device::kCpu;
  int gpu_device = 0;
  int64_t max_requests = 256;  // requests holding a KV cache at once
  // Keeps alive the memory the lookup's tensors live in (the store's leases on the blocks, a
  // package read into memory): the CPU stage then reads bf16 and fp16 weights there, in place.
  // Without one it copies them (the same bytes, no widening).
  std::shared_ptr<const void> weights_owner;
  // The lookup's addresses are device memory on gpu_device (the store's GPU arena; the CUDA stage
  // only): bf16/fp16 matrices are read there in place, the rest copied out once; weights_owner
  // must keep them there.
  bool weights_on_device = false;
  // Compute from fp32 copies of bf16/fp16 weights instead: the CPU stage as it did before it
  // read them in their own dtype, the CUDA stage in fp32 throughout (to rounding of the float64
  // reference, where its bf16 products round their inputs). For comparisons.
  bool widen_weights = false;
};

class Stage {
 public:
  // Builds a stage of the range's weights (bf16, fp16 or fp32; the CPU stage computes from bf16
  // and fp16 weights as they are, in fp32 arithmetic; the CUDA stage keeps them in their dtype on
  // the device and multiplies activations rounded to it, accumulating in fp32). Every
  // tensor the range needs must be found with the shape the config implies; the error names the
  // first that is not. Unless options.weights_owner keeps the source alive, nothing of it is
  // read after Create returns.
  static Result<std::unique_ptr<Stage>> Create(const model::LlamaConfig& config, LayerRange layers,
                                               const WeightLookup& weights, StageOptions options = {});
  virtual ~Stage() = default;

  const model::LlamaConfig& config() const { return config_; }
  const LayerRange& layers() const { return layers_; }
  bool first() const { return layers_.first == 0; }
  bool last() const { return layers_.end == config_.num_hidden_layers; }
  // Bytes of weights read per step (what bounds decode speed).
  virtual uint64_t weight_bytes() const = 0;

  // Runs one step. A bad input (a request at the wrong position, a token outside the
  // vocabulary, too many requests, a sequence past max_position_embeddings) is an error that
  // names it, and changes no request's cache.
  virtual Status Forward(const StepInput& input, StepOutput* output) = 0;
  // Frees a request's KV cache; unknown requests are ignored.
  virtual void Drop(uint64_t request) = 0;
  // Tokens held for a request (0 when unknown).
  virtual int64_t Held(uint64_t request) const = 0;
  virtual size_t active_requests() const = 0;

 protected:
  Stage(const model::LlamaConfig& config, LayerRange layers) : config_(config), layers_(layers) {}
  model::LlamaConfig config_;
  LayerRange layers_;
};

// Cuts `num_layers` into `stages` contiguous ranges differing in size by at most one.
Result<std::vector<LayerRange>> SplitLayers(int64_t num_layers, int stages);

}  // namespace modelcast::pipeline
