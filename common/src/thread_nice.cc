#include "modelcast/common/thread_nice.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace modelcast {

Status SetThreadNice(int nice) {
  if (nice < -20 || nice > 19) {
    return InvalidArgument("nice value " + std::to_string(nice) + " is outside -20..19");
  }
  const auto tid = static_cast<id_t>(::syscall(SYS_gettid));
  if (::setpriority(PRIO_PROCESS, tid, nice) != 0) return IOError("setpriority(nice " + std::to_string(nice) + ")", errno);
  return Status::Ok();
}

int ThreadNice() {
  errno = 0;
  const int n = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)));
  return errno == 0 ? n : 0;
}

}  // namespace modelcast
