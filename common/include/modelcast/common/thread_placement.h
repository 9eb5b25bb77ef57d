// Where a thread runs and how it yields: how a node's background work (the fabric moving
// slices) leaves the CPU to its foreground work (serving requests).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "modelcast/common/status.h"

namespace modelcast {

// A thread's nice value and the CPUs it may run on. Linux keeps both per thread, so the rest of
// the process keeps its own. Under contention the kernel's fair scheduler shares a CPU between
// threads by weight (nice 0: 1024, nice 10: 110, nice 19: 15): a thread at nice 10 beside two
// busy threads at nice 0 gets about 5 % of a core. Work the kernel does in softirq for a thread
// (TCP's transmit tasklets and pacing timers) runs on the CPU the thread runs on, but no nice
// value bounds it: only the CPUs do.
struct ThreadPlacement {
  int nice = 0;           // -20..19; 0: as the process's other threads
  std::vector<int> cpus;  // empty: wherever the process may run

  bool is_default() const { return nice == 0 && cpus.empty(); }
  // Applies it to the calling thread. Raising the nice value needs no privilege; lowering it
  // does. The CPUs must exist.
  Status Apply() const;
  std::string ToString() const;  // "nice 10, cpus 2-3"
};

// "0-3,8,10-11" -> {0, 1, 2, 3, 8, 10, 11}; refuses an empty list, a bad range or a repeat.
Result<std::vector<int>> ParseCpuList(std::string_view text);
std::string FormatCpuList(const std::vector<int>& cpus);

int ThreadNice();               // the calling thread's nice value
std::vector<int> ThreadCpus();  // the CPUs the calling thread may run on

}  // namespace modelcast
