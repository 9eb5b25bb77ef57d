// Runs a real process for integration tests: captured output, a deadline after which the
// process (and only it, by PID) is killed.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace modelcast::testing {

struct ProcessResult {
  int exit_code = -1;  // -1 when killed by a signal or the deadline
  bool timed_out = false;
  std::string out;
  std::string err;
};

ProcessResult RunProcess(const std::vector<std::string>& argv,
                         std::chrono::milliseconds deadline = std::chrono::seconds(60));

// The path of a modelcast binary (the build's bin directory, from MODELCAST_BIN_DIR).
std::string ToolPath(const std::string& name);
// A path inside the source tree (from MODELCAST_SOURCE_DIR), e.g. "cluster-configs/local.yaml".
std::string SourcePath(const std::string& relative);

}  // namespace modelcast::testing
