#include "modelcast/fabric/ucx_transport.h"

#include <arpa/inet.h>
#include <glog/logging.h>
#include <netinet/in.h>
#include <ucp/api/ucp.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>

#include "event_loop.h"
#include "transport_common.h"

namespace modelcast::fabric {
namespace {

constexpr unsigned kAmId = 1;
enum class Kind : uint8_t { kHello = 0, kHelloAck = 1, kUser = 2, kBye = 3 };

Status FromUcs(ucs_status_t s, const std::string& what) { return Unavailable(what + ": " + ucs_status_string(s)); }

class UcxTransport;

// One endpoint to one peer.
struct Endpoint {
  UcxTransport* transport = nullptr;
  ucp_ep_h ep = nullptr;
  std::string peer;  // empty until the peer's hello arrives (accepted endpoints)
  std::string address;
  bool failed = false;
  bool closed = false;    // ucp_ep_close_nbx was called
  bool departed = false;  // the peer said goodbye: its disconnection is not a failure
  Done on_connected;      // client endpoints, until the hello is answered
  uint64_t timer = 0;
};

struct SendContext {
  Done done;
  std::vector<uint8_t> header;
  uint64_t bytes = 0;
  UcxTransport* transport = nullptr;
};

// A payload waiting for AcceptPayload: persistent eager data, or a rendezvous descriptor.
struct PendingPayload {
  void* data = nullptr;
  uint64_t length = 0;
  bool rendezvous = false;
  bool taken = false;
};

class UcxRegion final : public MemoryRegion {
 public:
  UcxRegion(UcxTransport* t, ucp_mem_h memh, uint8_t* data, uint64_t size, MemoryKind kind, RemoteRegion remote)
      : transport_(t), memh_(memh), data_(data), size_(size), kind_(kind), remote_(std::move(remote)) {}
  ~UcxRegion() override;
  uint8_t* data() const override { return data_; }
  uint64_t size() const override { return size_; }
  MemoryKind kind() const override { return kind_; }
  const RemoteRegion& remote() const override { return remote_; }

 private:
  UcxTransport* transport_;
  ucp_mem_h memh_;
  uint8_t* data_;
  uint64_t size_;
  MemoryKind kind_;
  RemoteRegion remote_;
};

class UcxTransport final : public Transport {
 public:
  explicit UcxTransport(UcxOptions o) : options_(std::move(o)) {}
  ~UcxTransport() override { Stop(); }

  Status Init();
  const Capabilities& capabilities() const override { return caps_; }
  const std::string& name() const override { return options_.name; }
  std::string address() const override { return address_; }
  Status Start() override;
  void Stop() override;
  void Connect(const std::string& peer, const std::string& address, Done done) override;
  Result<std::unique_ptr<MemoryRegion>> Register(void* data, uint64_t size, MemoryKind kind) override;
  void Send(const std::string& peer, uint16_t type, std::span<const uint8_t> header, std::span<const uint8_t> payload,
            Done done) override;
  void Write(const std::string& peer, const MemoryRegion& local, uint64_t local_offset, const RemoteRegion& remote,
             uint64_t remote_offset, uint64_t length, Done done) override;
  void Flush(const std::string& peer, Done done) override;
  void AbortPeer(const std::string& peer, const Status& cause) override {
    loop_.Post([this, peer, cause] {
      if (Endpoint* e = FindPeer(peer)) Fail(e, cause);
    });
  }
  bool Connected(const std::string& peer) override {
    bool up = false;
    // On the progress thread, where a failure takes the peer out before it is reported.
    if (!loop_.RunSync([&] { up = FindPeer(peer) != nullptr; }).ok()) return false;
    return up;
  }
  void SetMessageHandler(MessageHandler handler) override { handlers_.SetMessageHandler(std::move(handler), loop_); }
  void SetPeerFailureHandler(PeerFailureHandler handler) override { handlers_.SetFailureHandler(std::move(handler)); }
  TransportStats stats() const override { return counters_.Snapshot(); }

  // Called on the loop thread by UCX.
  static void OnConnRequest(ucp_conn_request_h request, void* arg);
  static void OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status);
  static ucs_status_t OnAm(void* arg, const void* header, size_t header_length, void* data, size_t length,
                           const ucp_am_recv_param_t* param);
  static void OnSendDone(void* request, ucs_status_t status, void* user_data);
  static void OnRecvDone(void* request, ucs_status_t status, size_t length, void* user_data);

  void Unmap(ucp_mem_h memh);

 private:
  void Introduce(Endpoint* e, const std::string& sender);
  void SendRaw(Endpoint* e, Kind kind, uint16_t type, std::span<const uint8_t> header, std::span<const uint8_t> payload,
               Done done);
  Endpoint* FindPeer(const std::string& peer);
  void Fail(Endpoint* e, const Status& cause);
  // Reports `s` to `done` from the progress thread (never inside the caller's call).
  void FailLater(Done done, Status s) {
    loop_.Post([done = std::move(done), s = std::move(s)] { done(s); });
  }
  void Teardown();
  template <typename F>
  void Complete(ucs_status_ptr_t r, SendContext* ctx, F&& what);

  UcxOptions options_;
  Capabilities caps_;
  std::string address_;
  EventLoop loop_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  ucp_listener_h listener_ = nullptr;
  int efd_ = -1;
  std::set<Endpoint*> endpoints_;  // live endpoints
  std::vector<Endpoint*> closed_;  // closed after a failure; freed at Stop
  std::map<std::string, Endpoint*> peers_;
  std::map<ucp_ep_h, std::string> early_hellos_;
  std::map<std::pair<std::string, std::string>, ucp_rkey_h> rkeys_;
  Handlers handlers_;
  Counters counters_;
  bool warned_gpu_ = false;
  bool stopped_ = false;
};

UcxRegion::~UcxRegion() { transport_->Unmap(memh_); }

Status UcxTransport::Init() {
  if (options_.name.empty()) return InvalidArgument("ucx: the node needs a name");
  ucp_config_t* config = nullptr;
  ucs_status_t s = ucp_config_read(nullptr, nullptr, &config);
  if (s != UCS_OK) return FromUcs(s, "ucx: reading configuration");
  // UCX's own settings go through ucp_config_modify; the transports' (UCT) settings, such as
  // TCP segment sizes, are read by UCX 1.13 only from the environment when an interface
  // opens, so those are set as this process's UCX_* variables (from the agent's config, not
  // the user's shell) before ucp_init.
  std::map<std::string, std::string> settings = options_.extra;
  if (!options_.tls.empty()) settings["TLS"] = options_.tls;
  if (!options_.net_devices.empty()) settings["NET_DEVICES"] = options_.net_devices;
  if (!options_.tcp_seg_size.empty()) {
    settings["TCP_TX_SEG_SIZE"] = options_.tcp_seg_size;
    settings["TCP_RX_SEG_SIZE"] = options_.tcp_seg_size;
  }
  settings["KEEPALIVE_INTERVAL"] = std::to_string(options_.keepalive_interval) + "s";
  // A restarted agent listens again at once, though its predecessor's connections linger in
  // TIME_WAIT on the port (two live listeners on one port are still refused).
  settings.emplace("TCP_CM_REUSEADDR", "y");
  for (const auto& [k, v] : settings) {
    if (k.rfind("TCP_", 0) == 0 || k.rfind("IB_", 0) == 0 || k.rfind("RC_", 0) == 0 || k.rfind("DC_", 0) == 0 ||
        k.rfind("UD_", 0) == 0 || k.rfind("MM_", 0) == 0 || k.rfind("CMA_", 0) == 0) {
      ::setenv(("UCX_" + k).c_str(), v.c_str(), 1);
      continue;
    }
    s = ucp_config_modify(config, k.c_str(), v.c_str());
    if (s != UCS_OK) {
      ucp_config_release(config);
      return InvalidArgument("ucx: setting " + k + "=" + v + ": " + ucs_status_string(s));
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  params.name = options_.name.c_str();
  s = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  if (s != UCS_OK) return FromUcs(s, "ucx: ucp_init");
  ucp_context_attr_t attr{};
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  if (ucp_context_query(context_, &attr) == UCS_OK) {
    caps_.gpu_memory = (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
  }
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE | UCP_WORKER_PARAM_FIELD_EVENTS;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;
  wp.events = UCP_WAKEUP_RMA | UCP_WAKEUP_AMO | UCP_WAKEUP_TX | UCP_WAKEUP_RX;
  s = ucp_worker_create(context_, &wp, &worker_);
  if (s != UCS_OK) return FromUcs(s, "ucx: ucp_worker_create");
  s = ucp_worker_get_efd(worker_, &efd_);
  if (s != UCS_OK) return FromUcs(s, "ucx: ucp_worker_get_efd");
  ucp_am_handler_param_t ap{};
  ap.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS | UCP_AM_HANDLER_PARAM_FIELD_CB |
                  UCP_AM_HANDLER_PARAM_FIELD_ARG;
  ap.id = kAmId;
  ap.flags = UCP_AM_FLAG_WHOLE_MSG | UCP_AM_FLAG_PERSISTENT_DATA;
  ap.cb = &UcxTransport::OnAm;
  ap.arg = this;
  s = ucp_worker_set_am_recv_handler(worker_, &ap);
  if (s != UCS_OK) return FromUcs(s, "ucx: setting the message handler");
  caps_.backend = "ucx";
  caps_.one_sided_write = true;
  caps_.one_sided_read = true;
  caps_.max_message = 1ull << 34;
  return Status::Ok();
}

Status UcxTransport::Start() {
  MC_ASSIGN_OR_RETURN(sockaddr_in addr, ParseAddress(options_.listen_address));
  ucp_listener_params_t lp{};
  lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
  lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr);
  lp.sockaddr.addrlen = sizeof(addr);
  lp.conn_handler.cb = &UcxTransport::OnConnRequest;
  lp.conn_handler.arg = this;
  ucs_status_t s = ucp_listener_create(worker_, &lp, &listener_);
  if (s != UCS_OK) return FromUcs(s, "ucx: listening on " + options_.listen_address);
  ucp_listener_attr_t la{};
  la.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
  if (ucp_listener_query(listener_, &la) == UCS_OK) address_ = FormatAddress(reinterpret_cast<const sockaddr*>(&la.sockaddr));
  EventLoop::Hooks hooks;
  hooks.event_fd = efd_;
  hooks.progress = [this] { return ucp_worker_progress(worker_) != 0; };
  hooks.arm = [this] { return ucp_worker_arm(worker_) != UCS_ERR_BUSY; };
  MC_RETURN_IF_ERROR(loop_.Start("ucx-" + options_.name, std::move(hooks), options_.thread));
  LOG(INFO) << "fabric: ucx transport for " << options_.name << " listening on " << address_
            << (caps_.gpu_memory ? " (CUDA memory supported)" : "");
  return Status::Ok();
}

void UcxTransport::Teardown() {
  // On the loop thread: say goodbye to every peer (so that its side does not count our
  // disconnection as a failure), then close every endpoint, waiting a bounded time.
  std::vector<void*> closing;
  auto goodbyes = std::make_shared<int>(0);
  for (Endpoint* e : endpoints_) {
    if (e->closed || e->failed || e->peer.empty()) continue;
    ++*goodbyes;
    SendRaw(e, Kind::kBye, 0, {}, {}, [goodbyes](Status) { --*goodbyes; });
  }
  const auto bye_deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  while (*goodbyes > 0 && std::chrono::steady_clock::now() < bye_deadline) ucp_worker_progress(worker_);
  for (Endpoint* e : endpoints_) {
    if (e->closed) continue;
    if (e->on_connected) {
      auto done = std::move(e->on_connected);
      e->on_connected = nullptr;
      done(Cancelled("transport of " + options_.name + " stopped before peer '" + e->peer + "' answered"));
    }
    // A graceful (flush) close: a forced one resets the TCP connection, and the peer's kernel
    // then drops data it has not read yet, the goodbye included.
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = 0;
    e->closed = true;
    ucs_status_ptr_t r = ucp_ep_close_nbx(e->ep, &p);
    if (UCS_PTR_IS_PTR(r)) closing.push_back(r);
  }
  for (auto& [key, rkey] : rkeys_) ucp_rkey_destroy(rkey);
  rkeys_.clear();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  for (void* r : closing) {
    while (ucp_request_check_status(r) == UCS_INPROGRESS && std::chrono::steady_clock::now() < deadline) {
      ucp_worker_progress(worker_);
    }
    ucp_request_free(r);
  }
  for (Endpoint* e : endpoints_) delete e;
  endpoints_.clear();
  for (Endpoint* e : closed_) delete e;
  closed_.clear();
  peers_.clear();
  if (listener_) ucp_listener_destroy(listener_);
  listener_ = nullptr;
}

void UcxTransport::Stop() {
  if (stopped_) return;
  stopped_ = true;
  if (loop_.running()) loop_.Stop([this] { Teardown(); });
  if (worker_) ucp_worker_destroy(worker_);
  worker_ = nullptr;
  if (context_) ucp_cleanup(context_);
  context_ = nullptr;
}

Endpoint* UcxTransport::FindPeer(const std::string& peer) {
  auto it = peers_.find(peer);
  return it == peers_.end() || it->second->failed ? nullptr : it->second;
}

void UcxTransport::Connect(const std::string& peer, const std::string& address, Done done) {
  auto addr = ParseAddress(address);
  if (!addr.ok()) {
    done(addr.status().WithContext("connect to peer '" + peer + "'"));
    return;
  }
  loop_.Post([this, peer, address, a = *addr, done = std::move(done)]() mutable {
    if (FindPeer(peer) != nullptr) {
      done(Status::Ok());
      return;
    }
    auto* e = new Endpoint{this, nullptr, peer, address};
    e->on_connected = std::move(done);
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                    UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
    ep.sockaddr.addr = reinterpret_cast<const sockaddr*>(&a);
    ep.sockaddr.addrlen = sizeof(a);
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = &UcxTransport::OnEndpointError;
    ep.err_handler.arg = e;
    ucs_status_t s = ucp_ep_create(worker_, &ep, &e->ep);
    if (s != UCS_OK) {
      auto cb = std::move(e->on_connected);
      delete e;
      cb(FromUcs(s, "connect to peer '" + peer + "' at " + address));
      return;
    }
    endpoints_.insert(e);
    e->timer = loop_.RunAfter(options_.connect_timeout, [this, e] {
      if (!endpoints_.count(e) || !e->on_connected) return;
      Fail(e, DeadlineExceeded("peer '" + e->peer + "' at " + e->address + " did not answer within " +
                               std::to_string(options_.connect_timeout) + " s"));
    });
    SendRaw(e, Kind::kHello, 0, {}, {}, [](Status) {});
  });
}

void UcxTransport::Fail(Endpoint* e, const Status& cause) {
  if (e->failed) return;
  e->failed = true;
  ++counters_.peer_failures;
  if (e->timer) loop_.Cancel(e->timer);
  if (!e->peer.empty()) {
    auto it = peers_.find(e->peer);
    if (it != peers_.end() && it->second == e) peers_.erase(it);
  }
  if (e->on_connected) {
    auto done = std::move(e->on_connected);
    e->on_connected = nullptr;
    done(cause);
  } else if (!e->peer.empty()) {
    if (!handlers_.PeerGone(options_.name, e->peer, e->departed, cause)) --counters_.peer_failures;
  }
  // Close it; in-flight requests complete with errors first. The record moves out of the
  // live set (UCX reuses endpoint addresses: a stale handle must never match a new one) and is
  // freed at Stop, as UCX may still refer to it until then.
  if (e->closed) return;
  e->closed = true;
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_EP_CLOSE_FLAG_FORCE;
  ucs_status_ptr_t r = ucp_ep_close_nbx(e->ep, &p);
  if (UCS_PTR_IS_PTR(r)) ucp_request_free(r);
  early_hellos_.erase(e->ep);
  e->ep = nullptr;
  endpoints_.erase(e);
  closed_.push_back(e);
}

void UcxTransport::OnEndpointError(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* e = static_cast<Endpoint*>(arg);
  const std::string who = e->peer.empty() ? "an unnamed peer at " + e->address : "peer '" + e->peer + "'";
  e->transport->Fail(e, Unavailable(who + " failed: " + ucs_status_string(status)));
}

void UcxTransport::OnConnRequest(ucp_conn_request_h request, void* arg) {
  auto* t = static_cast<UcxTransport*>(arg);
  auto* e = new Endpoint{t, nullptr, "", ""};
  ucp_conn_request_attr_t ca{};
  ca.field_mask = UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR;
  if (ucp_conn_request_query(request, &ca) == UCS_OK) e->address = FormatAddress(reinterpret_cast<const sockaddr*>(&ca.client_address));
  ucp_ep_params_t ep{};
  ep.field_mask =
      UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep.conn_request = request;
  ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep.err_handler.cb = &UcxTransport::OnEndpointError;
  ep.err_handler.arg = e;
  if (ucp_ep_create(t->worker_, &ep, &e->ep) != UCS_OK) {
    LOG(WARNING) << "fabric: " << t->options_.name << ": refused a connection from " << e->address;
    delete e;
    return;
  }
  t->endpoints_.insert(e);
  auto early = t->early_hellos_.find(e->ep);
  if (early != t->early_hellos_.end()) {
    const std::string sender = early->second;
    t->early_hellos_.erase(early);
    t->Introduce(e, sender);
  }
}

void UcxTransport::Introduce(Endpoint* e, const std::string& sender) {
  e->peer = sender;
  peers_[sender] = e;
  SendRaw(e, Kind::kHelloAck, 0, {}, {}, [](Status) {});
}

template <typename F>
void UcxTransport::Complete(ucs_status_ptr_t r, SendContext* ctx, F&& what) {
  if (r == nullptr) {
    auto done = std::move(ctx->done);
    delete ctx;
    done(Status::Ok());
  } else if (UCS_PTR_IS_ERR(r)) {
    auto done = std::move(ctx->done);
    delete ctx;
    done(FromUcs(UCS_PTR_STATUS(r), what()));
  }
  // Otherwise OnSendDone completes it.
}

void UcxTransport::SendRaw(Endpoint* e, Kind kind, uint16_t type, std::span<const uint8_t> header,
                           std::span<const uint8_t> payload, Done done) {
  auto* ctx = new SendContext{std::move(done), {}, payload.size(), this};
  // Our header: kind, user type, the sender's name, then the user's header.
  ctx->header.reserve(4 + options_.name.size() + header.size());
  ctx->header.push_back(static_cast<uint8_t>(kind));
  ctx->header.push_back(static_cast<uint8_t>(type & 0xff));
  ctx->header.push_back(static_cast<uint8_t>(type >> 8));
  ctx->header.push_back(static_cast<uint8_t>(options_.name.size()));
  ctx->header.insert(ctx->header.end(), options_.name.begin(), options_.name.end());
  ctx->header.insert(ctx->header.end(), header.begin(), header.end());
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_REPLY;
  p.cb.send = &UcxTransport::OnSendDone;
  p.user_data = ctx;
  ++counters_.messages_sent;
  counters_.bytes_sent += payload.size();
  ucs_status_ptr_t r = ucp_am_send_nbx(e->ep, kAmId, ctx->header.data(), ctx->header.size(),
                                       payload.empty() ? nullptr : payload.data(), payload.size(), &p);
  Complete(r, ctx, [&] { return "send to peer '" + e->peer + "'"; });
}

void UcxTransport::OnSendDone(void* request, ucs_status_t status, void* user_data) {
  auto* ctx = static_cast<SendContext*>(user_data);
  auto done = std::move(ctx->done);
  delete ctx;
  ucp_request_free(request);
  done(status == UCS_OK ? Status::Ok() : FromUcs(status, "send"));
}

void UcxTransport::Send(const std::string& peer, uint16_t type, std::span<const uint8_t> header,
                        std::span<const uint8_t> payload, Done done) {
  std::vector<uint8_t> h(header.begin(), header.end());
  loop_.Post([this, peer, type, h = std::move(h), payload, done = std::move(done)]() mutable {
    Endpoint* e = FindPeer(peer);
    if (e == nullptr) {
      done(Unavailable("no connection to peer '" + peer + "' from " + options_.name));
      return;
    }
    SendRaw(e, Kind::kUser, type, h, payload, std::move(done));
  });
}

ucs_status_t UcxTransport::OnAm(void* arg, const void* header, size_t header_length, void* data, size_t length,
                                const ucp_am_recv_param_t* param) {
  auto* t = static_cast<UcxTransport*>(arg);
  const auto* h = static_cast<const uint8_t*>(header);
  if (header_length < 4 || header_length < 4u + h[3]) {
    LOG(WARNING) << "fabric: " << t->options_.name << ": dropped a message with a malformed header";
    return UCS_OK;
  }
  const Kind kind = static_cast<Kind>(h[0]);
  VLOG(2) << t->options_.name << ": am kind " << int(h[0]) << " length " << length << " attr " << param->recv_attr;
  const uint16_t type = static_cast<uint16_t>(h[1] | (h[2] << 8));
  const std::string sender(reinterpret_cast<const char*>(h + 4), h[3]);
  ucp_ep_h reply = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ? param->reply_ep : nullptr;
  Endpoint* e = nullptr;
  for (Endpoint* x : t->endpoints_) {
    if (reply != nullptr && x->ep == reply) e = x;
  }
  if (kind == Kind::kHello) {
    if (e != nullptr) {
      t->Introduce(e, sender);
    } else if (reply != nullptr) {
      // UCX may deliver the hello while ucp_ep_create(conn_request) is still running, before
      // the endpoint is recorded: answer it once it is (OnConnRequest).
      t->early_hellos_[reply] = sender;
    }
    return UCS_OK;
  }
  if (kind == Kind::kBye) {
    auto it = t->peers_.find(sender);
    if (it != t->peers_.end()) it->second->departed = true;
    if (e != nullptr) e->departed = true;
    return UCS_OK;
  }
  if (kind == Kind::kHelloAck) {
    if (e != nullptr && e->on_connected) {
      if (e->timer) t->loop_.Cancel(e->timer);
      e->peer = sender;
      t->peers_[sender] = e;
      auto done = std::move(e->on_connected);
      e->on_connected = nullptr;
      done(Status::Ok());
    }
    return UCS_OK;
  }
  ++t->counters_.messages_received;
  t->counters_.bytes_received += length;
  IncomingMessage m;
  m.peer = sender;
  m.type = type;
  m.header.assign(h + 4 + h[3], h + header_length);
  m.payload_size = length;
  auto pending = std::make_shared<PendingPayload>();
  pending->length = length;
  pending->rendezvous = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  // Keep the payload until it is accepted: rendezvous descriptors and persistent eager data.
  // An empty payload is never kept.
  const bool persistent = length > 0 && (pending->rendezvous || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_DATA) != 0);
  std::vector<uint8_t> copy;
  if (length > 0 && !persistent) copy.assign(static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + length);
  pending->data = persistent ? data : nullptr;
  auto owned = std::make_shared<std::vector<uint8_t>>(std::move(copy));
  AcceptPayload accept = [t, pending, owned](uint8_t* dst, Done done) {
    t->loop_.Post([t, pending, owned, dst, done = std::move(done)]() mutable {
      if (pending->taken) {
        done(Internal("a message payload was accepted twice"));
        return;
      }
      pending->taken = true;
      if (pending->length == 0) {
        done(Status::Ok());
        return;
      }
      if (!pending->data) {  // copied eager data
        if (dst) std::memcpy(dst, owned->data(), pending->length);
        done(Status::Ok());
        return;
      }
      if (dst == nullptr) {
        ucp_am_data_release(t->worker_, pending->data);
        done(Status::Ok());
        return;
      }
      if (!pending->rendezvous) {
        std::memcpy(dst, pending->data, pending->length);
        ucp_am_data_release(t->worker_, pending->data);
        done(Status::Ok());
        return;
      }
      auto* ctx = new SendContext{std::move(done), {}, pending->length, t};
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
      p.cb.recv_am = &UcxTransport::OnRecvDone;
      p.user_data = ctx;
      ucs_status_ptr_t r = ucp_am_recv_data_nbx(t->worker_, pending->data, dst, pending->length, &p);
      t->Complete(r, ctx, [] { return std::string("receive"); });
    });
  };
  t->handlers_.Deliver(std::move(m), std::move(accept), t->options_.name);
  return persistent ? UCS_INPROGRESS : UCS_OK;
}

void UcxTransport::OnRecvDone(void* request, ucs_status_t status, size_t, void* user_data) {
  auto* ctx = static_cast<SendContext*>(user_data);
  auto done = std::move(ctx->done);
  delete ctx;
  ucp_request_free(request);
  done(status == UCS_OK ? Status::Ok() : FromUcs(status, "receive"));
}

Result<std::unique_ptr<MemoryRegion>> UcxTransport::Register(void* data, uint64_t size, MemoryKind kind) {
  if (kind == MemoryKind::kGpu && !caps_.gpu_memory) {
    ++counters_.gpu_staged;
    if (!warned_gpu_) {
      warned_gpu_ = true;
      LOG(WARNING) << "fabric: this UCX was built without CUDA support: GPU-bound slices are staged through pinned "
                      "host memory (counted in gpu_staged)";
    }
    return FailedPrecondition("ucx: cannot register GPU memory (UCX built without CUDA); stage through host memory");
  }
  ucp_mem_h memh = nullptr;
  Status result;
  std::string key;
  Status ran = loop_.RunSync([&] {
    ucp_mem_map_params_t mp{};
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mp.address = data;
    mp.length = size;
    ucs_status_t s = ucp_mem_map(context_, &mp, &memh);
    if (s != UCS_OK) {
      result = FromUcs(s, "ucx: registering " + std::to_string(size) + " bytes");
      return;
    }
    void* packed = nullptr;
    size_t packed_size = 0;
    s = ucp_rkey_pack(context_, memh, &packed, &packed_size);
    if (s != UCS_OK) {
      ucp_mem_unmap(context_, memh);
      result = FromUcs(s, "ucx: packing a remote key");
      return;
    }
    key.assign(static_cast<char*>(packed), packed_size);
    ucp_rkey_buffer_release(packed);
  });
  MC_RETURN_IF_ERROR(ran);
  MC_RETURN_IF_ERROR(result);
  RemoteRegion remote{reinterpret_cast<uint64_t>(data), size, key};
  ++counters_.regions;
  return std::unique_ptr<MemoryRegion>(
      new UcxRegion(this, memh, static_cast<uint8_t*>(data), size, kind, std::move(remote)));
}

void UcxTransport::Unmap(ucp_mem_h memh) {
  --counters_.regions;
  if (stopped_ || !loop_.running()) {
    if (context_) ucp_mem_unmap(context_, memh);
    return;
  }
  (void)loop_.RunSync([&] { ucp_mem_unmap(context_, memh); });
}

void UcxTransport::Write(const std::string& peer, const MemoryRegion& local, uint64_t local_offset,
                         const RemoteRegion& remote, uint64_t remote_offset, uint64_t length, Done done) {
  if (Status bad = CheckWriteRanges(peer, local, local_offset, remote, remote_offset, length); !bad.ok()) {
    FailLater(std::move(done), std::move(bad));
    return;
  }
  const uint8_t* src = local.data() + local_offset;
  loop_.Post([this, peer, src, remote, remote_offset, length, done = std::move(done)]() mutable {
    Endpoint* e = FindPeer(peer);
    if (e == nullptr) {
      done(Unavailable("no connection to peer '" + peer + "' from " + options_.name));
      return;
    }
    auto& rkey = rkeys_[{peer, remote.key}];
    if (rkey == nullptr) {
      ucs_status_t s = ucp_ep_rkey_unpack(e->ep, remote.key.data(), &rkey);
      if (s != UCS_OK) {
        rkeys_.erase({peer, remote.key});
        done(FromUcs(s, "write to '" + peer + "': unpacking its remote key"));
        return;
      }
    }
    auto* ctx = new SendContext{std::move(done), {}, length, this};
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = &UcxTransport::OnSendDone;
    p.user_data = ctx;
    ++counters_.writes;
    counters_.bytes_sent += length;
    ucs_status_ptr_t r = ucp_put_nbx(e->ep, src, length, remote.address + remote_offset, rkey, &p);
    Complete(r, ctx, [&] { return "write to peer '" + peer + "'"; });
  });
}

void UcxTransport::Flush(const std::string& peer, Done done) {
  loop_.Post([this, peer, done = std::move(done)]() mutable {
    Endpoint* e = FindPeer(peer);
    if (e == nullptr) {
      done(Unavailable("no connection to peer '" + peer + "' from " + options_.name));
      return;
    }
    auto* ctx = new SendContext{std::move(done), {}, 0, this};
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = &UcxTransport::OnSendDone;
    p.user_data = ctx;
    ucs_status_ptr_t r = ucp_ep_flush_nbx(e->ep, &p);
    Complete(r, ctx, [&] { return "flush to peer '" + peer + "'"; });
  });
}

}  // namespace

Result<std::unique_ptr<Transport>> MakeUcxTransport(const UcxOptions& options) {
  auto t = std::make_unique<UcxTransport>(options);
  MC_RETURN_IF_ERROR(t->Init());
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace modelcast::fabric
