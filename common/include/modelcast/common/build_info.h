// What this build contains (backends compiled in) and what this machine offers (GPUs).
#pragma once

#include <string>

namespace modelcast {

struct BuildInfo {
  std::string version;
  std::string build_type;
  std::string compiler;
  bool cuda = false;
  bool verbs = false;
};

BuildInfo GetBuildInfo();

// How many CUDA devices this process can use, and why none when there are none. Safe on a
// machine without a driver: it never calls into the driver library directly.
struct GpuProbe {
  int device_count = 0;
  std::string reason;  // empty when device_count > 0
};

GpuProbe ProbeGpus();

}  // namespace modelcast
