// Starting helper processes (daemons a benchmark or a test runs) that never outlive their
// starter: the child asks the kernel to kill it when the thread that started it exits
// (PR_SET_PDEATHSIG), so a benchmark that fails, is stopped by a timeout or is killed leaves
// nothing behind.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "modelcast/common/status.h"

namespace modelcast {

struct SpawnOptions {
  std::string stdout_path;  // empty: inherited
  std::string stderr_path;  // empty: inherited; "=stdout": the same file as stdout
};

// Starts argv[0] (looked up in PATH when it has no '/') with `argv`. The child gets SIGKILL when
// the calling thread ends: start daemons from a thread that lives as long as they should.
Result<pid_t> SpawnChild(const std::vector<std::string>& argv, const SpawnOptions& options = {});

}  // namespace modelcast
