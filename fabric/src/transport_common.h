// What every transport backend shares: "ip:port" addresses, the bookkeeping of the handlers
// (messages that arrive before a handler is set wait for it), and the counters behind stats().
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <deque>
#include <mutex>
#include <string>
#include <utility>

#include "event_loop.h"
#include "modelcast/fabric/transport.h"

namespace modelcast::fabric {

Result<sockaddr_in> ParseAddress(const std::string& text);
std::string FormatAddress(const sockaddr* address);

// Checks a Write's ranges against the local region and the peer's remote region: an error
// naming the peer and the range that falls outside, or Ok.
Status CheckWriteRanges(const std::string& peer, const MemoryRegion& local, uint64_t local_offset,
                        const RemoteRegion& remote, uint64_t remote_offset, uint64_t length);

class Handlers {
 public:
  // Sets the message handler; messages held so far go to it, in order, on `loop`.
  void SetMessageHandler(MessageHandler handler, EventLoop& loop);
  void SetFailureHandler(PeerFailureHandler handler);
  // Hands a message to the handler, or holds it (at most kMaxHeld; beyond that the message is
  // refused with accept(nullptr) and a warning naming `node`).
  void Deliver(IncomingMessage message, AcceptPayload accept, const std::string& node);
  void ReportFailure(const std::string& peer, const Status& cause);
  // Refuses (accept(nullptr)) every message held for want of a handler.
  void DropHeld();
  // A connected peer is gone. One that said goodbye first left: it is reported (whoever waits
  // on it must stop waiting) but not logged as a failure. Returns whether it failed.
  bool PeerGone(const std::string& node, const std::string& peer, bool departed, const Status& cause);

  static constexpr size_t kMaxHeld = 4096;

 private:
  std::mutex mu_;
  MessageHandler message_handler_;
  std::deque<std::pair<IncomingMessage, AcceptPayload>> held_;
  PeerFailureHandler failure_handler_;
};

struct Counters {
  std::atomic<uint64_t> bytes_sent{0}, bytes_received{0}, messages_sent{0}, messages_received{0}, writes{0},
      peer_failures{0}, gpu_staged{0}, regions{0};
  TransportStats Snapshot() const;
};

}  // namespace modelcast::fabric
