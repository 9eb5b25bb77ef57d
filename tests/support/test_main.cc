#include <gtest/gtest.h>

#include "modelcast/common/logging.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  modelcast::InitLogging(argv[0], /*min_level=*/1);
  return RUN_ALL_TESTS();
}
