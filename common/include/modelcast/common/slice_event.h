// The progress event of one slice arriving somewhere: over the network (the fabric's executor)
// or from another tier of the node's store (SSD -> host, host -> GPU). One type for both, so
// that whoever waits for a model's slices (the pipeline runtime, the agent's progress report)
// watches one stream whatever the source.
#pragma once

#include <cstdint>
#include <string>

namespace modelcast {

struct SliceEvent {
  std::string model;
  uint32_t slice = 0;
  std::string source;  // the peer it came from, or the tier it was copied from ("ssd", "host", "gpu")
  uint64_t bytes = 0;
  double started = 0;   // seconds since the run or request began: the copy or payload was started
                        // (for a fabric write: the previous slice from that peer landed, or the run began)
  double finished = 0;  // it landed and its checksum matched (or, for a GPU copy, the copy completed)
};

}  // namespace modelcast
