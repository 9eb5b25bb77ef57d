#include "modelcast/pipeline/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace modelcast::pipeline {

Status SamplingParams::Validate() const {
  if (!std::isfinite(temperature) || temperature < 0) {
    return InvalidArgument("temperature " + std::to_string(temperature) + " must be a finite number >= 0");
  }
  if (!(top_p > 0 && top_p <= 1)) return InvalidArgument("top_p " + std::to_string(top_p) + " must be in (0, 1]");
  return Status::Ok();
}

// splitmix64 seeding and stepping: fully specified, unlike std's distributions.
Sampler::Sampler(SamplingParams params) : params_(params), state_(params.seed ^ 0x9e3779b97f4a7c15ull) {}

double Sampler::Uniform() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

int32_t Argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

int32_t Sampler::Next(std::span<const float> logits) {
  if (params_.temperature == 0 || logits.size() == 1) return Argmax(logits);
  const size_t n = logits.size();
  double mx = -INFINITY;
  for (float v : logits) mx = std::max(mx, static_cast<double>(v));
  std::vector<double> p(n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += (p[i] = std::exp((logits[i] - mx) / params_.temperature));
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  // Most likely first; equal probabilities in index order, so the cut is deterministic.
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  size_t keep = n;
  if (params_.top_p < 1) {
    double mass = 0;
    for (size_t i = 0; i < n; ++i) {
      mass += p[order[i]] / sum;
      if (mass >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) kept += p[order[i]];
  double u = Uniform() * kept;
  for (size_t i = 0; i < keep; ++i) {
    u -= p[order[i]];
    if (u < 0) return order[i];
  }
  return order[keep - 1];
}

}  // namespace modelcast::pipeline
