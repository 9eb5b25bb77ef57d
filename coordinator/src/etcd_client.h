// A client of etcd's v3 API through the JSON gateway etcd serves on its client URLs (etcd 3.4:
// POST /v3/kv/range, /v3/kv/put, /v3/kv/txn, /v3/lease/grant, /v3/lease/keepalive,
// /v3/lease/revoke, /v3/watch; keys and values base64 in JSON, 64-bit numbers as strings).
// Endpoints are tried in order; a member that cannot be reached makes the call go on with the
// next, so one member down of three changes nothing. Thread-safe: each call opens its own
// HTTP connection (the gateway keeps none of our state).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "modelcast/common/status.h"
#include "modelcast/rpc/server.h"

namespace httplib {
class Client;
}

namespace modelcast::coordinator {

struct EtcdKv {
  std::string key, value;
  int64_t create_revision = 0, mod_revision = 0, version = 0, lease = 0;
};

// One condition of a transaction (etcd's Compare).
struct EtcdCompare {
  enum class Target { kVersion, kCreate, kMod, kValue, kLease };
  enum class Op { kEqual, kGreater, kLess, kNotEqual };
  std::string key;
  Target target = Target::kMod;
  Op op = Op::kEqual;
  int64_t number = 0;  // for kVersion, kCreate, kMod, kLease
  std::string value;   // for kValue
};

// One operation of a transaction's branch.
struct EtcdOp {
  enum class Kind { kPut, kDeleteRange, kRange };
  Kind kind = Kind::kPut;
  std::string key, value, range_end;
  int64_t lease = 0;
  static EtcdOp Put(std::string key, std::string value, int64_t lease = 0) {
    return {Kind::kPut, std::move(key), std::move(value), "", lease};
  }
  static EtcdOp Delete(std::string key, std::string range_end = "") {
    return {Kind::kDeleteRange, std::move(key), "", std::move(range_end), 0};
  }
  static EtcdOp Get(std::string key, std::string range_end = "") {
    return {Kind::kRange, std::move(key), "", std::move(range_end), 0};
  }
};

struct EtcdTxnResult {
  bool succeeded = false;
  int64_t revision = 0;                   // the store's revision after it
  std::vector<std::vector<EtcdKv>> reads;  // what each kRange op of the branch taken found
};

// A watch on a key or range: events arrive on a thread of its own until the watch is destroyed
// or the stream ends (then `on_end` with why: the member went away, or the watch was compacted
// past its start revision).
struct EtcdEvent {
  bool deleted = false;
  EtcdKv kv;
};

class EtcdWatch {
 public:
  ~EtcdWatch();
  bool ended() const { return ended_; }

 private:
  friend class EtcdClient;
  EtcdWatch() = default;
  std::atomic<bool> stop_{false}, ended_{false};
  std::shared_ptr<httplib::Client> client_;
  std::thread thread_;
};

class EtcdClient {
 public:
  // `endpoints`: "host:port" or "http://host:port", at least one; malformed ones are an error
  // naming them. Nothing is contacted here (see Status()).
  static Result<std::unique_ptr<EtcdClient>> Create(const std::vector<std::string>& endpoints,
                                                    double timeout_s = 5);

  // A member's status (the first that answers): its version, its id and its leader's.
  struct MemberStatus {
    std::string version;
    uint64_t member_id = 0, leader = 0;
  };
  Result<MemberStatus> Member() const;
  Result<std::string> Version() const;

  Result<std::vector<EtcdKv>> Range(const std::string& key, const std::string& range_end = "",
                                    int64_t* header_revision = nullptr) const;
  // Puts; the revision it made.
  Result<int64_t> Put(const std::string& key, const std::string& value, int64_t lease = 0) const;
  Result<int64_t> Delete(const std::string& key, const std::string& range_end = "") const;
  Result<EtcdTxnResult> Txn(const std::vector<EtcdCompare>& compare, const std::vector<EtcdOp>& success,
                            const std::vector<EtcdOp>& failure = {}) const;

  // Leases: granted for `ttl_s` seconds (the lease's id), kept alive (its remaining TTL; NotFound
  // once it has expired), revoked (its keys deleted).
  Result<int64_t> LeaseGrant(int64_t ttl_s) const;
  Result<int64_t> LeaseKeepAlive(int64_t lease) const;
  Status LeaseRevoke(int64_t lease) const;

  // Watches [key, range_end) from `start_revision` (0: from now).
  Result<std::unique_ptr<EtcdWatch>> Watch(const std::string& key, const std::string& range_end,
                                           int64_t start_revision, std::function<void(const EtcdEvent&)> on_event,
                                           std::function<void(const Status&)> on_end) const;

  // The end of the range of every key that starts with `prefix`.
  static std::string PrefixEnd(const std::string& prefix);

  const std::vector<std::string>& endpoints() const { return endpoints_; }

 private:
  EtcdClient() = default;
  // POSTs `body` to `path` on each member in turn until one answers; the JSON answer.
  Result<nlohmann::json> Call(const std::string& path, const nlohmann::json& body) const;

  std::vector<std::string> endpoints_;
  std::vector<rpc::Endpoint> parsed_;
  double timeout_s_ = 5;
  mutable std::atomic<size_t> preferred_{0};  // the member that answered last
};

std::string Base64Encode(const std::string& bytes);
Result<std::string> Base64Decode(const std::string& text);

}  // namespace modelcast::coordinator
