// What the CPU and CUDA stages share: their weights (bf16/fp16 matrices as they are, or widened
// to fp32), the rotation's tables, and the checks every step passes before it changes anything.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <unordered_map>
#include <new>
#include <utility>
#include <functional>
#include <memory>
#include <vector>

#include "modelcast/pipeline/stage.h"
#include "half_matmul.h"

namespace modelcast::pipeline {

// Memory for weights: large buffers on transparent huge pages (a stage's weights are written
// once when it starts serving, and faulting them in 4 KiB at a time costs more than converting
// them), and elements left uninitialised until they are written.
template <typename T>
struct WeightAllocator {
  using value_type = T;
  WeightAllocator() = default;
  template <typename U>
  WeightAllocator(const WeightAllocator<U>&) {}
  T* allocate(size_t n);
  void deallocate(T* p, size_t) { std::free(p); }
  template <typename U>
  void construct(U* p) {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
  bool operator==(const WeightAllocator&) const { return true; }
};
void* AllocateWeights(size_t bytes);  // huge-page aligned from 4 MiB up; never null
template <typename T>
T* WeightAllocator<T>::allocate(size_t n) {
  return static_cast<T*>(AllocateWeights(n * sizeof(T)));
}
using WeightVector = std::vector<float, WeightAllocator<float>>;

// One nn.Linear, or several stacked by rows (q/k/v, gate/up): either fp32 weights `w` ([out, in]
// row-major), or bf16/fp16 ones read where they lie (`half`: the parts in row order, each a view
// on a tensor in the stage's blocks, or in `StageWeights::copies` when the stage holds no owner
// of its blocks). b is empty without a bias.
struct Linear {
  using Part = HalfRows;  // w: [rows, in]
  WeightVector w;
  std::vector<Part> half;
  DType half_dtype = DType::kBF16;
  std::vector<float> b;
  int64_t out = 0, in = 0;
  bool is_half() const { return !half.empty(); }
};

// One decoder layer, with q/k/v fused into one product ([q; k; v] rows) and gate/up into
// another ([gate; up] rows): fewer, larger matrix products per step.
struct Layer {
  std::vector<float> input_norm, post_norm;
  std::vector<float> q_norm, k_norm;  // Qwen3: [head_dim] each; empty otherwise
  Linear qkv, o, gate_up, down;
};

struct StageWeights {
  using HostFetch = std::function<Status(const uint8_t* src, uint64_t bytes, uint8_t* dst)>;
  std::vector<Layer> layers;
  std::shared_ptr<Linear> embedding;  // [vocab, hidden]: the first stage, and a tied last one
  std::vector<float> final_norm;      // the last stage
  std::shared_ptr<Linear> head;       // the last stage: lm_head, or the embedding when tied
  std::vector<double> inv_freq;       // rotary, scaled as the config says (for dynamic NTK: at max_position_embeddings)
  double rope_scale = 1;              // the rotation's cos and sin multiplied by it (yarn's attention factor)

  // bf16/fp16 matrices stay in their dtype when `half` (the CPU stage): views on the lookup's
  // memory when `owner` keeps it alive, else copies of the same bytes; otherwise (the CUDA stage
  // uploads fp32) they are widened to fp32.
  bool half = false;
  std::shared_ptr<const void> owner;
  HostFetch fetch;
  std::deque<std::vector<uint16_t>> copies;

  // `fetch`, when given, reads a tensor's bytes into host memory: the lookup's addresses are then
  // device memory (the store's GPU arena), read only through it (norms, biases, and anything
  // widened); the half matrices stay views there.
  static Result<StageWeights> Load(const model::LlamaConfig& config, LayerRange layers, const WeightLookup& lookup,
                                   bool half = false, std::shared_ptr<const void> owner = nullptr,
                                   HostFetch fetch = nullptr);
  // Bytes of weights a step reads (the layers' matrices and norms, and the head).
  uint64_t StepBytes() const;
};

// What every stage keeps per request (its KV cache, of the device's kind) and the calls that
// only look at or drop those caches. `Cache` has a `length` (tokens held).
template <typename Cache>
class CachingStage : public Stage {
 public:
  void Drop(uint64_t request) override {
    std::lock_guard<std::mutex> lock(mu_);
    caches_.erase(request);
  }
  int64_t Held(uint64_t request) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return HeldLocked(request);
  }
  size_t active_requests() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return caches_.size();
  }

 protected:
  using Stage::Stage;
  int64_t HeldLocked(uint64_t request) const {
    auto it = caches_.find(request);
    return it == caches_.end() ? 0 : it->second.length;
  }
  mutable std::mutex mu_;  // held for a whole step
  std::unordered_map<uint64_t, Cache> caches_;
};

// The rotation of every token of a step ([tokens, head_dim / 2] each): the cos and sin of
// position x frequency, times yarn's attention factor. Dynamic NTK scaling rotates by the
// frequencies of each request's length as of this step (as transformers does per forward call);
// every other kind by the fixed `w.inv_freq`.
void RopeTables(const model::LlamaConfig& config, const StageWeights& w, const std::vector<StepItem>& items,
                std::vector<float>* cos, std::vector<float>* sin);

// The checks of Stage::Forward's contract; `held` gives the tokens a stage holds for a request.
Status CheckStep(const Stage& stage, const StepInput& input, int64_t max_requests,
                 const std::function<int64_t(uint64_t)>& held, size_t active);

Result<std::unique_ptr<Stage>> CreateCpuStage(const model::LlamaConfig& config, LayerRange layers,
                                              const WeightLookup& weights, StageOptions options);
// Unimplemented naming the reason where CUDA was not built.
Result<std::unique_ptr<Stage>> CreateCudaStage(const model::LlamaConfig& config, LayerRange layers,
                                               const WeightLookup& weights, StageOptions options);

}  // namespace modelcast::pipeline
