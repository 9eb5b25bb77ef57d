// Synthetic models for tests.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>

#include "modelcast/model/synth.h"

namespace modelcast::testing {

inline model::SynthOptions Tiny(DType dtype = DType::kBF16, uint64_t seed = 0) {
  model::SynthOptions o;
  o.preset = "tiny";
  o.dtype = dtype;
  o.seed = seed;
  return o;
}

// Synthesizes a model into `dir`, failing the test on error.
inline void Synth(const model::SynthOptions& o, const std::filesystem::path& dir) {
  Status s = model::Synthesize(o, dir);
  ASSERT_TRUE(s.ok()) << s.ToString();
}

}  // namespace modelcast::testing
