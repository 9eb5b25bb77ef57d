// The fabric's transport: how node agents move bytes between each other.
//
// One interface, several backends (UCX by default, raw verbs, a fault-injecting wrapper),
// chosen at run time by capability, not by #ifdef. Everything a transport does runs on its
// own progress thread, which sleeps on the transport's event fd when there is nothing to do;
// callbacks (completions, incoming messages, peer failures) run on that thread and must not
// block. Every method may be called from any thread, and no callback ever runs inside the
// call that started it (so callers may hold their own locks while calling in).
//
// Peers are named; a dead or unreachable peer is an error naming it, never a hang.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "modelcast/common/status.h"

namespace modelcast::fabric {

struct Capabilities {
  std::string backend;  // "ucx", "verbs", "fault(ucx)"
  bool one_sided_write = false;
  bool one_sided_read = false;
  // Every write's arrival can be told to the receiver on its own, promptly (RDMA WRITE WITH
  // IMM). Without it a write is confirmed by a flush, and UCX's TCP flush waits for every
  // write in flight to the peer, so confirmations come in bursts and relays forward late.
  bool write_notify = false;
  bool gpu_memory = false;         // registers and moves GPU memory directly
  uint64_t max_message = 0;        // largest payload of one Send or Write
  double estimated_bandwidth = 0;  // bytes/s to one peer; 0 when unknown
};

enum class MemoryKind { kHost, kGpu };

// What a peer needs to write into a registered region: serialisable, so that it can travel
// over the control plane.
struct RemoteRegion {
  uint64_t address = 0;
  uint64_t length = 0;
  std::string key;  // backend-specific (a packed UCX rkey, a verbs rkey)

  std::string Serialize() const;
  static Result<RemoteRegion> Parse(std::string_view text);
};

// Registered memory, unregistered on destruction. Must not outlive its transport.
class MemoryRegion {
 public:
  virtual ~MemoryRegion() = default;
  virtual uint8_t* data() const = 0;
  virtual uint64_t size() const = 0;
  virtual MemoryKind kind() const = 0;
  virtual const RemoteRegion& remote() const = 0;
};

using Done = std::function<void(Status)>;

struct IncomingMessage {
  std::string peer;
  uint16_t type = 0;
  std::vector<uint8_t> header;
  uint64_t payload_size = 0;
};

// Given to a message handler with every incoming message that carries a payload: call it once,
// with where the payload must land (`size` bytes there, which the caller checked) and a
// completion, or with nullptr to discard it. It may be called later, from any thread.
using AcceptPayload = std::function<void(uint8_t* destination, Done done)>;
using MessageHandler = std::function<void(const IncomingMessage& message, AcceptPayload accept)>;
// Called when a connected peer fails or leaves (a peer that closed its transport says so
// first: its departure is reported too, but not counted as a failure).
using PeerFailureHandler = std::function<void(const std::string& peer, const Status& cause)>;

struct TransportStats {
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t messages_sent = 0;
  uint64_t messages_received = 0;
  uint64_t writes = 0;
  uint64_t peer_failures = 0;
  uint64_t gpu_staged = 0;  // GPU-bound registrations refused for want of GPU support (caller stages)
  uint64_t regions = 0;     // memory registrations alive now (made by Register, not yet destroyed)
};

class Transport {
 public:
  virtual ~Transport() = default;

  virtual const Capabilities& capabilities() const = 0;
  // This node's name, as peers know it.
  virtual const std::string& name() const = 0;
  // Where peers connect ("ip:port"); valid after Start.
  virtual std::string address() const = 0;

  // Starts listening and the progress thread.
  virtual Status Start() = 0;
  // Closes every endpoint (in-flight operations fail) and stops the progress thread, waiting
  // at most a few seconds. Idempotent; the destructor calls it.
  virtual void Stop() = 0;

  // Connects to `peer` at `address` ("ip:port"). `done` runs once the peer has answered (both
  // sides then know each other by name) or the attempt failed or timed out.
  virtual void Connect(const std::string& peer, const std::string& address, Done done) = 0;

  // Registers [data, data + size) for local sends and remote writes. GPU memory is refused
  // with FailedPrecondition when the backend cannot move it (the caller stages it through
  // host memory, and the refusal is logged once and counted).
  virtual Result<std::unique_ptr<MemoryRegion>> Register(void* data, uint64_t size, MemoryKind kind) = 0;

  // A message: `header` (small, copied) and an optional payload (left in place until `done`).
  // `done` runs when the payload may be reused, or with the error.
  virtual void Send(const std::string& peer, uint16_t type, std::span<const uint8_t> header,
                    std::span<const uint8_t> payload, Done done) = 0;

  // One-sided write of local bytes (inside `local`) to `remote` at `remote_offset`. `done`
  // runs at local completion; Flush completes once every earlier write to that peer has
  // landed. Unimplemented where capabilities().one_sided_write is false.
  virtual void Write(const std::string& peer, const MemoryRegion& local, uint64_t local_offset,
                     const RemoteRegion& remote, uint64_t remote_offset, uint64_t length, Done done) = 0;
  virtual void Flush(const std::string& peer, Done done) = 0;

  // Drops the connection to `peer` at once: what is in flight to or from it fails with
  // `cause`, and the peer-failure handler runs; a later Connect makes a new connection. For
  // a peer that has gone silent (a cut link), whose operations would otherwise wait for the
  // kernel's TCP timeout. A backend that cannot does nothing.
  virtual void AbortPeer(const std::string& peer, const Status& cause) {
    (void)peer;
    (void)cause;
  }

  // Whether a connection to `peer` is up now (it may fail at any moment after). A failure is
  // reported only to the handler set when it happens: a user that sets its failure handler and
  // then finds each of its peers connected misses no failure of theirs.
  virtual bool Connected(const std::string& peer) = 0;

  // Messages arriving while no handler is set are held (a bounded number) and delivered in
  // order to the next handler.
  //
  // Handlers run on the progress thread. Replacing or clearing one does not wait for a call of
  // the old one already under way: the old handler may still run once more, for a message or a
  // failure whose delivery had begun, after the setter returned. So a handler must own what it
  // touches (capture a shared_ptr, not `this`) and check, under its own lock, whether it is
  // still wanted; the setters never block on a running handler, and may be called holding a
  // lock that handlers take.
  virtual void SetMessageHandler(MessageHandler handler) = 0;
  virtual void SetPeerFailureHandler(PeerFailureHandler handler) = 0;

  virtual TransportStats stats() const = 0;
};

// Connects to `peer` at `address`, retrying while it starts up, for at most `deadline` seconds.
Status ConnectWithRetry(Transport& transport, const std::string& peer, const std::string& address, double deadline);

}  // namespace modelcast::fabric
