// The store's state, shared by store.cc (opening, inventory, leases, models) and
// store_moves.cc (promotion, demotion, receiving, write-behind, eviction).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "modelcast/common/task_pool.h"
#include "modelcast/tiers/gpu.h"
#include "modelcast/tiers/host_pool.h"
#include "modelcast/tiers/range_allocator.h"
#include "modelcast/tiers/store.h"
#include "ssd_tier.h"

namespace modelcast::tiers {

// One block's copy in host memory or on the GPU.
struct Copy {
  bool allocated = false;
  uint64_t offset = 0;       // in the host pool or the device arena
  std::vector<bool> slices;  // by slice within the block
  uint32_t count = 0;
  int pins = 0;  // leases
  int busy = 0;  // moves reading or writing it

  bool complete() const { return allocated && count == slices.size(); }
};

struct BlockState {
  Copy copy[kNumTiers];  // [kHost] and [kGpu]; [kSsd] unused (on_ssd says)
  bool on_ssd = false;
  bool write_queued = false;
  double last_use = 0;
};

struct ModelState {
  std::shared_ptr<const model::Manifest> manifest;
  double keep_alive = 0;
  std::vector<BlockState> blocks;
  int writes_pending = 0;
  Status write_error;
  bool ssd_committed = false;
  // The tokenizer's files its manifest lists, when they were given: written beside the blocks.
  std::shared_ptr<const std::map<std::string, std::string>> text_files;
};

struct Store::Impl {
  StoreOptions opt;
  std::unique_ptr<SsdTier> ssd;
  std::unique_ptr<HostPool> host;
  std::unique_ptr<RangeAllocator> host_alloc;
  std::unique_ptr<gpu::DeviceMemory> gpu_mem;
  std::unique_ptr<RangeAllocator> gpu_alloc;
  std::unique_ptr<gpu::CopyEngine> copier;
  std::unique_ptr<IoEngine> io;
  std::unique_ptr<TaskPool> workers;  // checksums and completions
  std::unique_ptr<TaskPool> writer;   // write-behind, one block at a time

  mutable std::mutex mu;
  std::condition_variable writes_cv;
  std::map<std::string, ModelState> models;
  StoreCounters counters;

  std::mutex maintain_mu;
  std::condition_variable maintain_cv;
  bool stopping = false;
  std::thread maintainer;

  double Now() const { return opt.clock(); }
  bool HasGpu() const { return gpu_mem != nullptr; }
  uint8_t* Address(Tier tier, uint64_t offset) const {
    return (tier == Tier::kGpu ? gpu_mem->base() : host->base()) + offset;
  }
  RangeAllocator* Allocator(Tier tier) const { return tier == Tier::kGpu ? gpu_alloc.get() : host_alloc.get(); }

  // Looked up under mu; errors name the model and block.
  Result<ModelState*> FindModel(const std::string& model);
  Result<BlockState*> FindBlock(const std::string& model, uint32_t block);

  // Under mu: gives the block a buffer in `tier`, evicting unpinned blocks (LRU, blocks past
  // their keep-alive first) until one fits. Fails with ResourceExhausted naming the tier.
  Status AllocateLocked(Tier tier, const std::string& model, uint32_t block, std::unique_lock<std::mutex>& lock);
  void FreeLocked(Tier tier, ModelState& ms, uint32_t block);
  // Under mu: the block's only full copy is in host memory (received, not yet on SSD).
  static bool HostOnly(const BlockState& b);
  // Under mu: bytes that cannot be evicted from `tier`.
  uint64_t PinnedBytesLocked(Tier tier) const;
  // Under mu: frees one victim in `tier` (other than model/block); false when none is left.
  bool EvictOneLocked(Tier tier, const std::string& model, uint32_t block, std::unique_lock<std::mutex>& lock);
  // Under mu: copies a block's GPU copy down to host memory (allocating there) and frees the
  // GPU copy; the lock is held during the copy.
  Status DemoteGpuLocked(const std::string& model, uint32_t block, std::unique_lock<std::mutex>& lock);

  void QueueWriteBehindLocked(const std::string& model, uint32_t block);
  void WriteBehind(const std::string& model, uint32_t block);
};

std::string BlockName(const std::string& model, uint32_t block);

}  // namespace modelcast::tiers
