// Where a node holds a model: the tiers of its store, fastest last. The planner plans from
// them (a GPU copy is a hot source, host memory warm, SSD cold) and the store moves between them.
#pragma once

#include <cstdint>
#include <string_view>

#include "modelcast/common/status.h"

namespace modelcast {

enum class Tier : uint8_t { kNone = 0, kSsd = 1, kHost = 2, kGpu = 3 };

std::string_view TierName(Tier t);  // "none", "ssd", "host", "gpu"
Result<Tier> ParseTier(std::string_view name);

}  // namespace modelcast
