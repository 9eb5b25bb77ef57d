#include "support/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fstream>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "modelcast/common/subprocess.h"
#include "support/temp_dir.h"

namespace modelcast::testing {

ProcessResult RunProcess(const std::vector<std::string>& argv, std::chrono::milliseconds deadline) {
  ProcessResult r;
  TempDir io;
  const std::string out_path = (io / "stdout").string(), err_path = (io / "stderr").string();
  // The child dies with this thread if the test is killed (SpawnChild): nothing outlives a test.
  auto spawned = SpawnChild(argv, {out_path, err_path});
  if (!spawned.ok()) {
    r.exit_code = 127;
    r.err = spawned.status().ToString();
    return r;
  }
  const pid_t pid = *spawned;
  const auto until = std::chrono::steady_clock::now() + deadline;
  int status = 0;
  for (;;) {
    const pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (std::chrono::steady_clock::now() > until) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      r.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (!r.timed_out && WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  r.out = ReadAll(out_path);
  r.err = ReadAll(err_path);
  return r;
}

Child::Child(const std::vector<std::string>& argv) {
  char templ[] = "/tmp/modelcast-child-XXXXXX";
  dir_ = ::mkdtemp(templ);
  out_path_ = dir_ + "/stdout";
  err_path_ = dir_ + "/stderr";
  auto spawned = SpawnChild(argv, {out_path_, err_path_});
  pid_ = spawned.ok() ? *spawned : -1;
  reaped_ = !spawned.ok();
}

Child::~Child() {
  if (pid_ > 0 && !reaped_) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status_, 0);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

bool Child::Running() {
  if (reaped_) return false;
  if (::waitpid(pid_, &status_, WNOHANG) == pid_) reaped_ = true;
  return !reaped_;
}

void Child::Kill(int signal) {
  if (!reaped_) ::kill(pid_, signal);
}

namespace {
// What the child has written to `path` so far (nothing yet when it has not created it).
std::string WrittenSoFar(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
}  // namespace

std::string Child::Stdout() const { return WrittenSoFar(out_path_); }

bool Child::WaitForOutput(const std::string& text, std::chrono::milliseconds deadline) {
  return WaitFor(out_path_, text, deadline);
}

bool Child::WaitForError(const std::string& text, std::chrono::milliseconds deadline) {
  return WaitFor(err_path_, text, deadline);
}

std::string Child::Stderr() const { return WrittenSoFar(err_path_); }

bool Child::WaitFor(const std::string& path, const std::string& text, std::chrono::milliseconds deadline) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  for (;;) {
    if (WrittenSoFar(path).find(text) != std::string::npos) return true;
    if (!Running() || std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

ProcessResult Child::Wait(std::chrono::milliseconds deadline) {
  ProcessResult r;
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (Running()) {
    if (std::chrono::steady_clock::now() > until) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status_, 0);
      reaped_ = true;
      r.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (!r.timed_out && WIFEXITED(status_)) r.exit_code = WEXITSTATUS(status_);
  r.out = ReadAll(out_path_);
  r.err = ReadAll(err_path_);
  return r;
}

std::string ToolPath(const std::string& name) {
  const char* dir = std::getenv("MODELCAST_BIN_DIR");
  return std::string(dir && *dir ? dir : MODELCAST_TEST_BIN_DIR) + "/" + name;
}

std::string SourcePath(const std::string& relative) {
  const char* dir = std::getenv("MODELCAST_SOURCE_DIR");
  return std::string(dir && *dir ? dir : MODELCAST_TEST_SOURCE_DIR) + "/" + relative;
}

}  // namespace modelcast::testing
