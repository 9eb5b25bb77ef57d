// One run of a plan fragment: what ExecuteFragment does once it has checked its input.
//
// Ownership and threads, which every callback of a run relies on:
// - A run's state is shared: ExecuteFragment holds one reference, and every callback it hands
//   the transport (each completion, the message handler, the peer-failure handler) holds
//   another, so the state is freed by whichever thread drops the last one. No callback can find
//   it gone, however late the transport or the channel mux runs it.
// - Its state is guarded by one mutex, and touched from three kinds of thread: the caller's
//   (which starts the run, waits for its end, then drains it), the transport's progress thread
//   (completions, messages, peer failures: never blocked on anything but that mutex) and the
//   run's verifier thread (checksums and options.on_slice, under the mutex).
// - The run is live from its start until the caller's wait ends: it then marks itself ended,
//   under the mutex, before anything else. A callback that comes after that (a completion of an
//   operation still in flight, a message or a peer failure delivered to a handler that was being
//   replaced) finds it ended and only records that it came (what Drain waits for): it starts no
//   transport operation, touches neither the buffer nor the transport, and never calls on_slice.
//   So the caller may destroy its transport view (a channel) once the run has returned.
// - The verifier thread is joined before the run returns. Memory the transport may still move
//   after the run (only where Drain gave up on a peer that never answered) is the caller's
//   buffer and registered regions: options.keep_alive keeps them for as long as a callback
//   remains.
#pragma once

#include <vector>

#include "modelcast/fabric/executor.h"

namespace modelcast::fabric {

// Runs `fragment` (checked by the caller against `layout`), by write where `writes`.
Result<ExecutorReport> RunFragment(Transport& transport, const ModelLayout& layout, uint8_t* buffer,
                                   const std::vector<bool>& held, const PlanFragment& fragment,
                                   const ExecutorOptions& options, bool writes);

}  // namespace modelcast::fabric
