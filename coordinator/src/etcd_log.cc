#include "etcd_log.h"

#include <cinttypes>
#include <cstdio>
#include <map>

namespace modelcast::coordinator {
namespace {

constexpr char kFormat[] = "modelcast-coordinator-state";

std::string Padded(uint64_t n, int width) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%0*" PRIu64, width, n);
  return buf;
}

bool ParseUint(const std::string& s, uint64_t* out) {
  if (s.empty() || s.size() > 19) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  *out = v;
  return true;
}

// One record being put together from its parts.
struct Pieces {
  std::map<uint64_t, std::string> parts;
  int64_t end = -1;  // the number of parts, once its end key is there
};

}  // namespace

std::string EtcdLog::GenKey(uint64_t gen) const { return prefix_ + "/g/" + Padded(gen, 12) + "/"; }

void EtcdLog::Fence(const std::string& key, int64_t create_revision) {
  fence_key_ = key;
  fence_revision_ = create_revision;
}

std::vector<EtcdCompare> EtcdLog::FenceCompare() const {
  if (fence_key_.empty()) return {};
  return {{fence_key_, EtcdCompare::Target::kCreate, EtcdCompare::Op::kEqual, fence_revision_, ""}};
}

Result<std::unique_ptr<EtcdLog>> EtcdLog::Open(std::shared_ptr<EtcdClient> client, const std::string& prefix,
                                               const Replay& replay, JournalOpenReport* report, size_t part_bytes) {
  return Load(std::move(client), prefix, replay, report, part_bytes, /*write=*/true);
}

Status EtcdLog::Read(std::shared_ptr<EtcdClient> client, const std::string& prefix, const Replay& replay) {
  return Load(std::move(client), prefix, replay, nullptr, 1024, /*write=*/false).status();
}

Result<std::unique_ptr<EtcdLog>> EtcdLog::Load(std::shared_ptr<EtcdClient> client, const std::string& prefix,
                                               const Replay& replay, JournalOpenReport* report, size_t part_bytes,
                                               bool write) {
  if (prefix.empty() || prefix.back() == '/') {
    return InvalidArgument("etcd state: the prefix must be a non-empty key without a trailing '/', not '" + prefix + "'");
  }
  if (part_bytes < 1024) return InvalidArgument("etcd state: parts of at least 1 KiB");
  auto log = std::unique_ptr<EtcdLog>(new EtcdLog());
  log->client_ = std::move(client);
  log->prefix_ = prefix;
  log->part_bytes_ = part_bytes;
  const std::string all = prefix + "/";
  int64_t revision = 0;
  MC_ASSIGN_OR_RETURN(auto kvs, log->client_->Range(all, EtcdClient::PrefixEnd(all), &revision));
  const std::string where = "etcd state under '" + prefix + "/'";
  // The election's key and the serving routes live beside the log (and, from coordinators before
  // the routes, where the leader's HTTP API was): not a sign of a foreign prefix.
  const std::string routes = prefix + "/routes/";
  std::erase_if(kvs, [&](const EtcdKv& kv) {
    return kv.key == prefix + "/leader" || kv.key == prefix + "/serving" || kv.key.compare(0, routes.size(), routes) == 0;
  });
  if (kvs.empty() && !write) return log;  // nothing written yet: nothing to replay
  if (kvs.empty()) {
    // A fresh prefix: marked as ours, unless another coordinator marked it first.
    const nlohmann::json format = {{"format", kFormat}, {"version", kFormatVersion}};
    MC_ASSIGN_OR_RETURN(auto t, log->client_->Txn(
                                    {{prefix + "/format", EtcdCompare::Target::kCreate, EtcdCompare::Op::kEqual, 0, ""}},
                                    {EtcdOp::Put(prefix + "/format", format.dump()), EtcdOp::Put(prefix + "/gen", "0")}));
    if (!t.succeeded) return Load(log->client_, prefix, replay, report, part_bytes, write);
    log->revision_ = t.revision;
    return log;
  }
  std::map<std::string, std::string> by_key;
  for (auto& kv : kvs) by_key[kv.key] = std::move(kv.value);
  auto format_it = by_key.find(prefix + "/format");
  if (format_it == by_key.end()) {
    return FailedPrecondition(where + " holds keys that are not a modelcast coordinator's state (such as '" +
                              kvs.front().key + "'): refusing to use or overwrite them");
  }
  const auto format = nlohmann::json::parse(format_it->second, nullptr, false);
  if (!format.is_object() || format.value("format", std::string()) != kFormat || !format.contains("version") ||
      !format["version"].is_number_integer()) {
    return FailedPrecondition(where + " is marked as something else (" + format_it->second +
                              "): refusing to use or overwrite it");
  }
  if (format["version"].get<int>() > kFormatVersion) {
    return FailedPrecondition(where + " was written by a newer modelcast (state format version " +
                              std::to_string(format["version"].get<int>()) + "; this one reads " +
                              std::to_string(kFormatVersion) + "): refusing to overwrite it");
  }
  auto gen_it = by_key.find(prefix + "/gen");
  if (gen_it == by_key.end() || !ParseUint(gen_it->second, &log->gen_)) {
    return FailedPrecondition(where + " has no readable generation ('" + prefix + "/gen')");
  }
  // The current generation's records: the snapshot's, then the log's, each whole.
  const std::string base = log->GenKey(log->gen_);
  std::map<uint64_t, Pieces> snap, logged;
  for (const auto& [key, value] : by_key) {
    if (key.compare(0, base.size(), base) != 0) continue;  // another generation's leftovers
    const std::string rest = key.substr(base.size());      // kind/<n>/<part|end>
    const auto s1 = rest.find('/'), s2 = rest.rfind('/');
    if (s1 == std::string::npos || s2 == s1) continue;
    const std::string kind = rest.substr(0, s1), part = rest.substr(s2 + 1);
    uint64_t n = 0, p = 0;
    if (!ParseUint(rest.substr(s1 + 1, s2 - s1 - 1), &n)) continue;
    if (kind != "snap" && kind != "log") continue;
    auto& pieces = (kind == "snap" ? snap : logged)[n];
    if (part == "end") {
      uint64_t count = 0;
      if (ParseUint(value, &count)) pieces.end = static_cast<int64_t>(count);
    } else if (ParseUint(part, &p)) {
      pieces.parts[p] = value;
    }
  }
  JournalOpenReport r;
  auto play = [&](const std::map<uint64_t, Pieces>& records, const char* what) -> Status {
    for (const auto& [n, pieces] : records) {
      if (pieces.end < 0 || pieces.parts.size() != static_cast<size_t>(pieces.end)) {
        r.torn_bytes += 1;  // written in part when a coordinator died: not replayed
        continue;
      }
      std::string text;
      for (const auto& [p, part] : pieces.parts) text += part;
      const auto record = nlohmann::json::parse(text, nullptr, false);
      if (record.is_discarded()) {
        return Corruption(where + ": " + what + " record " + std::to_string(n) + " is not JSON");
      }
      MC_RETURN_IF_ERROR(replay(record).WithContext(where + ": " + what + " record " + std::to_string(n)));
      r.records++;
      log->bytes_ += text.size();
    }
    return Status::Ok();
  };
  MC_RETURN_IF_ERROR(play(snap, "snapshot"));
  MC_RETURN_IF_ERROR(play(logged, "log"));
  log->records_ = r.records;
  log->next_seq_ = logged.empty() ? 0 : logged.rbegin()->first + 1;
  log->revision_ = revision;
  if (report) *report = r;
  return log;
}

Status EtcdLog::NotLeading(const std::string& what) const {
  return FailedPrecondition("etcd state: " + what + ": this coordinator no longer leads ('" + fence_key_ +
                            "' is not the one it was elected with)");
}

Status EtcdLog::WriteRecord(const std::string& base, const nlohmann::json& record) {
  const std::string text = record.dump();
  const size_t parts = text.empty() ? 1 : (text.size() + part_bytes_ - 1) / part_bytes_;
  // A record of one part (nearly all) is written with its end key in one transaction: one
  // consensus round, not two.
  if (parts == 1) {
    MC_ASSIGN_OR_RETURN(auto t, client_->Txn(FenceCompare(), {EtcdOp::Put(base + Padded(0, 6), text),
                                                              EtcdOp::Put(base + "end", "1")}));
    if (!t.succeeded) {
      return NotLeading("not written");
    }
    revision_ = t.revision;
    bytes_ += text.size();
    return Status::Ok();
  }
  // Larger: parts first, each in a request of its own (a large record does not fit one), then
  // the end key that makes the record count: a crash in between leaves a record that is not
  // replayed.
  for (size_t p = 0; p < parts; ++p) {
    MC_ASSIGN_OR_RETURN(auto t, client_->Txn(FenceCompare(), {EtcdOp::Put(base + Padded(p, 6),
                                                                          text.substr(p * part_bytes_, part_bytes_))}));
    if (!t.succeeded) {
      return NotLeading("not written");
    }
  }
  MC_ASSIGN_OR_RETURN(auto t, client_->Txn(FenceCompare(), {EtcdOp::Put(base + "end", std::to_string(parts))}));
  if (!t.succeeded) {
    return NotLeading("not written");
  }
  revision_ = t.revision;
  bytes_ += text.size();
  return Status::Ok();
}

Status EtcdLog::Append(const nlohmann::json& record) {
  MC_RETURN_IF_ERROR(WriteRecord(GenKey(gen_) + "log/" + Padded(next_seq_, 12) + "/", record));
  next_seq_++;
  records_++;
  return Status::Ok();
}

Status EtcdLog::Compact(const std::vector<nlohmann::json>& records) {
  // The snapshot goes into the next generation (cleared first: a compaction that died half
  // way may have left parts there); one transaction then makes it current and deletes the old.
  const uint64_t next = gen_ + 1;
  const std::string base = GenKey(next);
  MC_ASSIGN_OR_RETURN(auto cleared, client_->Txn(FenceCompare(), {EtcdOp::Delete(base, EtcdClient::PrefixEnd(base))}));
  if (!cleared.succeeded) {
    return NotLeading("not compacted");
  }
  const uint64_t bytes_before = bytes_;
  bytes_ = 0;
  for (size_t n = 0; n < records.size(); ++n) {
    Status st = WriteRecord(base + "snap/" + Padded(n, 12) + "/", records[n]);
    if (!st.ok()) {
      bytes_ = bytes_before;
      return st;
    }
  }
  const std::string old = GenKey(gen_);
  MC_ASSIGN_OR_RETURN(auto t, client_->Txn(FenceCompare(), {EtcdOp::Put(prefix_ + "/gen", std::to_string(next)),
                                                            EtcdOp::Delete(old, EtcdClient::PrefixEnd(old))}));
  if (!t.succeeded) {
    bytes_ = bytes_before;
    return NotLeading("not compacted");
  }
  gen_ = next;
  next_seq_ = 0;
  records_ = records.size();
  revision_ = t.revision;
  return Status::Ok();
}

}  // namespace modelcast::coordinator
