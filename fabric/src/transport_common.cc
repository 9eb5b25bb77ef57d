#include "transport_common.h"

#include <arpa/inet.h>
#include <glog/logging.h>

#include <chrono>
#include <cstdlib>
#include <future>
#include <thread>

namespace modelcast::fabric {

Result<sockaddr_in> ParseAddress(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos) return InvalidArgument("address '" + text + "' is not ip:port");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  const std::string host = text.substr(0, colon);
  if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1)
    return InvalidArgument("address '" + text + "': bad IPv4 address");
  char* end = nullptr;
  const long port = std::strtol(text.c_str() + colon + 1, &end, 10);
  if (end == text.c_str() + colon + 1 || *end != '\0' || port < 0 || port > 65535)
    return InvalidArgument("address '" + text + "': bad port");
  a.sin_port = htons(static_cast<uint16_t>(port));
  return a;
}

std::string FormatAddress(const sockaddr* s) {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (s != nullptr && s->sa_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(s);
    ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    port = ntohs(a->sin_port);
  }
  return std::string(host) + ":" + std::to_string(port);
}

Status CheckWriteRanges(const std::string& peer, const MemoryRegion& local, uint64_t local_offset,
                        const RemoteRegion& remote, uint64_t remote_offset, uint64_t length) {
  if (local_offset > local.size() || length > local.size() - local_offset) {
    return OutOfRange("write to '" + peer + "': local range [" + std::to_string(local_offset) + ", +" +
                      std::to_string(length) + ") is outside the registered region");
  }
  if (remote_offset > remote.length || length > remote.length - remote_offset) {
    return OutOfRange("write to '" + peer + "': remote range [" + std::to_string(remote_offset) + ", +" +
                      std::to_string(length) + ") is outside the peer's " + std::to_string(remote.length) +
                      "-byte region");
  }
  return Status::Ok();
}

void Handlers::SetMessageHandler(MessageHandler handler, EventLoop& loop) {
  std::lock_guard lock(mu_);
  message_handler_ = std::move(handler);
  if (!message_handler_ || held_.empty()) return;
  loop.Post([this] {
    std::deque<std::pair<IncomingMessage, AcceptPayload>> batch;
    MessageHandler h;
    {
      std::lock_guard lock(mu_);
      batch.swap(held_);
      h = message_handler_;
    }
    for (auto& [m, accept] : batch) {
      if (h) {
        h(m, std::move(accept));
      } else {
        accept(nullptr, [](Status) {});
      }
    }
  });
}

void Handlers::SetFailureHandler(PeerFailureHandler handler) {
  std::lock_guard lock(mu_);
  failure_handler_ = std::move(handler);
}

void Handlers::Deliver(IncomingMessage message, AcceptPayload accept, const std::string& node) {
  MessageHandler handler;
  {
    std::lock_guard lock(mu_);
    handler = message_handler_;
    if (!handler && held_.size() < kMaxHeld) {
      held_.emplace_back(std::move(message), std::move(accept));
      return;
    }
  }
  if (handler) {
    handler(message, std::move(accept));
    return;
  }
  LOG(WARNING) << "fabric: " << node << ": no handler and " << kMaxHeld << " messages waiting; dropped one from "
               << message.peer;
  accept(nullptr, [](Status) {});
}

void Handlers::DropHeld() {
  std::deque<std::pair<IncomingMessage, AcceptPayload>> held;
  {
    std::lock_guard lock(mu_);
    held.swap(held_);
  }
  for (auto& [m, accept] : held) accept(nullptr, [](Status) {});
}

void Handlers::ReportFailure(const std::string& peer, const Status& cause) {
  PeerFailureHandler handler;
  {
    std::lock_guard lock(mu_);
    handler = failure_handler_;
  }
  if (handler) handler(peer, cause);
}

bool Handlers::PeerGone(const std::string& node, const std::string& peer, bool departed, const Status& cause) {
  if (departed) {
    ReportFailure(peer, Unavailable("peer '" + peer + "' left (closed its transport)"));
    return false;
  }
  LOG(WARNING) << "fabric: " << node << ": " << cause.message();
  ReportFailure(peer, cause);
  return true;
}

TransportStats Counters::Snapshot() const {
  TransportStats s;
  s.bytes_sent = bytes_sent;
  s.bytes_received = bytes_received;
  s.messages_sent = messages_sent;
  s.messages_received = messages_received;
  s.writes = writes;
  s.peer_failures = peer_failures;
  s.gpu_staged = gpu_staged;
  s.regions = regions;
  return s;
}

Status ConnectWithRetry(Transport& t, const std::string& peer, const std::string& address, double deadline) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(deadline);
  Status last;
  while (std::chrono::steady_clock::now() < until) {
    auto p = std::make_shared<std::promise<Status>>();
    auto f = p->get_future();
    t.Connect(peer, address, [p](Status s) { p->set_value(s); });
    if (f.wait_for(std::chrono::duration<double>(deadline)) != std::future_status::ready) break;
    last = f.get();
    if (last.ok()) return last;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return last.ok() ? DeadlineExceeded("connecting to '" + peer + "' at " + address) : last;
}

}  // namespace modelcast::fabric
