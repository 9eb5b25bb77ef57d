#include "modelcast/common/logging.h"

#include <glog/logging.h>
#include <unistd.h>

namespace modelcast {

void InitLogging(const char* argv0, int min_level) {
  static bool initialized = false;
  FLAGS_logtostderr = true;
  FLAGS_colorlogtostderr = ::isatty(STDERR_FILENO) == 1;
  FLAGS_minloglevel = min_level;
  if (!initialized) {
    google::InitGoogleLogging(argv0);
    google::InstallFailureSignalHandler();
    initialized = true;
  }
}

}  // namespace modelcast
