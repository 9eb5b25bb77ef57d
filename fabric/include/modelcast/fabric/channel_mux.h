// Several plan fragments at once over one transport. A node agent has one transport (one UCX
// worker, one listening port) but may take part in scale-outs of different models at the same
// time; each fragment runs its executor on its own channel (1..255, chosen by the coordinator
// per operation), a Transport view whose message types carry the channel in their high byte.
// Messages for a channel whose fragment has not started yet wait for it, as they would on the
// transport itself; a peer's failure is reported on every channel that has a failure handler.
//
// Threads: handlers run on the inner transport's progress thread, or on the mux's own thread
// for what waited for its channel's handler. Every method may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>

#include "modelcast/common/thread_placement.h"
#include "modelcast/fabric/transport.h"

namespace modelcast::fabric {

class ChannelMux {
 public:
  // Takes over `inner`'s message and peer-failure handlers; `inner` must outlive the mux and
  // every channel it opened.
  // `thread`: its dispatch thread's nice value and CPUs.
  static Result<std::unique_ptr<ChannelMux>> Create(Transport& inner, const ThreadPlacement& thread = {});
  ~ChannelMux();

  // The view on `channel` (1..255). One open view per channel: opening one that is open is an
  // error. Closing the view (destroying it) drops what waits on the channel and what arrives
  // for it in the next 5 s (the tail of its operation); later arrivals wait for a new view.
  Result<std::unique_ptr<Transport>> Open(int channel);

  struct State;

 private:
  ChannelMux() = default;
  std::shared_ptr<State> state_;
};

}  // namespace modelcast::fabric
