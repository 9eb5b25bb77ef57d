// Reading what agents report they hold, for the coordinator's choices.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "modelcast/common/status.h"
#include "modelcast/common/tier.h"
#include "modelcast/planner/slice_set.h"
#include "modelcast_types.h"

namespace modelcast::coordinator {

using planner::SliceSet;

inline double UnixNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

inline uint32_t Count(const std::vector<rpc::SliceRun>& runs) {
  uint32_t n = 0;
  for (const auto& r : runs) n += static_cast<uint32_t>(r.count);
  return n;
}

// The fastest tier of `inventory` holding every slice of `model`.
inline Tier CompleteTier(const rpc::NodeInventory& inventory, const std::string& model, uint32_t slices) {
  for (const auto& h : inventory.models) {
    if (h.model != model) continue;
    if (Count(h.gpu) == slices) return Tier::kGpu;
    if (Count(h.host) == slices) return Tier::kHost;
    if (Count(h.ssd) == slices) return Tier::kSsd;
  }
  return Tier::kNone;
}

// Every slice of `model` the node holds in some tier.
inline SliceSet Held(const rpc::NodeInventory& inventory, const std::string& model, uint32_t slices) {
  SliceSet held(slices);
  for (const auto& h : inventory.models) {
    if (h.model != model) continue;
    for (const auto* runs : {&h.ssd, &h.host, &h.gpu}) {
      for (const auto& r : *runs) {
        for (int32_t s = r.first; s < r.first + r.count; ++s) {
          if (s >= 0 && static_cast<uint32_t>(s) < slices) held.Set(static_cast<uint32_t>(s));
        }
      }
    }
  }
  return held;
}

// Free GPU memory: the GPUs' own figure, else what the store's GPU tier has left.
inline int64_t GpuFree(const rpc::NodeInventory& inventory) {
  int64_t free = 0;
  for (const auto& g : inventory.gpus) free += g.free_bytes;
  if (!inventory.gpus.empty()) return free;
  for (const auto& t : inventory.tiers) {
    if (t.tier == "gpu") free += t.capacity - t.used;
  }
  return free;
}

inline Result<std::pair<std::string, int>> SplitAddress(const std::string& address) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 == address.size()) {
    return InvalidArgument("address '" + address + "' has no port");
  }
  return std::make_pair(address.substr(0, colon), std::stoi(address.substr(colon + 1)));
}

}  // namespace modelcast::coordinator
