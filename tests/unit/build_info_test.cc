#include <gtest/gtest.h>

#include "modelcast/common/build_info.h"

namespace modelcast {
namespace {

TEST(BuildInfoTest, ReportsTheBuild) {
  const BuildInfo b = GetBuildInfo();
  EXPECT_FALSE(b.version.empty());
  EXPECT_FALSE(b.build_type.empty());
  EXPECT_FALSE(b.compiler.empty());
}

// Without a GPU (or without CUDA in the build) the probe reports zero devices and says why,
// instead of failing or crashing; with one it reports the count and no reason.
TEST(BuildInfoTest, GpuProbeIsSafeWithoutADriver) {
  const GpuProbe p = ProbeGpus();
  EXPECT_GE(p.device_count, 0);
  if (p.device_count == 0) {
    EXPECT_FALSE(p.reason.empty());
  } else {
    EXPECT_TRUE(p.reason.empty());
  }
  const GpuProbe again = ProbeGpus();  // no sticky state from the first call
  EXPECT_EQ(again.device_count, p.device_count);
}

}  // namespace
}  // namespace modelcast
