// The coordinator's record log kept in etcd, for coordinators that share their state (issue 24):
// the same records the local journal holds (ClusterState replays and appends them unchanged),
// under one key prefix:
//
//   <prefix>/format                       {"format": "modelcast-coordinator-state", "version": 1}
//   <prefix>/leader                       the coordinators' election key (LeaderElection)
//   <prefix>/routes/<engine>              the leader's serving engines, which every coordinator
//                                         routes requests through (ServingPlane)
//   <prefix>/gen                          G, the generation: every compaction starts a new one
//   <prefix>/g/<G>/snap/<n>/<part>        the snapshot's n-th record, in parts
//   <prefix>/g/<G>/log/<seq>/<part>       records appended since, in parts
//   <prefix>/g/<G>/{snap,log}/<n>/end     the number of parts: a record without it was cut short
//                                         by a crash while being written and is not replayed
//
// Numbers are zero-padded so that keys sort in record order. A record is cut into parts of at
// most `part_bytes` (etcd refuses requests over 1.5 MiB by default; a large model's manifest is
// bigger). Every write is a transaction that is made only while the fence holds (Fence): the
// leader's election key still has the create revision it had when this coordinator was elected,
// so a deposed leader that wakes up cannot change anything; its write is refused, naming why.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "etcd_client.h"
#include "modelcast/common/journal.h"

namespace modelcast::coordinator {

class EtcdLog final : public RecordLog {
 public:
  static constexpr int kFormatVersion = 1;

  // Opens the log under `prefix` and replays it (the snapshot, then the records after it, in
  // order). An empty prefix gets the format marker; a prefix holding anything else (another
  // program's keys, or a state written by a newer version) is refused, not overwritten.
  static Result<std::unique_ptr<EtcdLog>> Open(std::shared_ptr<EtcdClient> client, const std::string& prefix,
                                               const Replay& replay, JournalOpenReport* report = nullptr,
                                               size_t part_bytes = 512 << 10);

  // Replays the log under `prefix` as Open does, writing nothing (what a standby's serving
  // plane reads the registered models from); an empty prefix replays nothing.
  static Status Read(std::shared_ptr<EtcdClient> client, const std::string& prefix, const Replay& replay);

  // From now on every write requires `key` to exist with `create_revision`.
  void Fence(const std::string& key, int64_t create_revision);

  Status Append(const nlohmann::json& record) override;
  Status Compact(const std::vector<nlohmann::json>& records) override;
  uint64_t records() const override { return records_; }
  uint64_t bytes() const override { return bytes_; }
  // The etcd revision the replayed state was read at (a standby watches from the next one).
  int64_t revision() const { return revision_; }

 private:
  EtcdLog() = default;
  static Result<std::unique_ptr<EtcdLog>> Load(std::shared_ptr<EtcdClient> client, const std::string& prefix,
                                               const Replay& replay, JournalOpenReport* report, size_t part_bytes,
                                               bool write);
  std::string GenKey(uint64_t gen) const;
  // Writes `record` as the parts of `<base>/<part>` and then `<base>/end`, each write fenced.
  // The refusal of a write fenced out: another coordinator leads now.
  Status NotLeading(const std::string& what) const;
  Status WriteRecord(const std::string& base, const nlohmann::json& record);
  std::vector<EtcdCompare> FenceCompare() const;

  std::shared_ptr<EtcdClient> client_;
  std::string prefix_;
  size_t part_bytes_ = 0;
  uint64_t gen_ = 0;       // the generation being appended to
  uint64_t next_seq_ = 0;  // the next log record's number
  uint64_t records_ = 0, bytes_ = 0;
  int64_t revision_ = 0;
  std::string fence_key_;
  int64_t fence_revision_ = 0;
};

}  // namespace modelcast::coordinator
