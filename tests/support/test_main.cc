#include <gtest/gtest.h>

#include <cstdlib>

#include "modelcast/common/logging.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  // WARNING and above by default; GLOG_minloglevel=0 (with GLOG_v) to debug a test.
  const char* level = std::getenv("GLOG_minloglevel");
  modelcast::InitLogging(argv[0], level && *level ? std::atoi(level) : 1);
  return RUN_ALL_TESTS();
}
