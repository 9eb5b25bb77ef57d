// The tiered store of one node: model slices on SSD (cold), in host memory (warm) and on the
// GPU (hot), moved between tiers on request, evicted LRU within hard capacities.
//
// What lives where is tracked per slice; memory is allocated per block (a block's buffer is
// contiguous, so a pipeline stage can run on it and the fabric can write any slice into it).
// Every slice read from SSD or copied between tiers is checked or reported with the same
// SliceEvent the fabric emits. A block pinned by a Lease (a transfer reading it, a stage
// running on it) is never evicted; a block whose only copy is in host memory (received, not yet
// written behind to SSD) is never evicted either.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "modelcast/common/config.h"
#include "modelcast/common/slice_event.h"
#include "modelcast/common/status.h"
#include "modelcast/common/tier.h"
#include "modelcast/model/manifest.h"
#include "modelcast/tiers/io_engine.h"

namespace modelcast::tiers {

using ::modelcast::ParseTier;
using ::modelcast::Tier;
using ::modelcast::TierName;
// Arrays by tier are indexed by the Tier's value (kNone's slot stays empty).
inline constexpr int kNumTiers = 4;

struct StoreOptions {
  std::filesystem::path ssd_dir;
  uint64_t ssd_capacity = 0;   // bytes of block files
  uint64_t host_capacity = 0;  // bytes of the host pool
  bool populate_host = true;   // fault the pool in at start (as pinning does), not on first use
  uint64_t gpu_capacity = 0;   // bytes of the device arena (0: no GPU tier even with a GPU)
  int gpu_device = 0;
  double keep_alive = 300;    // seconds a block stays in its tier after last use before it is
                              // demoted (GPU -> host) or first in line for eviction
  unsigned queue_depth = 32;  // SSD reads in flight
  uint64_t io_chunk = 1ull << 20;
  bool io_uring = true;           // false: pread threads (for comparison; the fallback uses them)
  double ssd_read_rate = 0;       // emulation: SSD reads at most this many bytes/s (0: the device's speed)
  int copy_streams = 4;           // CUDA streams for host <-> GPU copies
  unsigned workers = 0;           // checksum and completion threads (0: one per core, at most 4)
  double maintain_interval = 1;   // seconds between keep-alive sweeps (0: only when Maintain() is called)
  std::function<double()> clock;  // seconds; steady_clock when empty (tests pass their own)

  // The `store` section of a node config:
  //   store: {ssd_dir: /var/lib/modelcast, ssd_capacity: 2TiB, host_capacity: 512GiB,
  //           gpu_capacity: 70GiB, keep_alive: 300s, queue_depth: 32, io_chunk: 1MiB,
  //           ssd_read_rate: 3GB/s}   # emulation only: a slower SSD than the one there
  static Result<StoreOptions> FromConfig(const ConfigNode& node);
};

struct TierUsage {
  Tier tier = Tier::kSsd;
  uint64_t capacity = 0;
  uint64_t used = 0;
  uint64_t pinned = 0;  // bytes of blocks held by leases or only in this tier
};

struct ModelHoldings {
  std::string model;
  uint64_t bytes = 0;  // the model's total (manifest)
  uint32_t num_slices = 0;
  std::vector<uint32_t> slices[kNumTiers];  // sorted slice indices held in each tier
  bool ssd_complete = false;                // a committed package on SSD
  std::string ssd_error;                    // the last write-behind failed: why (the SSD holds no copy)
};

struct Inventory {
  std::vector<TierUsage> tiers;  // the tiers this node has
  std::vector<ModelHoldings> models;
  const ModelHoldings* Find(const std::string& model) const;
  const TierUsage* Usage(Tier tier) const;  // nullptr for a tier this node lacks
};

struct StoreCounters {
  uint64_t bytes_read_ssd = 0;
  uint64_t bytes_to_gpu = 0;
  uint64_t bytes_written_ssd = 0;
  uint64_t evictions[kNumTiers] = {0, 0, 0, 0};
  uint64_t demotions = 0;       // GPU -> host copies (keep-alive expiry or eviction)
  uint64_t corrupt_slices = 0;  // read from SSD and failed their checksum
  uint64_t uring_refused = 0, direct_refused = 0;
};

class Store;

// A block (or slice) pinned in one tier: it is not evicted while the lease lives.
class Lease {
 public:
  Lease() = default;
  ~Lease();
  Lease(Lease&& other) noexcept;
  Lease& operator=(Lease&& other) noexcept;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;

  uint8_t* data() const { return data_; }                // the block's buffer (host or device address)
  uint64_t size() const { return size_; }                // the block's file_bytes
  uint64_t pool_offset() const { return pool_offset_; }  // within the host pool or device arena
  Tier tier() const { return tier_; }
  uint32_t block() const { return block_; }
  void Release();

 private:
  friend class Store;
  Store* store_ = nullptr;
  std::string model_;
  uint32_t block_ = 0;
  Tier tier_ = Tier::kHost;
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  uint64_t pool_offset_ = 0;
};

// An asynchronous Promote or Demote.
class Request {
 public:
  // Waits until every slice has arrived or the request failed; DeadlineExceeded after `timeout`.
  Status Wait(std::chrono::milliseconds timeout);
  bool done() const;
  uint32_t slices_total() const { return slices_total_; }
  std::chrono::steady_clock::time_point start_time() const { return start_; }

  // Reported by the store's movers.
  void SliceDone(const SliceEvent& event);
  void Fail(const Status& status);
  void BlockFinished();

 private:
  friend class Store;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  Status status_;
  uint32_t slices_total_ = 0;
  std::atomic<uint32_t> slices_done_{0};
  uint32_t blocks_left_ = 0;
  std::function<void(const SliceEvent&)> on_slice;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

struct MoveOptions {
  std::function<void(const SliceEvent&)> on_slice;  // per slice arriving in the target tier; must not block
};

class Store {
 public:
  // Opens the SSD tier (cleaning up interrupted writes, re-verifying untrusted blocks), creates
  // the host pool (pinned when a GPU exists) and the GPU arena (when a GPU exists and
  // gpu_capacity > 0), and starts the I/O engine.
  static Result<std::unique_ptr<Store>> Open(const StoreOptions& options);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  bool has_gpu() const;
  int gpu_device() const;  // the device of the GPU tier (when has_gpu())
  Inventory GetInventory() const;
  StoreCounters counters() const;
  std::shared_ptr<const model::Manifest> FindModel(const std::string& model) const;

  // Makes a model known that is not on this node's SSD (it will be received). With `replace`,
  // a different model of the same name (another version) is dropped from host and GPU (it must
  // not be pinned) and its SSD copy is replaced once the new one is written.
  Status AddModel(const model::Manifest& manifest, bool replace = false);
  void SetKeepAlive(const std::string& model, double seconds);
  // The files the model's manifest lists beside its blocks (tokenizer.json, ...), each checked
  // against the manifest (name, size, checksum; every listed file, nothing else): the SSD copy
  // gets them when it is committed (at once, if it already is), so that it is a whole package.
  Status PutTextFiles(const std::string& model, std::map<std::string, std::string> files);

  // Copies `blocks` (empty: all) of a model up to `to` (host or GPU) from wherever they are,
  // allocating (and evicting) in the target tier. SSD -> GPU goes through the host pool, each
  // slice copied up as soon as its read is verified.
  Result<std::shared_ptr<Request>> Promote(const std::string& model, std::vector<uint32_t> blocks, Tier to,
                                           MoveOptions options = {});
  // Moves blocks down to `to`: GPU copies are copied to host memory (if it lacks them) and freed;
  // host copies are written to SSD (if it lacks them) and freed. Pinned blocks are an error.
  Result<std::shared_ptr<Request>> Demote(const std::string& model, std::vector<uint32_t> blocks, Tier to);

  // Pins a block resident (every slice) in `tier`; the lease's data() is its buffer.
  Result<Lease> Acquire(const std::string& model, uint32_t block, Tier tier);

  // Receiving: a host buffer for a block (allocated if needed, pinned by the lease), for the
  // fabric to write slices into; Landed() records a slice whose checksum the receiver has
  // checked. A block complete in host memory and missing on SSD is written behind.
  Result<Lease> ReserveForReceive(const std::string& model, uint32_t block);
  Status Landed(const std::string& model, uint32_t slice);
  // Waits until the model's received blocks are on SSD; the first write-behind error, if any.
  Status FlushWriteBehind(const std::string& model, std::chrono::milliseconds timeout);

  // The host pool, for the fabric to register once (Lease::pool_offset() is relative to it).
  uint8_t* host_pool_base() const;
  uint64_t host_pool_size() const;

  // Keep-alive sweep: GPU copies unused for longer than their model's keep-alive are demoted
  // to host memory. Runs every maintain_interval seconds; tests call it directly.
  void Maintain();

  // Drops every copy of the model from this node (SSD included). Pinned blocks are an error.
  Status RemoveModel(const std::string& model);

  struct Impl;  // opaque (store_impl.h)

 private:
  explicit Store(std::unique_ptr<Impl> impl);
  friend class Lease;
  void ReleaseLease(const std::string& model, uint32_t block, Tier tier);
  // A lease on a block whose copy in `tier` (at `offset` in its pool) the caller has just pinned.
  Lease MakeLease(const std::string& model, uint32_t block, Tier tier, uint64_t offset, uint64_t size);
  std::unique_ptr<Impl> impl_;
};

}  // namespace modelcast::tiers
