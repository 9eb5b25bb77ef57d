// A prepared model package on disk: manifest.json, config.json and one file per block.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "modelcast/common/status.h"
#include "modelcast/model/manifest.h"

namespace modelcast::model {

struct BadSlice {
  uint32_t slice = 0;
  uint32_t block = 0;
  uint32_t slice_in_block = 0;
  std::string path;
  uint64_t offset = 0;
  std::string problem;  // "checksum mismatch (expected ..., got ...)", "non-zero padding", ...
};

struct VerifyReport {
  uint64_t slices_checked = 0;
  uint64_t bytes_checked = 0;
  std::vector<BadSlice> bad;  // in slice order; bad.front() is the first bad slice
  uint64_t files_checked = 0;          // the tokenizer's files beside the blocks
  std::vector<std::string> bad_files;  // "PATH: PROBLEM"

  bool ok() const { return bad.empty() && bad_files.empty(); }
};

// "model 'tiny': block 2 slice 5 (slice 17 of the model) in PATH at offset N: PROBLEM": how
// every bad slice is named, wherever it was found (a package, the tiered store).
std::string DescribeSlice(const Manifest& manifest, uint32_t slice, const std::string& path,
                          const std::string& problem);
// The problem part for a slice whose bytes hash to `got`: "checksum mismatch (expected .., got ..)".
std::string ChecksumMismatch(uint64_t expected, uint64_t got);

class Package {
 public:
  // Reads and validates the manifest, and checks that every block file exists with the size
  // the manifest gives. Contents are not read: that is Verify().
  static Result<Package> Open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  const Manifest& manifest() const { return manifest_; }
  std::filesystem::path BlockPath(uint32_t block) const;

  // Reads slice `slice` into dst (dst.size() must equal the slice's length) and checks it.
  Status ReadSlice(uint32_t slice, std::span<uint8_t> dst) const;
  // Checks bytes that claim to be slice `slice` against the manifest's checksum. The error
  // names the model, block, slice and file.
  Status CheckSlice(uint32_t slice, std::span<const uint8_t> bytes) const;
  // Reads one tensor's bytes (unchecked; for inspection and tests).
  Status ReadTensor(const std::string& name, std::vector<uint8_t>* out) const;

  // Re-reads every block file and checks every slice's checksum and that the padding after
  // the last slice is zero. A bad slice is reported, not returned as an error; I/O failures
  // are errors. `progress` is called with byte counts as they are checked.
  Result<VerifyReport> Verify(const std::function<void(uint64_t)>& progress = nullptr) const;
  // The tokenizer's files the manifest lists (name -> bytes), each checked against its size and
  // checksum (Corruption naming the first that differs).
  Result<std::map<std::string, std::string>> ReadTextFiles() const;

  // The package's first-bad-slice error message for a report, e.g.
  // "model 'tiny': block 2 slice 5 (slice 17 of the model) in .../block-0002.bin at offset ...".
  std::string Describe(const BadSlice& bad) const;

 private:
  Result<std::string> ReadTextFile(const TextFileEntry& f) const;
  std::filesystem::path dir_;
  Manifest manifest_;
};

}  // namespace modelcast::model
