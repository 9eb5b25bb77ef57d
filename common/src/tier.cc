#include "modelcast/common/tier.h"

#include <string>

namespace modelcast {

std::string_view TierName(Tier t) {
  switch (t) {
    case Tier::kNone:
      return "none";
    case Tier::kSsd:
      return "ssd";
    case Tier::kHost:
      return "host";
    case Tier::kGpu:
      return "gpu";
  }
  return "none";
}

Result<Tier> ParseTier(std::string_view name) {
  for (Tier t : {Tier::kNone, Tier::kSsd, Tier::kHost, Tier::kGpu}) {
    if (TierName(t) == name) return t;
  }
  return InvalidArgument("unknown tier '" + std::string(name) + "' (expected gpu, host, ssd or none)");
}

}  // namespace modelcast
