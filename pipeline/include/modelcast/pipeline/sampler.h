// Choosing the next token from a step's logits: greedy, or temperature and top-p (nucleus)
// sampling from a seeded generator, so that the same prompt and seed give the same tokens on
// every node and every pipeline.
#pragma once

#include <cstdint>
#include <span>

#include "modelcast/common/status.h"

namespace modelcast::pipeline {

struct SamplingParams {
  double temperature = 0;  // 0: greedy (the first of equal maxima, as torch.argmax)
  double top_p = 1.0;      // keep the smallest set of most likely tokens whose mass reaches top_p
  uint64_t seed = 0;

  // InvalidArgument naming the field: temperature < 0 or not finite, top_p outside (0, 1].
  Status Validate() const;
};

class Sampler {
 public:
  explicit Sampler(SamplingParams params);
  // The next token. Each call advances the generator once (greedy calls do not).
  int32_t Next(std::span<const float> logits);

 private:
  double Uniform();  // [0, 1), 53 bits, the same on every platform
  SamplingParams params_;
  uint64_t state_;
};

// The index of the largest logit, the first of equal ones.
int32_t Argmax(std::span<const float> logits);

}  // namespace modelcast::pipeline
