#include "modelcast/fabric/fault_transport.h"

#include <glog/logging.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>

#include "event_loop.h"
#include "modelcast/common/file_util.h"
#include "modelcast/common/units.h"

namespace modelcast::fabric {
namespace {

class FaultTransport final : public Transport {
 public:
  FaultTransport(std::unique_ptr<Transport> inner, FaultOptions o) : inner_(std::move(inner)), o_(std::move(o)) {
    caps_ = inner_->capabilities();
    caps_.backend = "fault(" + caps_.backend + ")";
  }
  ~FaultTransport() override { Stop(); }

  const Capabilities& capabilities() const override { return caps_; }
  const std::string& name() const override { return inner_->name(); }
  std::string address() const override { return inner_->address(); }

  Status Start() override {
    MC_RETURN_IF_ERROR(loop_.Start("fault-" + inner_->name(), {}));
    return inner_->Start();
  }
  void Stop() override {
    loop_.Stop();
    {
      std::lock_guard lock(mu_);
      keep_.clear();  // unregistered while the inner transport still runs
    }
    inner_->Stop();
  }
  void Connect(const std::string& peer, const std::string& address, Done done) override {
    inner_->Connect(peer, address, std::move(done));
  }
  Result<std::unique_ptr<MemoryRegion>> Register(void* data, uint64_t size, MemoryKind kind) override {
    return inner_->Register(data, size, kind);
  }
  void Write(const std::string& peer, const MemoryRegion& local, uint64_t local_offset, const RemoteRegion& remote,
             uint64_t remote_offset, uint64_t length, Done done) override {
    if (Failed(peer, length)) return Later(std::move(done), Injected(peer));
    const uint64_t n = ++payload_transfers_;
    if (Has(o_.drop, n)) {
      LOG(WARNING) << "fault injection: " << name() << " drops payload transfer " << n << " (a write) to " << peer;
      return Later(std::move(done), Status::Ok());
    }
    if (Has(o_.corrupt, n) && local_offset <= local.size() && length <= local.size() - local_offset && length > 0) {
      LOG(WARNING) << "fault injection: " << name() << " corrupts payload transfer " << n << " (a write) to " << peer;
      // Write a corrupted copy from a registered buffer of its own, kept until Stop.
      auto copy = std::make_shared<AlignedBuffer>(length);
      std::memcpy(copy->data(), local.data() + local_offset, length);
      copy->data()[length / 2] ^= 0x5a;
      auto region = inner_->Register(copy->data(), length, MemoryKind::kHost);
      if (!region.ok()) return Later(std::move(done), region.status());
      std::shared_ptr<MemoryRegion> r = std::move(*region);
      {
        std::lock_guard lock(mu_);
        keep_.emplace_back(copy, r);
      }
      Dispatch([this, peer, r, remote, remote_offset, length, done = std::move(done)]() mutable {
        inner_->Write(peer, *r, 0, remote, remote_offset, length, std::move(done));
      });
      return;
    }
    Dispatch([this, peer, &local, local_offset, remote, remote_offset, length, done = std::move(done)]() mutable {
      inner_->Write(peer, local, local_offset, remote, remote_offset, length, std::move(done));
    });
  }
  void Flush(const std::string& peer, Done done) override {
    // Delayed like the writes it follows, so that it still follows them.
    Dispatch([this, peer, done = std::move(done)]() mutable { inner_->Flush(peer, std::move(done)); });
  }
  void AbortPeer(const std::string& peer, const Status& cause) override { inner_->AbortPeer(peer, cause); }
  bool Connected(const std::string& peer) override {
    {
      std::lock_guard lock(mu_);
      if (failed_ && peer == o_.fail_peer) return false;
    }
    return inner_->Connected(peer);
  }
  void SetMessageHandler(MessageHandler handler) override { inner_->SetMessageHandler(std::move(handler)); }
  void SetPeerFailureHandler(PeerFailureHandler handler) override {
    {
      std::lock_guard lock(mu_);
      failure_handler_ = handler;
    }
    inner_->SetPeerFailureHandler(std::move(handler));
  }
  TransportStats stats() const override { return inner_->stats(); }

  void Send(const std::string& peer, uint16_t type, std::span<const uint8_t> header, std::span<const uint8_t> payload,
            Done done) override {
    if (Failed(peer, payload.size())) return Later(std::move(done), Injected(peer));
    uint64_t n = 0;
    if (!payload.empty()) n = ++payload_transfers_;
    if (Has(o_.drop, n)) {
      LOG(WARNING) << "fault injection: " << name() << " drops payload transfer " << n << " to " << peer;
      return Later(std::move(done), Status::Ok());
    }
    std::vector<uint8_t> h(header.begin(), header.end());
    if (Has(o_.corrupt, n)) {
      LOG(WARNING) << "fault injection: " << name() << " corrupts payload transfer " << n << " to " << peer;
      auto copy = std::make_shared<std::vector<uint8_t>>(payload.begin(), payload.end());
      (*copy)[copy->size() / 2] ^= 0x5a;
      Dispatch([this, peer, type, h = std::move(h), copy, done = std::move(done)]() mutable {
        inner_->Send(peer, type, h, *copy, [copy, done = std::move(done)](Status s) { done(s); });
      });
      return;
    }
    Dispatch([this, peer, type, h = std::move(h), payload, done = std::move(done)]() mutable {
      inner_->Send(peer, type, h, payload, std::move(done));
    });
  }

 private:
  static bool Has(const std::vector<uint64_t>& v, uint64_t n) {
    return n > 0 && std::find(v.begin(), v.end(), n) != v.end();
  }
  static Status Injected(const std::string& peer) { return Unavailable("fault injection: peer '" + peer + "' failed"); }

  // Runs `fn` after the configured delay (or at once).
  void Dispatch(std::function<void()> fn) {
    if (o_.delay > 0) {
      loop_.RunAfter(o_.delay, std::move(fn));
    } else {
      fn();
    }
  }

  void Later(Done done, Status s) {
    loop_.Post([done = std::move(done), s] { done(s); });
  }

  // Counts payload bytes to the configured peer; past the limit, reports the peer failed once.
  bool Failed(const std::string& peer, uint64_t bytes) {
    if (o_.fail_peer.empty() || peer != o_.fail_peer) return false;
    PeerFailureHandler handler;
    {
      std::lock_guard lock(mu_);
      if (failed_) return true;
      sent_to_fail_peer_ += bytes;
      if (sent_to_fail_peer_ <= o_.fail_after_bytes) return false;
      failed_ = true;
      handler = failure_handler_;
    }
    LOG(WARNING) << "fault injection: " << name() << " fails peer " << peer << " after " << o_.fail_after_bytes
                 << " bytes";
    if (handler) loop_.Post([handler, peer] { handler(peer, Injected(peer)); });
    return true;
  }

  std::unique_ptr<Transport> inner_;
  FaultOptions o_;
  Capabilities caps_;
  EventLoop loop_;
  std::atomic<uint64_t> payload_transfers_{0};  // sends with a payload and writes, counted together
  std::mutex mu_;
  PeerFailureHandler failure_handler_;
  uint64_t sent_to_fail_peer_ = 0;
  bool failed_ = false;
  std::vector<std::pair<std::shared_ptr<AlignedBuffer>, std::shared_ptr<MemoryRegion>>> keep_;
};

Status ParseList(const std::string& v, std::vector<uint64_t>* out) {
  std::stringstream ss(v);
  for (std::string item; std::getline(ss, item, ',');) {
    try {
      // stoull would take "-1" as 2^64 - 1: digits only.
      if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos) throw std::invalid_argument(item);
      size_t used = 0;
      const uint64_t n = std::stoull(item, &used);
      if (used != item.size() || n == 0) throw std::invalid_argument(item);
      out->push_back(n);
    } catch (...) {
      return InvalidArgument("fault spec: '" + item + "' is not a positive message number");
    }
  }
  return Status::Ok();
}

}  // namespace

Result<FaultOptions> FaultOptions::Parse(const std::string& spec) {
  FaultOptions o;
  std::stringstream ss(spec);
  for (std::string part; std::getline(ss, part, ';');) {
    if (part.empty()) continue;
    const auto eq = part.find('=');
    if (eq == std::string::npos) return InvalidArgument("fault spec: '" + part + "' is not key=value");
    const std::string k = part.substr(0, eq), v = part.substr(eq + 1);
    if (k == "corrupt") {
      MC_RETURN_IF_ERROR(ParseList(v, &o.corrupt));
    } else if (k == "drop") {
      MC_RETURN_IF_ERROR(ParseList(v, &o.drop));
    } else if (k == "delay") {
      MC_ASSIGN_OR_RETURN(o.delay, ParseDuration(v));
    } else if (k == "fail") {
      const auto at = v.find('@');
      if (at == std::string::npos) return InvalidArgument("fault spec: fail=PEER@BYTES, got '" + v + "'");
      o.fail_peer = v.substr(0, at);
      MC_ASSIGN_OR_RETURN(o.fail_after_bytes, ParseByteSize(v.substr(at + 1)));
    } else {
      return InvalidArgument("fault spec: unknown fault '" + k + "' (corrupt, drop, delay, fail)");
    }
  }
  return o;
}

std::unique_ptr<Transport> MakeFaultTransport(std::unique_ptr<Transport> inner, FaultOptions options) {
  return std::make_unique<FaultTransport>(std::move(inner), std::move(options));
}

}  // namespace modelcast::fabric
