// `modelcast prepare`: an HF checkpoint re-laid-out into a loading-optimised package.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "modelcast/common/status.h"
#include "modelcast/model/manifest.h"

namespace modelcast::model {

struct PrepareOptions {
  int64_t blocks = 1;
  uint64_t slice_bytes = 16ull << 20;
  std::string name;                        // defaults to the source directory's name
  bool replace = false;                    // replace an existing destination (atomically)
  bool fsync = true;                       // make the package durable before it appears at its path
  std::function<void(uint64_t)> progress;  // bytes written so far, as they are written
};

struct PrepareReport {
  uint64_t bytes = 0;  // tensor bytes plus padding written to block files
  uint64_t tensor_bytes = 0;
  double seconds = 0;
  Manifest manifest;
  std::vector<std::string> skipped_tensors;
};

// Reads the checkpoint at `src` (config.json + safetensors, single or sharded), writes the
// package into a staging directory next to `dst`, and renames it to `dst` only when every
// block, the manifest and config.json are written (and fsynced). On any error nothing is left
// at `dst` and the staging directory is removed.
Result<PrepareReport> Prepare(const std::filesystem::path& src, const std::filesystem::path& dst,
                              const PrepareOptions& options);

}  // namespace modelcast::model
