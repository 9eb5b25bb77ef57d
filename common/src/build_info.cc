#include "modelcast/common/build_info.h"

#include "modelcast/common/build_config.h"

#if MODELCAST_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace modelcast {

BuildInfo GetBuildInfo() {
  BuildInfo b;
  b.version = MODELCAST_VERSION;
  b.build_type = MODELCAST_BUILD_TYPE;
  b.compiler = MODELCAST_COMPILER;
  b.cuda = MODELCAST_HAVE_CUDA;
  b.verbs = MODELCAST_HAVE_VERBS;
  return b;
}

GpuProbe ProbeGpus() {
  GpuProbe p;
#if MODELCAST_HAVE_CUDA
  int n = 0;  // cudaGetDeviceCount leaves it untouched when there is no driver
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    p.reason = std::string("CUDA reports ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
    cudaGetLastError();  // clear the sticky error for later callers
    return p;
  }
  p.device_count = n;
  if (n == 0) p.reason = "CUDA reports no devices";
#else
  p.reason = "modelcast was built without CUDA";
#endif
  return p;
}

}  // namespace modelcast
