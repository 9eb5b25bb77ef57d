#include "modelcast/fabric/verbs_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <glog/logging.h>
#include <ifaddrs.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>

#include "event_loop.h"
#include "transport_common.h"

#if MODELCAST_HAVE_VERBS
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#endif
#if MODELCAST_HAVE_CUDA
#include <cuda.h>  // driver types only: the driver's function comes through cudart's entry-point query
#include <cuda_runtime_api.h>
#endif

namespace modelcast::fabric {

bool VerbsCompiled() { return MODELCAST_HAVE_VERBS != 0; }

#if MODELCAST_HAVE_VERBS

std::vector<RdmaDevice> FindRdmaDevices() {
  std::vector<RdmaDevice> out;
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr) return out;
  // Which network interfaces sit behind each device (sysfs), then their IPv4 addresses.
  std::map<std::string, std::vector<std::string>> by_interface;
  ifaddrs* ifs = nullptr;
  if (::getifaddrs(&ifs) == 0) {
    for (ifaddrs* i = ifs; i != nullptr; i = i->ifa_next) {
      if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET) continue;
      char host[INET_ADDRSTRLEN];
      ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr, host, sizeof(host));
      by_interface[i->ifa_name].push_back(host);
    }
    ::freeifaddrs(ifs);
  }
  for (int i = 0; i < n; ++i) {
    RdmaDevice d;
    d.name = ibv_get_device_name(list[i]);
    std::error_code ec;
    const std::filesystem::path net = std::filesystem::path("/sys/class/infiniband") / d.name / "device" / "net";
    for (const auto& entry : std::filesystem::directory_iterator(net, ec)) {
      const auto it = by_interface.find(entry.path().filename().string());
      if (it != by_interface.end()) d.addresses.insert(d.addresses.end(), it->second.begin(), it->second.end());
    }
    out.push_back(std::move(d));
  }
  ibv_free_device_list(list);
  return out;
}

namespace {

// Every SEND starts with this; a header and an inline payload follow it.
enum class Kind : uint8_t { kMessage = 1, kReadRequest = 2, kReadDone = 3, kBye = 4 };
struct Wire {
  uint8_t kind = 0;
  uint8_t reserved = 0;
  uint16_t type = 0;
  uint32_t header_length = 0;
  uint64_t payload_size = 0;
  uint64_t address = 0;  // kReadRequest: where the payload is at the sender
  uint64_t token = 0;    // kReadRequest, kReadDone: the sender's handle on the payload
  uint32_t rkey = 0;     // kReadRequest
  uint32_t reserved2 = 0;
};
static_assert(sizeof(Wire) == 40);

enum class WrKind : uint8_t { kRecv, kSend, kWrite, kRead };
struct Peer;

// One posted work request (wr_id points at it). Receive work is kept per buffer slot.
struct Work {
  WrKind kind = WrKind::kSend;
  Peer* peer = nullptr;
  uint32_t slot = 0;
  uint64_t bytes = 0;
  Done done;
  ibv_mr* temp_mr = nullptr;  // kRead: the destination's registration, released at completion
  uint64_t token = 0;         // kRead: for the kReadDone that follows
};

// Something to post once the queue pair has room (and, for a SEND, a free buffer slot).
struct Op {
  WrKind kind = WrKind::kSend;
  std::vector<uint8_t> bytes;  // kSend: the whole message
  uint64_t local_address = 0;  // kWrite, kRead
  uint32_t lkey = 0;
  uint64_t remote_address = 0;
  uint32_t rkey = 0;
  uint64_t length = 0;
  ibv_mr* temp_mr = nullptr;
  uint64_t token = 0;
  Done done;
};

struct Peer {
  std::string name;
  std::string address;
  rdma_cm_id* id = nullptr;
  bool active = false;  // this side connected
  bool connected = false;
  bool failed = false;
  bool departed = false;
  Status failure;
  Done on_connected;
  uint64_t timer = 0;
  std::vector<uint8_t> buffers;  // receive slots, then send slots
  ibv_mr* buffers_mr = nullptr;
  std::vector<Work> receives;
  std::vector<uint32_t> free_slots;
  uint32_t send_room = 0;
  int outstanding = 0;  // posted sends, writes and reads not completed yet
  std::deque<Op> backlog;
  uint64_t writes_queued = 0, writes_posted = 0, writes_done = 0;
  std::deque<std::pair<uint64_t, Done>> flushes;
};

struct ReadRequest {
  Peer* peer = nullptr;
  ibv_mr* mr = nullptr;
  Done done;
};

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

// GPU memory through dma-buf: the CUDA driver's cuMemGetHandleForAddressRange, found through
// cudart (this project links only cudart), then ibv_reg_dmabuf_mr.
#if MODELCAST_HAVE_CUDA
using GetHandleFn = CUresult (*)(void*, CUdeviceptr, size_t, CUmemRangeHandleType, unsigned long long);
GetHandleFn DmabufExporter() {
  static GetHandleFn fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuMemGetHandleForAddressRange", &p, 12000, cudaEnableDefault, &q) !=
            cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      return static_cast<GetHandleFn>(nullptr);
    }
    return reinterpret_cast<GetHandleFn>(p);
  }();
  return fn;
}
#endif

ibv_mr* RegisterGpu(ibv_pd* pd, void* data, uint64_t size, int access) {
#if MODELCAST_HAVE_CUDA
  if (GetHandleFn fn = DmabufExporter()) {
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t address = reinterpret_cast<uint64_t>(data);
    const uint64_t base = address / page * page;
    const uint64_t end = (address + size + page - 1) / page * page;
    int fd = -1;
    if (fn(&fd, static_cast<CUdeviceptr>(base), end - base, CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0) == CUDA_SUCCESS) {
      ibv_mr* mr = ibv_reg_dmabuf_mr(pd, address - base, size, address, fd, access);
      ::close(fd);
      if (mr != nullptr) return mr;
    }
  }
#endif
  return ibv_reg_mr(pd, data, size, access);  // works where nvidia-peermem is loaded
}

class VerbsTransport;

class VerbsRegion final : public MemoryRegion {
 public:
  VerbsRegion(ibv_mr* mr, uint8_t* data, uint64_t size, MemoryKind kind, std::atomic<uint64_t>* live)
      : mr_(mr), data_(data), size_(size), kind_(kind), live_(live) {
    ++*live_;
    remote_.address = reinterpret_cast<uint64_t>(data);
    remote_.length = size;
    remote_.key.resize(4);
    const uint32_t rkey = mr->rkey;
    std::memcpy(remote_.key.data(), &rkey, 4);
  }
  ~VerbsRegion() override {
    ibv_dereg_mr(mr_);
    --*live_;
  }
  uint8_t* data() const override { return data_; }
  uint64_t size() const override { return size_; }
  MemoryKind kind() const override { return kind_; }
  const RemoteRegion& remote() const override { return remote_; }
  uint32_t lkey() const { return mr_->lkey; }

 private:
  ibv_mr* mr_;
  uint8_t* data_;
  uint64_t size_;
  MemoryKind kind_;
  std::atomic<uint64_t>* live_;  // the transport's count of live registrations
  RemoteRegion remote_;
};

class VerbsTransport final : public Transport {
 public:
  explicit VerbsTransport(VerbsOptions o) : options_(std::move(o)) {}
  ~VerbsTransport() override {
    Stop();
    Release();
  }

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
      auto it = peers_.find(peer);
      if (it != peers_.end()) Fail(it->second, cause);
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

 private:
  bool Progress();
  bool Arm();
  int PollCompletions();
  void OnCompletion(const ibv_wc& wc);
  void OnReceive(Peer* p, Work* w, const ibv_wc& wc);
  void OnCmEvent(rdma_cm_event* event);
  Status SetUp(Peer* p);
  Status PostReceive(Peer* p, uint32_t slot);
  void Enqueue(Peer* p, Op op);
  void EnqueueMessage(Peer* p, const Wire& wire, std::span<const uint8_t> header, std::span<const uint8_t> payload,
                      Done done);
  void Pump(Peer* p);
  void Fail(Peer* p, const Status& cause);
  void CompleteFlushes(Peer* p);
  Peer* FindPeer(const std::string& name);
  Status NoPeer(const std::string& name) const {
    return Unavailable("no connection to peer '" + name + "' from " + options_.name);
  }
  void Teardown();
  void Release();
  uint8_t* Slot(Peer* p, uint32_t slot) { return p->buffers.data() + static_cast<size_t>(slot) * options_.eager_limit; }

  VerbsOptions options_;
  Capabilities caps_;
  std::string address_;
  EventLoop loop_;
  rdma_event_channel* cm_channel_ = nullptr;
  rdma_cm_id* listener_ = nullptr;
  ibv_context* context_ = nullptr;
  ibv_pd* pd_ = nullptr;
  ibv_comp_channel* completion_channel_ = nullptr;
  ibv_cq* cq_ = nullptr;
  int epoll_fd_ = -1;
  uint8_t read_depth_ = 1;
  std::vector<std::unique_ptr<Peer>> all_peers_;  // freed at Stop: failed ones may still have work in flight
  std::map<std::string, Peer*> peers_;
  std::map<uint64_t, ReadRequest> reads_;
  uint64_t next_token_ = 1;
  bool tearing_down_ = false;
  bool stopped_ = false;
  bool warned_gpu_ = false;
  Handlers handlers_;
  Counters counters_;
};

Status VerbsTransport::Init() {
  if (options_.name.empty()) return InvalidArgument("verbs: the node needs a name");
  if (options_.name.size() > 56) return InvalidArgument("verbs: node name '" + options_.name + "' is over 56 bytes");
  if (options_.eager_limit < 1024 || options_.queue_depth < 4)
    return InvalidArgument("verbs: eager_limit must be >= 1024 and queue_depth >= 4");
  MC_ASSIGN_OR_RETURN(sockaddr_in addr, ParseAddress(options_.listen_address));
  cm_channel_ = rdma_create_event_channel();
  if (cm_channel_ == nullptr) return Unavailable(Errno("verbs: rdma_create_event_channel"));
  if (rdma_create_id(cm_channel_, &listener_, nullptr, RDMA_PS_TCP) != 0)
    return Unavailable(Errno("verbs: rdma_create_id"));
  if (rdma_bind_addr(listener_, reinterpret_cast<sockaddr*>(&addr)) != 0)
    return Unavailable(Errno("verbs: binding " + options_.listen_address));
  context_ = listener_->verbs;
  if (context_ == nullptr)
    return FailedPrecondition("verbs: " + options_.listen_address + " is not the address of an RDMA device");
  address_ = FormatAddress(rdma_get_local_addr(listener_));
  ibv_device_attr device{};
  if (ibv_query_device(context_, &device) != 0) return Unavailable(Errno("verbs: ibv_query_device"));
  read_depth_ = static_cast<uint8_t>(std::clamp(device.max_qp_rd_atom, 1, 16));
  ibv_port_attr port{};
  if (ibv_query_port(context_, listener_->port_num, &port) != 0) return Unavailable(Errno("verbs: ibv_query_port"));
  pd_ = ibv_alloc_pd(context_);
  if (pd_ == nullptr) return Unavailable(Errno("verbs: ibv_alloc_pd"));
  completion_channel_ = ibv_create_comp_channel(context_);
  if (completion_channel_ == nullptr) return Unavailable(Errno("verbs: ibv_create_comp_channel"));
  const int cqe = std::min(device.max_cqe, 65536);
  cq_ = ibv_create_cq(context_, cqe, nullptr, completion_channel_, 0);
  if (cq_ == nullptr) return Unavailable(Errno("verbs: ibv_create_cq"));
  // One fd for the event loop to sleep on: an epoll set holding the completion channel and the
  // connection manager's channel, both non-blocking.
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return Unavailable(Errno("verbs: epoll_create1"));
  for (int fd : {completion_channel_->fd, cm_channel_->fd}) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) return Unavailable(Errno("verbs: epoll_ctl"));
  }
  caps_.backend = "verbs";
  caps_.one_sided_write = true;
  caps_.one_sided_read = true;
  caps_.write_notify = true;
  caps_.max_message = port.max_msg_sz;
  caps_.estimated_bandwidth = 0;
#if MODELCAST_HAVE_CUDA
  caps_.gpu_memory = DmabufExporter() != nullptr;
#endif
  return Status::Ok();
}

Status VerbsTransport::Start() {
  if (rdma_listen(listener_, 64) != 0) return Unavailable(Errno("verbs: listening on " + address_));
  EventLoop::Hooks hooks;
  hooks.event_fd = epoll_fd_;
  hooks.progress = [this] { return Progress(); };
  hooks.arm = [this] { return Arm(); };
  MC_RETURN_IF_ERROR(loop_.Start("verbs-" + options_.name, std::move(hooks), options_.thread));
  LOG(INFO) << "fabric: verbs transport for " << options_.name << " on " << ibv_get_device_name(context_->device)
            << ", listening on " << address_ << (caps_.gpu_memory ? " (GPU memory through dma-buf)" : "");
  return Status::Ok();
}

bool VerbsTransport::Progress() {
  ibv_cq* cq = nullptr;
  void* ctx = nullptr;
  unsigned events = 0;
  while (ibv_get_cq_event(completion_channel_, &cq, &ctx) == 0) ++events;
  if (events > 0) ibv_ack_cq_events(cq_, events);
  bool did = PollCompletions() > 0;
  rdma_cm_event* event = nullptr;
  while (rdma_get_cm_event(cm_channel_, &event) == 0) {
    OnCmEvent(event);
    did = true;
  }
  return did;
}

bool VerbsTransport::Arm() {
  ibv_req_notify_cq(cq_, 0);
  // A completion that came between the last poll and the request raises no event: poll again.
  return PollCompletions() == 0;
}

int VerbsTransport::PollCompletions() {
  ibv_wc wc[32];
  int total = 0;
  for (;;) {
    const int n = ibv_poll_cq(cq_, 32, wc);
    if (n <= 0) break;
    for (int i = 0; i < n; ++i) OnCompletion(wc[i]);
    total += n;
  }
  return total;
}

void VerbsTransport::OnCompletion(const ibv_wc& wc) {
  if (tearing_down_) return;  // peers' queue pairs are gone; their work is freed with them
  auto* w = reinterpret_cast<Work*>(wc.wr_id);
  Peer* p = w->peer;
  if (w->kind == WrKind::kRecv) {
    if (wc.status != IBV_WC_SUCCESS) {
      if (!p->failed) Fail(p, Unavailable("peer '" + p->name + "': receive failed: " + ibv_wc_status_str(wc.status)));
      return;
    }
    OnReceive(p, w, wc);
    return;
  }
  --p->outstanding;
  ++p->send_room;
  std::unique_ptr<Work> owned(w);
  if (w->kind == WrKind::kSend) p->free_slots.push_back(w->slot);
  if (w->temp_mr != nullptr) ibv_dereg_mr(w->temp_mr);
  if (wc.status != IBV_WC_SUCCESS) {
    const char* what = w->kind == WrKind::kWrite ? "write" : w->kind == WrKind::kRead ? "read" : "send";
    Status cause = Unavailable("peer '" + p->name + "': " + what + " failed: " + ibv_wc_status_str(wc.status));
    if (!p->failed) Fail(p, cause);
    if (w->done) w->done(p->failure.ok() ? cause : p->failure);
    return;
  }
  if (w->kind == WrKind::kWrite) {
    ++p->writes_done;
    CompleteFlushes(p);
  }
  if (w->kind == WrKind::kRead) {
    // The payload has landed: let the sender reuse it.
    counters_.bytes_received += w->bytes;
    Wire fin;
    fin.kind = static_cast<uint8_t>(Kind::kReadDone);
    fin.token = w->token;
    EnqueueMessage(p, fin, {}, {}, nullptr);
  }
  if (w->done) w->done(Status::Ok());
  Pump(p);
}

void VerbsTransport::OnReceive(Peer* p, Work* w, const ibv_wc& wc) {
  const uint32_t slot = w->slot;
  if (wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM) {  // a write landed
    counters_.bytes_received += wc.byte_len;
    (void)PostReceive(p, slot);
    return;
  }
  Wire wire;
  const uint8_t* data = Slot(p, slot);
  if (wc.byte_len < sizeof(Wire)) {
    LOG(WARNING) << "fabric: " << options_.name << ": dropped a " << wc.byte_len << "-byte message from " << p->name;
    (void)PostReceive(p, slot);
    return;
  }
  std::memcpy(&wire, data, sizeof(Wire));
  const uint64_t inline_payload = wire.kind == static_cast<uint8_t>(Kind::kMessage) ? wire.payload_size : 0;
  if (sizeof(Wire) + uint64_t{wire.header_length} + inline_payload != wc.byte_len) {
    LOG(WARNING) << "fabric: " << options_.name << ": dropped a malformed message from " << p->name;
    (void)PostReceive(p, slot);
    return;
  }
  std::vector<uint8_t> header(data + sizeof(Wire), data + sizeof(Wire) + wire.header_length);
  auto payload = std::make_shared<std::vector<uint8_t>>(data + sizeof(Wire) + wire.header_length,
                                                        data + sizeof(Wire) + wire.header_length + inline_payload);
  (void)PostReceive(p, slot);
  switch (static_cast<Kind>(wire.kind)) {
    case Kind::kBye:
      p->departed = true;
      return;
    case Kind::kReadDone: {
      auto it = reads_.find(wire.token);
      if (it == reads_.end()) return;
      ReadRequest r = std::move(it->second);
      reads_.erase(it);
      ibv_dereg_mr(r.mr);
      if (r.done) r.done(Status::Ok());
      return;
    }
    case Kind::kMessage:
    case Kind::kReadRequest:
      break;
    default:
      LOG(WARNING) << "fabric: " << options_.name << ": dropped a message of unknown kind from " << p->name;
      return;
  }
  ++counters_.messages_received;
  IncomingMessage m;
  m.peer = p->name;
  m.type = wire.type;
  m.header = std::move(header);
  m.payload_size = wire.payload_size;
  const bool by_read = wire.kind == static_cast<uint8_t>(Kind::kReadRequest);
  if (!by_read) counters_.bytes_received += wire.payload_size;
  auto taken = std::make_shared<bool>(false);
  AcceptPayload accept = [this, p, wire, by_read, payload, taken](uint8_t* dst, Done done) {
    loop_.Post([this, p, wire, by_read, payload, taken, dst, done = std::move(done)]() mutable {
      if (*taken) {
        done(Internal("a message payload was accepted twice"));
        return;
      }
      *taken = true;
      if (!by_read) {
        if (dst != nullptr && !payload->empty()) std::memcpy(dst, payload->data(), payload->size());
        done(Status::Ok());
        return;
      }
      if (p->failed) {
        done(p->failure);
        return;
      }
      if (dst == nullptr) {  // refused: the sender may reuse its payload
        Wire fin;
        fin.kind = static_cast<uint8_t>(Kind::kReadDone);
        fin.token = wire.token;
        EnqueueMessage(p, fin, {}, {}, nullptr);
        done(Status::Ok());
        return;
      }
      ibv_mr* mr = ibv_reg_mr(pd_, dst, wire.payload_size, IBV_ACCESS_LOCAL_WRITE);
      if (mr == nullptr) {
        done(Unavailable(Errno("read from peer '" + p->name + "': registering the destination")));
        return;
      }
      Op op;
      op.kind = WrKind::kRead;
      op.local_address = reinterpret_cast<uint64_t>(dst);
      op.lkey = mr->lkey;
      op.remote_address = wire.address;
      op.rkey = wire.rkey;
      op.length = wire.payload_size;
      op.temp_mr = mr;
      op.token = wire.token;
      op.done = std::move(done);
      Enqueue(p, std::move(op));
    });
  };
  handlers_.Deliver(std::move(m), std::move(accept), options_.name);
}

Status VerbsTransport::PostReceive(Peer* p, uint32_t slot) {
  ibv_sge sge{};
  sge.addr = reinterpret_cast<uint64_t>(Slot(p, slot));
  sge.length = options_.eager_limit;
  sge.lkey = p->buffers_mr->lkey;
  ibv_recv_wr wr{};
  wr.wr_id = reinterpret_cast<uint64_t>(&p->receives[slot]);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  ibv_recv_wr* bad = nullptr;
  if (ibv_post_recv(p->id->qp, &wr, &bad) != 0) return Unavailable(Errno("posting a receive for '" + p->name + "'"));
  return Status::Ok();
}

Status VerbsTransport::SetUp(Peer* p) {
  if (p->id->verbs != context_) return FailedPrecondition("peer '" + p->name + "' is reached through another RDMA device");
  ibv_qp_init_attr qa{};
  qa.send_cq = cq_;
  qa.recv_cq = cq_;
  qa.qp_type = IBV_QPT_RC;
  qa.cap.max_send_wr = options_.queue_depth * 2;
  qa.cap.max_recv_wr = options_.queue_depth;
  qa.cap.max_send_sge = 1;
  qa.cap.max_recv_sge = 1;
  if (rdma_create_qp(p->id, pd_, &qa) != 0) return Unavailable(Errno("creating a queue pair for '" + p->name + "'"));
  const uint32_t depth = options_.queue_depth;
  p->buffers.assign(static_cast<size_t>(depth) * 2 * options_.eager_limit, 0);
  p->buffers_mr = ibv_reg_mr(pd_, p->buffers.data(), p->buffers.size(), IBV_ACCESS_LOCAL_WRITE);
  if (p->buffers_mr == nullptr) return Unavailable(Errno("registering message buffers for '" + p->name + "'"));
  p->receives.resize(depth);
  for (uint32_t i = 0; i < depth; ++i) {
    p->receives[i].kind = WrKind::kRecv;
    p->receives[i].peer = p;
    p->receives[i].slot = i;
    MC_RETURN_IF_ERROR(PostReceive(p, i));
    p->free_slots.push_back(depth + i);
  }
  p->send_room = depth * 2;
  return Status::Ok();
}

void VerbsTransport::OnCmEvent(rdma_cm_event* event) {
  // Copy what is needed, then acknowledge at once (rdma_destroy_id waits for acknowledgements).
  const rdma_cm_event_type type = event->event;
  rdma_cm_id* id = event->id;
  const int status = event->status;
  std::string private_name;
  if (event->param.conn.private_data != nullptr && event->param.conn.private_data_len > 0) {
    const auto* pd = static_cast<const char*>(event->param.conn.private_data);
    private_name.assign(pd, strnlen(pd, event->param.conn.private_data_len));
  }
  rdma_ack_cm_event(event);
  rdma_conn_param param{};
  param.private_data = options_.name.c_str();
  param.private_data_len = static_cast<uint8_t>(options_.name.size() + 1);
  param.responder_resources = read_depth_;
  param.initiator_depth = read_depth_;
  param.retry_count = 7;
  param.rnr_retry_count = 7;  // a receiver out of buffers makes the sender wait, not fail

  if (type == RDMA_CM_EVENT_CONNECT_REQUEST) {
    auto owned = std::make_unique<Peer>();
    Peer* p = owned.get();
    p->name = private_name;
    p->id = id;
    p->address = FormatAddress(rdma_get_peer_addr(id));
    id->context = p;
    Status s = p->name.empty() ? InvalidArgument("the connection request carried no name") : SetUp(p);
    if (s.ok() && rdma_accept(id, &param) != 0) s = Unavailable(Errno("rdma_accept"));
    if (!s.ok()) {
      LOG(WARNING) << "fabric: " << options_.name << ": refused a connection from " << p->address << ": "
                   << s.message();
      rdma_reject(id, nullptr, 0);
      if (id->qp != nullptr) rdma_destroy_qp(id);
      if (p->buffers_mr != nullptr) ibv_dereg_mr(p->buffers_mr);
      rdma_destroy_id(id);
      return;
    }
    all_peers_.push_back(std::move(owned));
    return;
  }
  auto* p = static_cast<Peer*>(id->context);
  if (p == nullptr) return;
  const std::string who = "peer '" + p->name + "' at " + p->address;
  switch (type) {
    case RDMA_CM_EVENT_ADDR_RESOLVED:
      if (rdma_resolve_route(id, 2000) != 0) Fail(p, Unavailable(Errno("connect to " + who + ": resolving a route")));
      return;
    case RDMA_CM_EVENT_ROUTE_RESOLVED: {
      Status s = SetUp(p);
      if (s.ok() && rdma_connect(id, &param) != 0) s = Unavailable(Errno("rdma_connect"));
      if (!s.ok()) Fail(p, s.WithContext("connect to " + who));
      return;
    }
    case RDMA_CM_EVENT_ESTABLISHED:
      if (p->active && private_name != p->name) {
        Fail(p, FailedPrecondition("connect to " + who + ": '" + private_name + "' answered"));
        return;
      }
      p->connected = true;
      if (p->timer) loop_.Cancel(p->timer);
      peers_[p->name] = p;
      if (p->on_connected) {
        auto done = std::move(p->on_connected);
        p->on_connected = nullptr;
        done(Status::Ok());
      }
      Pump(p);
      return;
    case RDMA_CM_EVENT_ADDR_ERROR:
    case RDMA_CM_EVENT_ROUTE_ERROR:
    case RDMA_CM_EVENT_CONNECT_ERROR:
    case RDMA_CM_EVENT_UNREACHABLE:
    case RDMA_CM_EVENT_REJECTED:
      Fail(p, Unavailable("connect to " + who + ": " + rdma_event_str(type) + " (status " + std::to_string(status) +
                          ")"));
      return;
    case RDMA_CM_EVENT_DISCONNECTED:
    case RDMA_CM_EVENT_DEVICE_REMOVAL:
      Fail(p, Unavailable(who + " disconnected (" + rdma_event_str(type) + ")"));
      return;
    default:
      return;
  }
}

void VerbsTransport::Fail(Peer* p, const Status& cause) {
  if (p->failed) return;
  p->failed = true;
  p->failure = cause;
  if (p->timer) loop_.Cancel(p->timer);
  auto it = peers_.find(p->name);
  if (it != peers_.end() && it->second == p) peers_.erase(it);
  if (p->id != nullptr) rdma_disconnect(p->id);  // the queue pair errs: posted work completes with errors
  if (p->on_connected) {
    auto done = std::move(p->on_connected);
    p->on_connected = nullptr;
    done(cause);
  } else if (p->connected) {
    if (handlers_.PeerGone(options_.name, p->name, p->departed, cause)) ++counters_.peer_failures;
  }
  std::deque<Op> backlog;
  backlog.swap(p->backlog);
  for (Op& op : backlog) {
    if (op.temp_mr != nullptr) ibv_dereg_mr(op.temp_mr);
    if (op.done) op.done(cause);
  }
  for (auto f = p->flushes.begin(); f != p->flushes.end(); f = p->flushes.erase(f)) f->second(cause);
  for (auto r = reads_.begin(); r != reads_.end();) {
    if (r->second.peer != p) {
      ++r;
      continue;
    }
    ReadRequest req = std::move(r->second);
    r = reads_.erase(r);
    ibv_dereg_mr(req.mr);
    if (req.done) req.done(cause);
  }
}

Peer* VerbsTransport::FindPeer(const std::string& name) {
  auto it = peers_.find(name);
  return it == peers_.end() || it->second->failed ? nullptr : it->second;
}

void VerbsTransport::Connect(const std::string& peer, const std::string& address, Done done) {
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
    auto owned = std::make_unique<Peer>();
    Peer* p = owned.get();
    p->name = peer;
    p->address = address;
    p->active = true;
    p->on_connected = std::move(done);
    if (rdma_create_id(cm_channel_, &p->id, p, RDMA_PS_TCP) != 0) {
      auto cb = std::move(p->on_connected);
      cb(Unavailable(Errno("connect to peer '" + peer + "' at " + address + ": rdma_create_id")));
      return;
    }
    all_peers_.push_back(std::move(owned));
    // Leave from this node's listening address, so that the connection uses the same device.
    sockaddr_in source = *reinterpret_cast<const sockaddr_in*>(rdma_get_local_addr(listener_));
    source.sin_port = 0;
    if (rdma_resolve_addr(p->id, reinterpret_cast<sockaddr*>(&source), reinterpret_cast<sockaddr*>(&a), 2000) != 0) {
      Fail(p, Unavailable(Errno("connect to peer '" + peer + "' at " + address + ": resolving the address")));
      return;
    }
    p->timer = loop_.RunAfter(options_.connect_timeout, [this, p] {
      if (p->on_connected) {
        Fail(p, DeadlineExceeded("peer '" + p->name + "' at " + p->address + " did not answer within " +
                                 std::to_string(options_.connect_timeout) + " s"));
      }
    });
  });
}

Result<std::unique_ptr<MemoryRegion>> VerbsTransport::Register(void* data, uint64_t size, MemoryKind kind) {
  const int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
  ibv_mr* mr = kind == MemoryKind::kGpu ? RegisterGpu(pd_, data, size, access) : ibv_reg_mr(pd_, data, size, access);
  if (mr == nullptr && kind == MemoryKind::kGpu) {
    ++counters_.gpu_staged;
    if (!warned_gpu_) {
      warned_gpu_ = true;
      LOG(WARNING) << "fabric: neither dma-buf nor nvidia-peermem can register GPU memory here: GPU-bound slices are "
                      "staged through host memory (counted in gpu_staged)";
    }
    return FailedPrecondition("verbs: cannot register GPU memory; stage through host memory");
  }
  if (mr == nullptr) return Unavailable(Errno("verbs: registering " + std::to_string(size) + " bytes"));
  return std::unique_ptr<MemoryRegion>(new VerbsRegion(mr, static_cast<uint8_t*>(data), size, kind, &counters_.regions));
}

void VerbsTransport::Enqueue(Peer* p, Op op) {
  p->backlog.push_back(std::move(op));
  Pump(p);
}

void VerbsTransport::EnqueueMessage(Peer* p, const Wire& wire, std::span<const uint8_t> header,
                                    std::span<const uint8_t> payload, Done done) {
  Op op;
  op.kind = WrKind::kSend;
  op.bytes.resize(sizeof(Wire));
  std::memcpy(op.bytes.data(), &wire, sizeof(Wire));
  op.bytes.insert(op.bytes.end(), header.begin(), header.end());
  op.bytes.insert(op.bytes.end(), payload.begin(), payload.end());
  op.done = std::move(done);
  Enqueue(p, std::move(op));
}

void VerbsTransport::Pump(Peer* p) {
  while (p->connected && !p->failed && !p->backlog.empty() && p->send_room > 0) {
    Op& op = p->backlog.front();
    if (op.kind == WrKind::kSend && p->free_slots.empty()) return;
    auto w = std::make_unique<Work>();
    w->kind = op.kind;
    w->peer = p;
    w->bytes = op.kind == WrKind::kSend ? op.bytes.size() : op.length;
    w->done = std::move(op.done);
    w->temp_mr = op.temp_mr;
    w->token = op.token;
    ibv_sge sge{};
    ibv_send_wr wr{};
    wr.wr_id = reinterpret_cast<uint64_t>(w.get());
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.send_flags = IBV_SEND_SIGNALED;
    if (op.kind == WrKind::kSend) {
      w->slot = p->free_slots.back();
      p->free_slots.pop_back();
      std::memcpy(Slot(p, w->slot), op.bytes.data(), op.bytes.size());
      sge.addr = reinterpret_cast<uint64_t>(Slot(p, w->slot));
      sge.length = static_cast<uint32_t>(op.bytes.size());
      sge.lkey = p->buffers_mr->lkey;
      wr.opcode = IBV_WR_SEND;
    } else {
      sge.addr = op.local_address;
      sge.length = static_cast<uint32_t>(op.length);
      sge.lkey = op.lkey;
      wr.wr.rdma.remote_addr = op.remote_address;
      wr.wr.rdma.rkey = op.rkey;
      if (op.kind == WrKind::kWrite) {
        wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
        wr.imm_data = htonl(static_cast<uint32_t>(++p->writes_posted));
      } else {
        wr.opcode = IBV_WR_RDMA_READ;
      }
    }
    ibv_send_wr* bad = nullptr;
    if (ibv_post_send(p->id->qp, &wr, &bad) != 0) {
      if (op.kind == WrKind::kSend) p->free_slots.push_back(w->slot);
      op.done = std::move(w->done);
      Fail(p, Unavailable(Errno("peer '" + p->name + "': posting work")));
      return;
    }
    w.release();
    --p->send_room;
    ++p->outstanding;
    p->backlog.pop_front();
  }
}

void VerbsTransport::CompleteFlushes(Peer* p) {
  while (!p->flushes.empty() && p->flushes.front().first <= p->writes_done) {
    auto done = std::move(p->flushes.front().second);
    p->flushes.pop_front();
    done(Status::Ok());
  }
}

void VerbsTransport::Send(const std::string& peer, uint16_t type, std::span<const uint8_t> header,
                          std::span<const uint8_t> payload, Done done) {
  std::vector<uint8_t> h(header.begin(), header.end());
  loop_.Post([this, peer, type, h = std::move(h), payload, done = std::move(done)]() mutable {
    Peer* p = FindPeer(peer);
    if (p == nullptr) {
      done(NoPeer(peer));
      return;
    }
    if (sizeof(Wire) + h.size() > options_.eager_limit) {
      done(InvalidArgument("send to peer '" + peer + "': a " + std::to_string(h.size()) +
                           "-byte header does not fit a message buffer"));
      return;
    }
    ++counters_.messages_sent;
    counters_.bytes_sent += payload.size();
    Wire wire;
    wire.type = type;
    wire.header_length = static_cast<uint32_t>(h.size());
    wire.payload_size = payload.size();
    if (sizeof(Wire) + h.size() + payload.size() <= options_.eager_limit) {
      wire.kind = static_cast<uint8_t>(Kind::kMessage);
      EnqueueMessage(p, wire, h, payload, std::move(done));
      return;
    }
    if (payload.size() > caps_.max_message) {
      done(OutOfRange("send to peer '" + peer + "': a " + std::to_string(payload.size()) +
                      "-byte payload is over the device's " + std::to_string(caps_.max_message) + "-byte limit"));
      return;
    }
    // Too big to travel inline: the receiver reads it from here once it knows where it goes.
    ibv_mr* mr = ibv_reg_mr(pd_, const_cast<uint8_t*>(payload.data()), payload.size(), IBV_ACCESS_REMOTE_READ);
    if (mr == nullptr) {
      done(Unavailable(Errno("send to peer '" + peer + "': registering the payload")));
      return;
    }
    wire.kind = static_cast<uint8_t>(Kind::kReadRequest);
    wire.address = reinterpret_cast<uint64_t>(payload.data());
    wire.rkey = mr->rkey;
    wire.token = next_token_++;
    reads_[wire.token] = ReadRequest{p, mr, std::move(done)};
    EnqueueMessage(p, wire, h, {}, nullptr);
  });
}

void VerbsTransport::Write(const std::string& peer, const MemoryRegion& local, uint64_t local_offset,
                           const RemoteRegion& remote, uint64_t remote_offset, uint64_t length, Done done) {
  Status bad = CheckWriteRanges(peer, local, local_offset, remote, remote_offset, length);
  const auto* region = dynamic_cast<const VerbsRegion*>(&local);
  if (bad.ok() && region == nullptr) bad = InvalidArgument("write to '" + peer + "': the local region is not a verbs one");
  if (bad.ok() && remote.key.size() != 4)
    bad = InvalidArgument("write to '" + peer + "': a " + std::to_string(remote.key.size()) +
                          "-byte remote key is not a verbs key (4 bytes)");
  if (bad.ok() && length > caps_.max_message)
    bad = OutOfRange("write to '" + peer + "': " + std::to_string(length) + " bytes is over the device's limit");
  if (!bad.ok()) {
    loop_.Post([done = std::move(done), bad] { done(bad); });
    return;
  }
  Op op;
  op.kind = WrKind::kWrite;
  op.local_address = reinterpret_cast<uint64_t>(local.data() + local_offset);
  op.lkey = region->lkey();
  op.remote_address = remote.address + remote_offset;
  std::memcpy(&op.rkey, remote.key.data(), 4);
  op.length = length;
  op.done = std::move(done);
  loop_.Post([this, peer, op = std::move(op)]() mutable {
    Peer* p = FindPeer(peer);
    if (p == nullptr) {
      op.done(NoPeer(peer));
      return;
    }
    ++counters_.writes;
    counters_.bytes_sent += op.length;
    ++p->writes_queued;
    Enqueue(p, std::move(op));
  });
}

void VerbsTransport::Flush(const std::string& peer, Done done) {
  loop_.Post([this, peer, done = std::move(done)]() mutable {
    Peer* p = FindPeer(peer);
    if (p == nullptr) {
      done(NoPeer(peer));
      return;
    }
    // Writes complete in order on a reliable connection, and a write's completion means the
    // peer's adapter has it: the flush completes with the last write queued before it.
    p->flushes.emplace_back(p->writes_queued, std::move(done));
    CompleteFlushes(p);
  });
}

void VerbsTransport::Teardown() {
  // Say goodbye (so that peers do not count this as a failure), wait a little for the
  // goodbyes to go out, then disconnect everything.
  auto pending = std::make_shared<int>(0);
  for (auto& [name, p] : peers_) {
    if (p->failed || !p->connected) continue;
    ++*pending;
    Wire bye;
    bye.kind = static_cast<uint8_t>(Kind::kBye);
    EnqueueMessage(p, bye, {}, {}, [pending](Status) { --*pending; });
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  while (*pending > 0 && std::chrono::steady_clock::now() < deadline) PollCompletions();
  for (auto& p : all_peers_) {
    p->departed = true;  // this side is leaving: nothing to report
    if (!p->failed) {
      p->connected = false;
      Fail(p.get(), Cancelled("transport of " + options_.name + " stopped"));
    }
  }
  // Let the flushed work complete (its callbacks see the cancellation), then stop looking.
  const auto drain = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  auto busy = [&] {
    return std::any_of(all_peers_.begin(), all_peers_.end(), [](const auto& p) { return p->outstanding > 0; });
  };
  while (busy() && std::chrono::steady_clock::now() < drain) PollCompletions();
  tearing_down_ = true;
  for (auto& p : all_peers_) {
    if (p->id == nullptr) continue;
    if (p->id->qp != nullptr) rdma_destroy_qp(p->id);
    rdma_destroy_id(p->id);
    p->id = nullptr;
    if (p->buffers_mr != nullptr) ibv_dereg_mr(p->buffers_mr);
    p->buffers_mr = nullptr;
  }
  PollCompletions();
  peers_.clear();
}

void VerbsTransport::Stop() {
  if (stopped_) return;
  stopped_ = true;
  if (loop_.running()) loop_.Stop([this] { Teardown(); });
}

void VerbsTransport::Release() {
  for (auto& p : all_peers_) {
    if (p->id != nullptr) {
      if (p->id->qp != nullptr) rdma_destroy_qp(p->id);
      rdma_destroy_id(p->id);
    }
    if (p->buffers_mr != nullptr) ibv_dereg_mr(p->buffers_mr);
  }
  all_peers_.clear();
  for (auto& [token, r] : reads_) ibv_dereg_mr(r.mr);
  reads_.clear();
  if (listener_ != nullptr) rdma_destroy_id(listener_);
  if (cq_ != nullptr) ibv_destroy_cq(cq_);
  if (completion_channel_ != nullptr) ibv_destroy_comp_channel(completion_channel_);
  if (pd_ != nullptr) ibv_dealloc_pd(pd_);
  if (cm_channel_ != nullptr) rdma_destroy_event_channel(cm_channel_);
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
  listener_ = nullptr;
  cq_ = nullptr;
  completion_channel_ = nullptr;
  pd_ = nullptr;
  cm_channel_ = nullptr;
  epoll_fd_ = -1;
}

}  // namespace

Result<std::unique_ptr<Transport>> MakeVerbsTransport(const VerbsOptions& options) {
  if (FindRdmaDevices().empty()) return FailedPrecondition("verbs: no RDMA device on this machine");
  auto t = std::make_unique<VerbsTransport>(options);
  MC_RETURN_IF_ERROR(t->Init());
  return std::unique_ptr<Transport>(std::move(t));
}

#else  // !MODELCAST_HAVE_VERBS

std::vector<RdmaDevice> FindRdmaDevices() { return {}; }

Result<std::unique_ptr<Transport>> MakeVerbsTransport(const VerbsOptions&) {
  return FailedPrecondition("verbs: this build has no verbs backend (libibverbs/librdmacm not found at configure time)");
}

#endif

}  // namespace modelcast::fabric
