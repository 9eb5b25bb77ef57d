// The host tier's memory: one region of `capacity` bytes reserved up front, 2 MiB-aligned
// (transparent huge pages where the kernel gives them), page-locked with cudaHostRegister when
// the node has a GPU. Block buffers are ranges of it, so the fabric registers it once and
// receives straight into any block, and io_uring reads into it as registered buffers.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "modelcast/common/status.h"

namespace modelcast::tiers {

class HostPool {
 public:
  // `pin`: page-lock it for the GPU (only when gpu::Probe() found a device). `populate`: fault
  // every page in now (pinning does that anyway), so that loads do not pay for zeroing fresh
  // pages as they first touch them. A capacity of zero is an error.
  static Result<std::unique_ptr<HostPool>> Create(uint64_t capacity, bool pin, bool populate = true);
  ~HostPool();
  HostPool(const HostPool&) = delete;
  HostPool& operator=(const HostPool&) = delete;

  uint8_t* base() const { return base_; }
  uint64_t capacity() const { return capacity_; }
  bool pinned() const { return pinned_; }
  std::span<uint8_t> span() const { return {base_, capacity_}; }

 private:
  HostPool() = default;
  uint8_t* base_ = nullptr;
  uint8_t* mapping_ = nullptr;
  uint64_t mapping_bytes_ = 0;
  uint64_t capacity_ = 0;
  bool pinned_ = false;
};

}  // namespace modelcast::tiers
