// First-fit allocation of byte ranges inside a fixed region (the host pool, a GPU arena).
#pragma once

#include <cstdint>
#include <map>
#include <optional>

namespace modelcast::tiers {

// Hands out [offset, offset + size) ranges of a region of `capacity` bytes, every size rounded
// up to `granule` (a power of two), so every range starts `granule`-aligned. Adjacent free
// ranges are merged on Free. Not thread-safe: the owner locks.
class RangeAllocator {
 public:
  explicit RangeAllocator(uint64_t capacity, uint64_t granule = 4096);

  // The offset of a new range of at least `bytes` bytes, or nothing when no free range is
  // large enough (even if the free bytes add up to enough: fragmentation).
  std::optional<uint64_t> Allocate(uint64_t bytes);
  // Returns a range Allocate handed out, with the size it was asked for.
  void Free(uint64_t offset, uint64_t bytes);

  uint64_t Rounded(uint64_t bytes) const { return (bytes + granule_ - 1) / granule_ * granule_; }
  uint64_t capacity() const { return capacity_; }
  uint64_t used() const { return used_; }
  uint64_t largest_free() const;

 private:
  uint64_t capacity_;
  uint64_t granule_;
  uint64_t used_ = 0;
  std::map<uint64_t, uint64_t> free_;  // offset -> size
};

}  // namespace modelcast::tiers
