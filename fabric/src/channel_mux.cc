#include "modelcast/fabric/channel_mux.h"

#include <glog/logging.h>

#include <chrono>
#include <map>
#include <mutex>
#include <optional>

#include "event_loop.h"
#include "transport_common.h"

namespace modelcast::fabric {

struct ChannelMux::State {
  explicit State(Transport& t) : inner(t) {}
  Transport& inner;
  EventLoop loop;  // delivers messages that waited for their channel's handler
  std::mutex mu;
  struct Channel {
    Handlers handlers;
    bool open = false;
    // When it was last closed: what arrives in the next kLinger is the tail of the finished
    // operation and is dropped; later arrivals are for a new one and wait for it.
    std::optional<std::chrono::steady_clock::time_point> closed_at;
  };
  static constexpr std::chrono::seconds kLinger{5};
  std::map<int, std::unique_ptr<Channel>> channels;

  Channel& Get(int ch) {
    auto& c = channels[ch];
    if (!c) c = std::make_unique<Channel>();
    return *c;
  }

  void OnMessage(const IncomingMessage& m, AcceptPayload accept) {
    const int ch = m.type >> 8;
    Channel* c = nullptr;
    {
      std::lock_guard lock(mu);
      if (ch != 0) {
        c = &Get(ch);
        if (!c->open && c->closed_at && std::chrono::steady_clock::now() - *c->closed_at < kLinger) c = nullptr;
      }
    }
    if (c == nullptr) {
      VLOG(1) << "fabric: " << inner.name() << ": dropped a message from " << m.peer << " on channel " << ch
              << " (not open)";
      accept(nullptr, [](Status) {});
      return;
    }
    IncomingMessage local = m;
    local.type = static_cast<uint16_t>(m.type & 0xff);
    // Channels are never erased while the mux lives, so `c` stays valid.
    c->handlers.Deliver(std::move(local), std::move(accept), inner.name());
  }

  void OnFailure(const std::string& peer, const Status& cause) {
    std::vector<Channel*> all;
    {
      std::lock_guard lock(mu);
      for (auto& [ch, c] : channels) all.push_back(c.get());
    }
    for (Channel* c : all) c->handlers.ReportFailure(peer, cause);
  }
};

namespace {

class ChannelTransport final : public Transport {
 public:
  ChannelTransport(std::shared_ptr<ChannelMux::State> s, int channel, ChannelMux::State::Channel& c)
      : s_(std::move(s)), channel_(channel), c_(c) {}
  ~ChannelTransport() override {
    c_.handlers.SetMessageHandler(nullptr, s_->loop);
    c_.handlers.SetFailureHandler(nullptr);
    c_.handlers.DropHeld();
    std::lock_guard lock(s_->mu);
    c_.open = false;
    c_.closed_at = std::chrono::steady_clock::now();
  }

  const Capabilities& capabilities() const override { return s_->inner.capabilities(); }
  const std::string& name() const override { return s_->inner.name(); }
  std::string address() const override { return s_->inner.address(); }
  Status Start() override { return Status::Ok(); }  // the inner transport is started by its owner
  void Stop() override {}
  void Connect(const std::string& peer, const std::string& address, Done done) override {
    s_->inner.Connect(peer, address, std::move(done));
  }
  Result<std::unique_ptr<MemoryRegion>> Register(void* data, uint64_t size, MemoryKind kind) override {
    return s_->inner.Register(data, size, kind);
  }
  void Send(const std::string& peer, uint16_t type, std::span<const uint8_t> header, std::span<const uint8_t> payload,
            Done done) override {
    if (type > 0xff) {
      done(InvalidArgument("channel " + std::to_string(channel_) + ": message type " + std::to_string(type) +
                           " does not fit in 8 bits"));
      return;
    }
    s_->inner.Send(peer, static_cast<uint16_t>(channel_ << 8 | type), header, payload, std::move(done));
  }
  void Write(const std::string& peer, const MemoryRegion& local, uint64_t local_offset, const RemoteRegion& remote,
             uint64_t remote_offset, uint64_t length, Done done) override {
    s_->inner.Write(peer, local, local_offset, remote, remote_offset, length, std::move(done));
  }
  void Flush(const std::string& peer, Done done) override { s_->inner.Flush(peer, std::move(done)); }
  void AbortPeer(const std::string& peer, const Status& cause) override { s_->inner.AbortPeer(peer, cause); }
  void SetMessageHandler(MessageHandler handler) override { c_.handlers.SetMessageHandler(std::move(handler), s_->loop); }
  void SetPeerFailureHandler(PeerFailureHandler handler) override { c_.handlers.SetFailureHandler(std::move(handler)); }
  bool Connected(const std::string& peer) override { return s_->inner.Connected(peer); }
  TransportStats stats() const override { return s_->inner.stats(); }

 private:
  std::shared_ptr<ChannelMux::State> s_;
  const int channel_;
  ChannelMux::State::Channel& c_;
};

}  // namespace

Result<std::unique_ptr<ChannelMux>> ChannelMux::Create(Transport& inner, const ThreadPlacement& thread) {
  std::unique_ptr<ChannelMux> mux(new ChannelMux());
  mux->state_ = std::make_shared<State>(inner);
  MC_RETURN_IF_ERROR(mux->state_->loop.Start("mux-" + inner.name(), {}, thread));
  // The inner transport may still run a handler it took before ~ChannelMux cleared them: a
  // handler finds the state gone rather than freed.
  std::weak_ptr<State> weak = mux->state_;
  inner.SetMessageHandler([weak](const IncomingMessage& m, AcceptPayload accept) {
    if (auto s = weak.lock()) return s->OnMessage(m, std::move(accept));
    if (m.payload_size > 0) accept(nullptr, [](Status) {});
  });
  inner.SetPeerFailureHandler([weak](const std::string& peer, const Status& cause) {
    if (auto s = weak.lock()) s->OnFailure(peer, cause);
  });
  return mux;
}

ChannelMux::~ChannelMux() {
  state_->inner.SetMessageHandler(nullptr);
  state_->inner.SetPeerFailureHandler(nullptr);
  state_->loop.Stop();
}

Result<std::unique_ptr<Transport>> ChannelMux::Open(int channel) {
  if (channel < 1 || channel > 255) {
    return InvalidArgument("channel " + std::to_string(channel) + " is not between 1 and 255");
  }
  std::lock_guard lock(state_->mu);
  State::Channel& c = state_->Get(channel);
  if (c.open) return AlreadyExists("channel " + std::to_string(channel) + " is already open");
  c.open = true;
  return std::unique_ptr<Transport>(new ChannelTransport(state_, channel, c));
}

}  // namespace modelcast::fabric
