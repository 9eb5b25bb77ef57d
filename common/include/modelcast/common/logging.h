// glog set-up shared by every modelcast binary.
#pragma once

namespace modelcast {

// Logs to stderr (coloured on a terminal). `min_level` is glog's: 0 INFO, 1 WARNING, 2 ERROR.
// GLOG_v / GLOG_vmodule in the environment still control VLOG detail.
void InitLogging(const char* argv0, int min_level = 0);

}  // namespace modelcast
