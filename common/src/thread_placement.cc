#include "modelcast/common/thread_placement.h"

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <set>

namespace modelcast {
namespace {

id_t Tid() { return static_cast<id_t>(::syscall(SYS_gettid)); }

}  // namespace

Status ThreadPlacement::Apply() const {
  if (nice < -20 || nice > 19) return InvalidArgument("nice value " + std::to_string(nice) + " is outside -20..19");
  if (!cpus.empty()) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int c : cpus) {
      if (c < 0 || c >= CPU_SETSIZE) return InvalidArgument("CPU " + std::to_string(c) + " is out of range");
      CPU_SET(c, &set);
    }
    if (const int err = ::pthread_setaffinity_np(::pthread_self(), sizeof(set), &set); err != 0) {
      return IOError("running on CPUs " + FormatCpuList(cpus) + " (this machine has " +
                         std::to_string(::sysconf(_SC_NPROCESSORS_ONLN)) + " online)",
                     err);
    }
  }
  if (nice != 0 && ::setpriority(PRIO_PROCESS, Tid(), nice) != 0) {
    return IOError("setpriority(nice " + std::to_string(nice) + ")", errno);
  }
  return Status::Ok();
}

std::string ThreadPlacement::ToString() const {
  std::string s = "nice " + std::to_string(nice);
  if (!cpus.empty()) s += ", cpus " + FormatCpuList(cpus);
  return s;
}

Result<std::vector<int>> ParseCpuList(std::string_view text) {
  auto bad = [&](const std::string& why) {
    return InvalidArgument("'" + std::string(text) + "' is not a CPU list like 0-3,8 (" + why + ")");
  };
  auto number = [](std::string_view s, int* out) {
    if (s.empty() || s.size() > 5 || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return false;
    }
    *out = std::stoi(std::string(s));
    return true;
  };
  std::set<int> seen;
  std::vector<int> cpus;
  if (text.empty()) return bad("it is empty");
  for (size_t at = 0; at <= text.size();) {
    const size_t comma = std::min(text.find(',', at), text.size());
    const std::string_view item = text.substr(at, comma - at);
    const size_t dash = item.find('-');
    int lo, hi;
    if (dash == std::string_view::npos) {
      if (!number(item, &lo)) return bad("'" + std::string(item) + "' is not a CPU number");
      hi = lo;
    } else if (!number(item.substr(0, dash), &lo) || !number(item.substr(dash + 1), &hi) || hi < lo) {
      return bad("'" + std::string(item) + "' is not a range low-high");
    }
    if (hi >= CPU_SETSIZE) return bad("CPU " + std::to_string(hi) + " is beyond " + std::to_string(CPU_SETSIZE - 1));
    for (int c = lo; c <= hi; ++c) {
      if (!seen.insert(c).second) return bad("CPU " + std::to_string(c) + " is listed twice");
      cpus.push_back(c);
    }
    at = comma + 1;
  }
  std::sort(cpus.begin(), cpus.end());
  return cpus;
}

std::string FormatCpuList(const std::vector<int>& cpus) {
  std::string s;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!s.empty()) s += ",";
    s += std::to_string(cpus[i]);
    if (j > i) s += "-" + std::to_string(cpus[j]);
    i = j + 1;
  }
  return s;
}

int ThreadNice() {
  errno = 0;
  const int n = ::getpriority(PRIO_PROCESS, Tid());
  return errno == 0 ? n : 0;
}

std::vector<int> ThreadCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (::pthread_getaffinity_np(::pthread_self(), sizeof(set), &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  return cpus;
}

}  // namespace modelcast
