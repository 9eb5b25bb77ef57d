#include "modelcast/tiers/range_allocator.h"

#include <algorithm>

#include <glog/logging.h>

namespace modelcast::tiers {

RangeAllocator::RangeAllocator(uint64_t capacity, uint64_t granule)
    : capacity_(capacity / granule * granule), granule_(granule) {
  CHECK(granule != 0 && (granule & (granule - 1)) == 0) << "granule must be a power of two";
  if (capacity_ > 0) free_.emplace(0, capacity_);
}

std::optional<uint64_t> RangeAllocator::Allocate(uint64_t bytes) {
  const uint64_t need = Rounded(std::max<uint64_t>(bytes, 1));
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < need) continue;
    const uint64_t offset = it->first;
    const uint64_t rest = it->second - need;
    free_.erase(it);
    if (rest > 0) free_.emplace(offset + need, rest);
    used_ += need;
    return offset;
  }
  return std::nullopt;
}

void RangeAllocator::Free(uint64_t offset, uint64_t bytes) {
  uint64_t size = Rounded(std::max<uint64_t>(bytes, 1));
  CHECK_LE(offset + size, capacity_) << "freeing a range outside the region";
  CHECK_GE(used_, size) << "freeing more than was allocated";
  used_ -= size;
  auto next = free_.lower_bound(offset);
  CHECK(next == free_.end() || next->first >= offset + size) << "double free at offset " << offset;
  if (next != free_.end() && next->first == offset + size) {
    size += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    CHECK_LE(prev->first + prev->second, offset) << "double free at offset " << offset;
    if (prev->first + prev->second == offset) {
      prev->second += size;
      return;
    }
  }
  free_.emplace(offset, size);
}

uint64_t RangeAllocator::largest_free() const {
  uint64_t best = 0;
  for (const auto& [offset, size] : free_) best = std::max(best, size);
  return best;
}

}  // namespace modelcast::tiers
