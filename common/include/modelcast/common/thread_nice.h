// Thread priorities: how a node's background work (the fabric moving slices) yields the CPU to
// its foreground work (serving requests).
#pragma once

#include "modelcast/common/status.h"

namespace modelcast {

// Sets the calling thread's nice value (-20..19; higher yields more). Linux keeps a nice value
// per thread, so the rest of the process keeps its own. Under contention the kernel's fair
// scheduler shares a CPU between threads by weight (nice 0: 1024, nice 10: 110, nice 19: 15),
// so a thread at nice 10 next to two busy threads at nice 0 gets about 5 % of a core. Raising the
// value needs no privilege; lowering it below the current one does.
Status SetThreadNice(int nice);

// The nice value of the calling thread.
int ThreadNice();

}  // namespace modelcast
