// The SSD tier: a directory of prepared packages (docs/PACKAGE_FORMAT.md), one per model.
//
// Crash safety: a model written by the store (write-behind of received slices) goes into a
// staging directory next to its final place, block by block (each fsynced), and is renamed
// into place (exchanged with an older copy) only when every block is there, then the parent
// is fsynced: a crash leaves the old copy or the new one. On open, staging leftovers and
// temporary files are removed, and every block file the store did not itself write and verify
// (recorded in the package's trust file, by size, mtime and inode) is re-verified.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "modelcast/common/file_util.h"
#include "modelcast/common/status.h"
#include "modelcast/model/manifest.h"

namespace modelcast::tiers {

inline constexpr const char* kTrustFile = ".modelcast-trust.json";

// A block file opened for reading: with O_DIRECT where the filesystem takes it, and without.
struct BlockFiles {
  File direct;
  File buffered;
  std::string path;
  // Most of the file is in the page cache (just written, or read by someone else): copying it
  // from there beats reading the device again, so reads go through the buffered descriptor.
  bool cached = false;
  int read_fd() const { return direct.is_open() && !cached ? direct.fd() : buffered.fd(); }
};

class SsdTier {
 public:
  struct Found {
    std::shared_ptr<const model::Manifest> manifest;
    std::vector<bool> blocks;  // block files present and verified
  };
  struct OpenReport {
    std::map<std::string, Found> models;
    uint64_t leftovers_removed = 0;
    uint64_t blocks_verified = 0;       // re-verified on open (not trusted)
    std::vector<std::string> problems;  // what was set aside, one line each
  };

  static Result<std::unique_ptr<SsdTier>> Open(const std::filesystem::path& root, uint64_t capacity,
                                               OpenReport* report);

  const std::filesystem::path& root() const { return root_; }
  uint64_t capacity() const { return capacity_; }
  uint64_t used() const;
  // Whether O_DIRECT opens were refused (then reads go through the page cache; logged once).
  uint64_t direct_refused() const;

  // The block's file for reading, if the tier holds it.
  Result<std::shared_ptr<BlockFiles>> OpenBlock(const std::string& model, uint32_t block);

  // Starts (or restarts) writing a model into a staging directory. An existing copy of the
  // model stays where it is until Commit.
  Status BeginWrite(std::shared_ptr<const model::Manifest> manifest);
  // Writes one block file (file_bytes of data) into the staging directory and fsyncs it.
  // Capacity is checked first; a failed write leaves no file behind.
  Status WriteBlock(const std::string& model, uint32_t block, std::span<const uint8_t> data);
  // Every block written: the text files, manifest, config and trust file are written, the directory is
  // fsynced and renamed into place (replacing an older copy atomically).
  Status Commit(const std::string& model, const std::map<std::string, std::string>& text_files = {});
  // Writes files beside a committed model's blocks (each atomically); FailedPrecondition when the
  // model is not committed here.
  Status WriteTextFiles(const std::string& model, const std::map<std::string, std::string>& text_files);
  // Drops a write in progress (its staging directory is removed).
  void AbortWrite(const std::string& model);
  // Deletes the model's package.
  Status Remove(const std::string& model);

 private:
  struct Entry {
    std::shared_ptr<const model::Manifest> manifest;
    std::filesystem::path dir;  // where the blocks are read from: the package, or the staging dir
    std::vector<bool> blocks;
    bool committed = false;
    uint64_t bytes = 0;  // block files on disk for this entry
    std::optional<StagingDirectory> staging;
    uint64_t old_bytes = 0;  // a committed older copy still on disk while a new one is staged
  };
  SsdTier(std::filesystem::path root, uint64_t capacity) : root_(std::move(root)), capacity_(capacity) {}
  Status Scan(OpenReport* report);

  std::filesystem::path root_;
  uint64_t capacity_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> entries_;
  uint64_t direct_refused_ = 0;
};

// Writes the trust file of a package directory: the identity (size, mtime, inode) of each block
// file in `blocks`, which the caller has just written or verified.
Status WriteTrustFile(const std::filesystem::path& dir, const model::Manifest& manifest,
                      const std::vector<bool>& blocks);

}  // namespace modelcast::tiers
