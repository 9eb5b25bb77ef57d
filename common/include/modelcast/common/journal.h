// An append-only journal of JSON records that survives crashes: each record is framed with
// its length and XXH3 and fdatasync'ed before Append returns. On open every complete record
// is replayed in order; a record cut short by a crash at the end (a torn tail) is dropped and
// the file truncated to the last whole record; damage anywhere before the tail is an error
// naming the offset, because records after it could not be trusted to follow.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include <nlohmann/json.hpp>

#include "modelcast/common/file_util.h"
#include "modelcast/common/status.h"

namespace modelcast {

struct JournalOptions {
  bool sync = true;                         // fdatasync every append (off only for tests and benchmarks)
  uint64_t max_record_bytes = 16ull << 20;  // larger records are refused
};

struct JournalOpenReport {
  uint64_t records = 0;     // replayed
  uint64_t torn_bytes = 0;  // dropped from the tail
};

// Where the coordinator's state is kept as records: the journal on its own disk (below), or a
// log in etcd that coordinators share (coordinator/src/etcd_log.h).
class RecordLog {
 public:
  using Replay = std::function<Status(const nlohmann::json& record)>;
  virtual ~RecordLog() = default;
  // Durable when it returns OK; a failed append leaves the log as it was.
  virtual Status Append(const nlohmann::json& record) = 0;
  // Replaces the whole log with `records`, atomically for whoever reads it next.
  virtual Status Compact(const std::vector<nlohmann::json>& records) = 0;
  virtual uint64_t records() const = 0;
  virtual uint64_t bytes() const = 0;
};

class Journal : public RecordLog {
 public:

  // Opens the journal at `path`, creating it (and an empty journal) if it does not exist, and
  // calls `replay` for every record in order; an error from `replay` stops the open.
  static Result<std::unique_ptr<Journal>> Open(const std::filesystem::path& path, const Replay& replay,
                                               const JournalOptions& options = {}, JournalOpenReport* report = nullptr);

  // Appends one record; durable when it returns OK. A failed append (disk full) leaves the
  // journal as it was before the call. Thread-safe.
  Status Append(const nlohmann::json& record) override;
  // Replaces the whole journal with `records` (a snapshot of the state), atomically: a crash
  // leaves the old journal or the new one.
  Status Compact(const std::vector<nlohmann::json>& records) override;

  uint64_t records() const override;
  uint64_t bytes() const override;
  const std::filesystem::path& path() const { return path_; }

 private:
  Journal(std::filesystem::path path, File file, uint64_t size, uint64_t records, JournalOptions options)
      : path_(std::move(path)), file_(std::move(file)), size_(size), records_(records), options_(options) {}

  std::filesystem::path path_;
  mutable std::mutex mu_;
  File file_;
  uint64_t size_;
  uint64_t records_;
  JournalOptions options_;
};

}  // namespace modelcast
