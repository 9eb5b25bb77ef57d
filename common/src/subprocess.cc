#include "modelcast/common/subprocess.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>

namespace modelcast {

Result<pid_t> SpawnChild(const std::vector<std::string>& argv, const SpawnOptions& options) {
  if (argv.empty()) return InvalidArgument("SpawnChild: no program");
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return IOError("fork for " + argv[0], errno);
  if (pid > 0) return pid;
  // The child: only async-signal-safe calls until exec.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(126);  // the starter died before the request took
  if (!options.stdout_path.empty()) {
    const int out = ::open(options.stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0) ::_exit(126);
    ::dup2(out, 1);
    if (options.stderr_path == "=stdout") ::dup2(out, 2);
  }
  if (!options.stderr_path.empty() && options.stderr_path != "=stdout") {
    const int err = ::open(options.stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (err < 0) ::_exit(126);
    ::dup2(err, 2);
  }
  ::execvp(args[0], args.data());
  ::_exit(127);
}

}  // namespace modelcast
