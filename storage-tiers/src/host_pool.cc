#include "modelcast/tiers/host_pool.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include <glog/logging.h>

#include "modelcast/common/file_util.h"
#include "modelcast/tiers/gpu.h"

namespace modelcast::tiers {

namespace {
constexpr uint64_t kHugePage = 2ull << 20;
}

Result<std::unique_ptr<HostPool>> HostPool::Create(uint64_t capacity, bool pin, bool populate) {
  if (capacity == 0) return InvalidArgument("host tier: capacity must be more than 0 bytes");
  capacity = AlignUp(capacity, 4096);
  std::unique_ptr<HostPool> pool(new HostPool());
  // Reserve a huge page more than asked, so the pool can start on a 2 MiB boundary. The pages
  // are committed as they are first written (MAP_NORESERVE), or all at once when pinned.
  pool->mapping_bytes_ = capacity + kHugePage;
  void* p =
      ::mmap(nullptr, pool->mapping_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return ResourceExhausted("host tier: cannot reserve " + std::to_string(capacity) +
                             " bytes of address space: " + std::string(strerror(errno)));
  }
  pool->mapping_ = static_cast<uint8_t*>(p);
  pool->base_ = reinterpret_cast<uint8_t*>(AlignUp(reinterpret_cast<uintptr_t>(p), kHugePage));
  pool->capacity_ = capacity;
  ::madvise(pool->base_, capacity, MADV_HUGEPAGE);  // advisory: ignored where THP is off
  if (populate && !pin && ::madvise(pool->base_, capacity, MADV_POPULATE_WRITE) != 0) {
    // Older kernels (before 5.14) lack it: the pages then fault in as they are first used.
    VLOG(1) << "host pool: MADV_POPULATE_WRITE: " << strerror(errno);
  }
  if (pin) {
    MC_RETURN_IF_ERROR(gpu::HostRegister(pool->base_, capacity).WithContext("host tier: pinning the pool"));
    pool->pinned_ = true;
  }
  return pool;
}

HostPool::~HostPool() {
  if (pinned_) gpu::HostUnregister(base_);
  if (mapping_) ::munmap(mapping_, mapping_bytes_);
}

}  // namespace modelcast::tiers
