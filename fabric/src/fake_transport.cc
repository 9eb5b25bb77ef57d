#include "modelcast/fabric/fake_transport.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "event_loop.h"
#include "transport_common.h"

namespace modelcast::fabric {
namespace {

using Clock = std::chrono::steady_clock;
class FakeTransport;

constexpr std::string_view kScheme = "fake:";

// An operation whose completion is owed to `owner`: a send, a write or a flush.
struct Op {
  std::string owner, peer;
  uint64_t generation = 0;  // of the link when it started
  Done done;
};

// A registered region, by id (the key of its RemoteRegion).
struct Region {
  std::string owner;
  uint8_t* data = nullptr;
  uint64_t size = 0;
};

// A payload waiting for its receiver's AcceptPayload.
struct Payload {
  uint64_t op = 0;  // the sender's operation (rendezvous); 0: eager, copied into `copy`
  const uint8_t* source = nullptr;
  uint64_t length = 0;
  std::vector<uint8_t> copy;
  bool taken = false;
};

std::pair<std::string, std::string> Key(const std::string& a, const std::string& b) {
  return a < b ? std::pair(a, b) : std::pair(b, a);
}

}  // namespace

struct FakeNetwork::State {
  explicit State(FakeNetworkOptions options) : o(options), rng(options.seed) {}

  const FakeNetworkOptions o;
  std::mutex mu;  // everything below; never held while a user callback runs
  std::mt19937_64 rng;
  struct Link {
    bool connected = false;
    uint64_t generation = 0;  // bumped by every cut: what started before it is failed
  };
  std::map<std::string, FakeTransport*> nodes;  // joined and not destroyed
  std::set<std::string> dead;
  std::map<std::pair<std::string, std::string>, Link> links;              // by Key()
  std::map<std::pair<std::string, std::string>, Clock::time_point> tail;  // directed: the last delivery scheduled
  std::map<uint64_t, Op> ops;
  uint64_t next_op = 1;
  std::map<uint64_t, Region> regions;
  uint64_t next_region = 1;
  FakeNetworkStats stats;

  double JitterLocked() {
    if (o.max_jitter <= 0) return 0;
    return std::uniform_real_distribution<double>(0, o.max_jitter)(rng);
  }
  // The node's transport if it is joined and not stopping.
  FakeTransport* LiveLocked(const std::string& name);
  // Runs `fn` on `to`'s progress thread after every earlier delivery from `from` to `to`
  // (and a jitter). False when `to` is gone.
  bool ScheduleLocked(const std::string& from, const std::string& to, std::function<void()> fn);
  // Completes an operation on its owner's progress thread; nothing if it is already complete.
  void CompleteLocked(uint64_t id, Status st);
  // Fails what is in flight between a and b, and tells each live end that the other is gone.
  void CutLocked(const std::string& a, const std::string& b, const Status& cause, bool departed);
};

namespace {

class FakeRegion final : public MemoryRegion {
 public:
  FakeRegion(std::shared_ptr<FakeNetwork::State> s, Counters* counters, uint64_t id, uint8_t* data, uint64_t size,
             RemoteRegion remote)
      : s_(std::move(s)), counters_(counters), id_(id), data_(data), size_(size), remote_(std::move(remote)) {}
  ~FakeRegion() override {
    std::lock_guard lock(s_->mu);
    s_->regions.erase(id_);
    --counters_->regions;
  }
  uint8_t* data() const override { return data_; }
  uint64_t size() const override { return size_; }
  MemoryKind kind() const override { return MemoryKind::kHost; }
  const RemoteRegion& remote() const override { return remote_; }

 private:
  std::shared_ptr<FakeNetwork::State> s_;
  Counters* counters_;
  uint64_t id_;
  uint8_t* data_;
  uint64_t size_;
  RemoteRegion remote_;
};

class FakeTransport final : public Transport {
 public:
  FakeTransport(std::shared_ptr<FakeNetwork::State> s, std::string name) : s_(std::move(s)), name_(std::move(name)) {
    caps_.backend = "fake";
    caps_.one_sided_write = true;
    caps_.write_notify = s_->o.write_notify;
    caps_.max_message = 1ull << 34;
  }
  ~FakeTransport() override {
    Stop();
    std::lock_guard lock(s_->mu);
    s_->nodes.erase(name_);
  }

  const Capabilities& capabilities() const override { return caps_; }
  const std::string& name() const override { return name_; }
  std::string address() const override { return std::string(kScheme) + name_; }

  Status Start() override { return loop_.Start("fake-" + name_, {}); }

  void Stop() override {
    {
      std::lock_guard lock(s_->mu);
      if (stopping_) return;
      stopping_ = true;  // from now on nothing is posted to this loop; Teardown fails what is owed
    }
    if (loop_.running()) {
      loop_.Stop([this] { Teardown(); });
    } else {
      Teardown();
    }
  }

  void Connect(const std::string& peer, const std::string& address, Done done) override {
    Status st;
    {
      std::lock_guard lock(s_->mu);
      if (address != std::string(kScheme) + peer) {
        st = InvalidArgument("connect to peer '" + peer + "': '" + address + "' is not its fake address");
      } else if (s_->dead.count(name_) || s_->dead.count(peer) || s_->LiveLocked(peer) == nullptr) {
        st = Unavailable("peer '" + peer + "' at " + address + " did not answer");
      } else {
        s_->links[Key(name_, peer)].connected = true;
      }
    }
    Later(std::move(done), st);
  }

  Result<std::unique_ptr<MemoryRegion>> Register(void* data, uint64_t size, MemoryKind kind) override {
    if (kind == MemoryKind::kGpu) {
      ++counters_.gpu_staged;
      return FailedPrecondition("fake transport: cannot register GPU memory; stage through host memory");
    }
    std::lock_guard lock(s_->mu);
    const uint64_t id = s_->next_region++;
    s_->regions[id] = {name_, static_cast<uint8_t*>(data), size};
    ++counters_.regions;
    RemoteRegion remote{reinterpret_cast<uint64_t>(data), size, std::to_string(id)};
    return std::unique_ptr<MemoryRegion>(
        new FakeRegion(s_, &counters_, id, static_cast<uint8_t*>(data), size, std::move(remote)));
  }

  void Send(const std::string& peer, uint16_t type, std::span<const uint8_t> header, std::span<const uint8_t> payload,
            Done done) override {
    std::unique_lock lock(s_->mu);
    uint64_t id = 0;
    if (Status st = StartLocked(peer, std::move(done), &id); !st.ok()) return;
    ++counters_.messages_sent;
    counters_.bytes_sent += payload.size();
    IncomingMessage m;
    m.peer = name_;
    m.type = type;
    m.header.assign(header.begin(), header.end());
    m.payload_size = payload.size();
    auto p = std::make_shared<Payload>();
    p->length = payload.size();
    if (payload.size() <= s_->o.eager_limit) {
      p->copy.assign(payload.begin(), payload.end());
    } else {
      p->op = id;
      p->source = payload.data();
    }
    const uint64_t generation = s_->ops.at(id).generation;
    auto s = s_;
    const bool scheduled = s_->ScheduleLocked(name_, peer, [s, peer, from = name_, generation, m = std::move(m), p] {
      FakeTransport* to = nullptr;
      {
        std::lock_guard lock(s->mu);
        const auto link = s->links.find(Key(from, peer));
        if (link == s->links.end() || link->second.generation != generation) return;  // cut: failed already
        to = s->LiveLocked(peer);
        if (to == nullptr) return;
        ++s->stats.messages;
        ++to->counters_.messages_received;
        to->counters_.bytes_received += m.payload_size;
      }
      to->handlers_.Deliver(m, Accept(s, peer, p), peer);
    });
    if (!scheduled) return s_->CompleteLocked(id, Unavailable("peer '" + peer + "' is gone"));
    if (p->op == 0) s_->CompleteLocked(id, Status::Ok());  // eager: the payload may be reused now
  }

  void Write(const std::string& peer, const MemoryRegion& local, uint64_t local_offset, const RemoteRegion& remote,
             uint64_t remote_offset, uint64_t length, Done done) override {
    if (Status bad = CheckWriteRanges(peer, local, local_offset, remote, remote_offset, length); !bad.ok()) {
      return Later(std::move(done), bad);
    }
    std::unique_lock lock(s_->mu);
    uint64_t id = 0;
    if (Status st = StartLocked(peer, std::move(done), &id); !st.ok()) return;
    ++counters_.writes;
    counters_.bytes_sent += length;
    const uint8_t* src = local.data() + local_offset;
    auto s = s_;
    const bool scheduled = s_->ScheduleLocked(name_, peer, [s, id, peer, src, remote, remote_offset, length] {
      std::lock_guard lock(s->mu);
      if (!s->ops.count(id)) return;  // failed by a cut
      uint64_t region_id = 0;
      try {
        region_id = std::stoull(remote.key);
      } catch (...) {
      }
      const auto r = s->regions.find(region_id);
      if (r == s->regions.end() || r->second.owner != peer) {
        return s->CompleteLocked(id, Unavailable("write to '" + peer + "': the remote region is not registered there"));
      }
      const uint64_t at = remote.address + remote_offset - reinterpret_cast<uint64_t>(r->second.data);
      if (remote.address < reinterpret_cast<uint64_t>(r->second.data) || at > r->second.size ||
          length > r->second.size - at) {
        return s->CompleteLocked(id, OutOfRange("write to '" + peer + "': outside its registered region"));
      }
      std::memcpy(r->second.data + at, src, length);
      ++s->stats.writes;
      s->CompleteLocked(id, Status::Ok());
    });
    if (!scheduled) s_->CompleteLocked(id, Unavailable("peer '" + peer + "' is gone"));
  }

  void Flush(const std::string& peer, Done done) override {
    std::unique_lock lock(s_->mu);
    uint64_t id = 0;
    if (Status st = StartLocked(peer, std::move(done), &id); !st.ok()) return;
    auto s = s_;
    // Behind every earlier write on the link: it completes once they have landed.
    const bool scheduled = s_->ScheduleLocked(name_, peer, [s, id] {
      std::lock_guard lock(s->mu);
      s->CompleteLocked(id, Status::Ok());
    });
    if (!scheduled) s_->CompleteLocked(id, Unavailable("peer '" + peer + "' is gone"));
  }

  void AbortPeer(const std::string& peer, const Status& cause) override {
    std::lock_guard lock(s_->mu);
    s_->CutLocked(name_, peer, cause, false);
  }

  bool Connected(const std::string& peer) override {
    std::lock_guard lock(s_->mu);  // a cut disconnects under it before it reports
    const auto link = s_->links.find(Key(name_, peer));
    return !stopping_ && link != s_->links.end() && link->second.connected;
  }
  void SetMessageHandler(MessageHandler handler) override { handlers_.SetMessageHandler(std::move(handler), loop_); }
  void SetPeerFailureHandler(PeerFailureHandler handler) override { handlers_.SetFailureHandler(std::move(handler)); }
  TransportStats stats() const override { return counters_.Snapshot(); }

  // Under the network's lock, by its State.
  bool StoppingLocked() const { return stopping_; }
  void PostLocked(std::function<void()> fn) { loop_.Post(std::move(fn)); }
  uint64_t RunAfterLocked(double seconds, std::function<void()> fn) { return loop_.RunAfter(seconds, std::move(fn)); }
  void ReportGone(const std::string& peer, const Status& cause, bool departed) {
    if (handlers_.PeerGone(name_, peer, departed, cause)) ++counters_.peer_failures;
  }

 private:
  // Records an operation owed to this node, or fails `done` (later) when there is no link.
  Status StartLocked(const std::string& peer, Done done, uint64_t* id) {
    if (stopping_) return Cancelled("transport of '" + name_ + "' stopped");  // dropped, as UCX drops it
    const auto link = s_->links.find(Key(name_, peer));
    if (link == s_->links.end() || !link->second.connected) {
      Status st = Unavailable("no connection to peer '" + peer + "' from " + name_);
      PostLocked([done = std::move(done), st] { done(st); });
      return st;
    }
    *id = s_->next_op++;
    s_->ops[*id] = Op{name_, peer, link->second.generation, std::move(done)};
    return Status::Ok();
  }

  void Later(Done done, Status st) {
    std::lock_guard lock(s_->mu);
    if (stopping_) return;
    PostLocked([done = std::move(done), st = std::move(st)] { done(st); });
  }

  // The receiver's AcceptPayload for `p`: runs on the receiver's thread, as UCX's does.
  static AcceptPayload Accept(std::shared_ptr<FakeNetwork::State> s, const std::string& receiver,
                              std::shared_ptr<Payload> p) {
    return [s, receiver, p](uint8_t* dst, Done done) {
      std::lock_guard lock(s->mu);
      FakeTransport* to = s->LiveLocked(receiver);
      if (to == nullptr) return;  // stopped: dropped, as its loop would drop it
      to->PostLocked([s, p, dst, done = std::move(done)] {
        Status st;
        {
          std::lock_guard lock(s->mu);
          if (p->taken) {
            st = Internal("a message payload was accepted twice");
          } else if (p->taken = true; p->op == 0) {
            if (dst != nullptr && p->length > 0) std::memcpy(dst, p->copy.data(), p->length);
          } else if (!s->ops.count(p->op)) {
            if (dst != nullptr) st = Unavailable("the sender failed before its payload was taken");
          } else {
            if (dst != nullptr) std::memcpy(dst, p->source, p->length);
            s->CompleteLocked(p->op, Status::Ok());
          }
        }
        done(st);
      });
    };
  }

  void Teardown() {
    std::vector<Done> owed;
    {
      std::lock_guard lock(s_->mu);
      for (auto it = s_->ops.begin(); it != s_->ops.end();) {
        if (it->second.owner == name_) {
          owed.push_back(std::move(it->second.done));
          ++s_->stats.failed_ops;
          it = s_->ops.erase(it);
        } else {
          ++it;
        }
      }
      std::vector<std::string> peers;
      for (const auto& [key, link] : s_->links) {
        if (!link.connected) continue;
        if (key.first == name_) peers.push_back(key.second);
        if (key.second == name_) peers.push_back(key.first);
      }
      for (const auto& peer : peers) {
        s_->CutLocked(name_, peer, Unavailable("peer '" + name_ + "' left (closed its transport)"), true);
      }
    }
    for (auto& done : owed) done(Cancelled("transport of '" + name_ + "' stopped"));
    handlers_.DropHeld();
  }

  std::shared_ptr<FakeNetwork::State> s_;
  const std::string name_;
  Capabilities caps_;
  EventLoop loop_;
  Handlers handlers_;
  Counters counters_;
  bool stopping_ = false;  // under s_->mu
};

}  // namespace

FakeTransport* FakeNetwork::State::LiveLocked(const std::string& name) {
  const auto it = nodes.find(name);
  return it == nodes.end() || it->second->StoppingLocked() ? nullptr : it->second;
}

bool FakeNetwork::State::ScheduleLocked(const std::string& from, const std::string& to, std::function<void()> fn) {
  FakeTransport* t = LiveLocked(to);
  if (t == nullptr) return false;
  const auto now = Clock::now();
  auto& last = tail[{from, to}];
  const auto when =
      std::max(last, now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(JitterLocked())));
  last = when;
  // Timers due at the same time run in the order they were set: the link's order holds.
  t->RunAfterLocked(std::chrono::duration<double>(when - now).count(), std::move(fn));
  return true;
}

void FakeNetwork::State::CompleteLocked(uint64_t id, Status st) {
  const auto it = ops.find(id);
  if (it == ops.end()) return;
  FakeTransport* owner = LiveLocked(it->second.owner);
  if (owner == nullptr) return;  // stopping: its teardown fails the operation
  Done done = std::move(it->second.done);
  ops.erase(it);
  if (!st.ok()) ++stats.failed_ops;
  const double delay = st.ok() ? JitterLocked() : 0;
  auto run = [done = std::move(done), st = std::move(st)] { done(st); };
  if (delay > 0) {
    owner->RunAfterLocked(delay, std::move(run));
  } else {
    owner->PostLocked(std::move(run));
  }
}

void FakeNetwork::State::CutLocked(const std::string& a, const std::string& b, const Status& cause, bool departed) {
  Link& link = links[Key(a, b)];
  const bool was = link.connected;
  link.connected = false;
  ++link.generation;
  std::vector<uint64_t> failing;
  for (const auto& [id, op] : ops) {
    if ((op.owner == a && op.peer == b) || (op.owner == b && op.peer == a)) failing.push_back(id);
  }
  for (uint64_t id : failing) {
    const std::string& owner = ops.at(id).owner;
    CompleteLocked(id, Unavailable("link between '" + a + "' and '" + b + "' " + (departed ? "closed" : "cut") + " (" +
                                   cause.message() + ") at '" + owner + "'"));
  }
  if (!was) return;
  ++stats.cuts;
  // Each end hears of the other, on its own thread. The one that left says so to the other.
  if (FakeTransport* ta = LiveLocked(a)) {
    ta->PostLocked([ta, b, cause] { ta->ReportGone(b, cause, false); });
  }
  if (FakeTransport* tb = LiveLocked(b)) {
    const Status seen = departed ? cause : Unavailable("peer '" + a + "' failed: " + cause.message());
    tb->PostLocked([tb, a, seen, departed] { tb->ReportGone(a, seen, departed); });
  }
}

FakeNetwork::FakeNetwork(FakeNetworkOptions options) : state_(std::make_shared<State>(options)) {}

FakeNetwork::~FakeNetwork() = default;

Result<std::unique_ptr<Transport>> FakeNetwork::Join(const std::string& name) {
  if (name.empty()) return InvalidArgument("fake network: a node needs a name");
  auto t = std::make_unique<FakeTransport>(state_, name);
  std::lock_guard lock(state_->mu);
  if (state_->nodes.count(name)) return AlreadyExists("fake network: node '" + name + "' has joined already");
  state_->nodes[name] = t.get();
  return std::unique_ptr<Transport>(std::move(t));
}

void FakeNetwork::Kill(const std::string& name) {
  std::lock_guard lock(state_->mu);
  state_->dead.insert(name);
  std::vector<std::string> peers;
  for (const auto& [key, link] : state_->links) {
    if (key.first == name) peers.push_back(key.second);
    if (key.second == name) peers.push_back(key.first);
  }
  for (const auto& peer : peers) state_->CutLocked(peer, name, Unavailable("node '" + name + "' was killed"), false);
}

void FakeNetwork::Cut(const std::string& a, const std::string& b) {
  std::lock_guard lock(state_->mu);
  state_->CutLocked(a, b, Unavailable("the link was cut"), false);
}

FakeNetworkStats FakeNetwork::stats() const {
  std::lock_guard lock(state_->mu);
  return state_->stats;
}

}  // namespace modelcast::fabric
