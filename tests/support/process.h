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

// A process started in the background; killed (by its PID, SIGKILL) if still running when
// destroyed.
class Child {
 public:
  explicit Child(const std::vector<std::string>& argv);
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  int pid() const { return pid_; }
  bool Running();
  void Kill(int signal);
  // Waits until the process has written `text` to its stdout (true), or has exited or
  // `deadline` passed without it (false).
  bool WaitForOutput(const std::string& text, std::chrono::milliseconds deadline);
  // The same for its stderr (where the daemons log).
  bool WaitForError(const std::string& text, std::chrono::milliseconds deadline);
  // What the process has written to stdout (stderr) so far.
  std::string Stdout() const;
  std::string Stderr() const;
  // Waits for the process to exit, at most `deadline`; kills it when it does not.
  ProcessResult Wait(std::chrono::milliseconds deadline);

 private:
  bool WaitFor(const std::string& path, const std::string& text, std::chrono::milliseconds deadline);

  int pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  std::string out_path_, err_path_;
  std::string dir_;
};

// The path of a modelcast binary (the build's bin directory, from MODELCAST_BIN_DIR).
std::string ToolPath(const std::string& name);
// A path inside the source tree (from MODELCAST_SOURCE_DIR), e.g. "cluster-configs/local.yaml".
std::string SourcePath(const std::string& relative);

}  // namespace modelcast::testing
