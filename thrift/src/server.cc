#include "modelcast/rpc/server.h"

#include <thrift/TOutput.h>
#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/server/TThreadedServer.h>
#include <thrift/transport/TBufferTransports.h>
#include <thrift/transport/TSSLServerSocket.h>
#include <thrift/transport/TSSLSocket.h>
#include <thrift/transport/TServerSocket.h>
#include <thrift/transport/TSocket.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <future>

#include <glog/logging.h>

namespace modelcast::rpc {

using apache::thrift::TException;
using apache::thrift::protocol::TBinaryProtocol;
using apache::thrift::server::TThreadedServer;
using apache::thrift::transport::TServerSocket;
using apache::thrift::transport::TSocket;
using apache::thrift::transport::TSSLServerSocket;
using apache::thrift::transport::TSSLSocketFactory;

namespace {

// Once per process: Thrift's own messages go to glog, and SIGPIPE is ignored (OpenSSL writes
// to its sockets with write(), so a peer that hung up mid-handshake would otherwise kill the
// daemon; the write's EPIPE is handled instead).
void InitOnce() {
  static const bool done = [] {
    std::signal(SIGPIPE, SIG_IGN);
    apache::thrift::GlobalOutput.setOutputFunction([](const char* msg) { LOG(WARNING) << "thrift: " << msg; });
    return true;
  }();
  (void)done;
}

Result<std::shared_ptr<TSSLSocketFactory>> TlsFactory(const SecurityConfig& s, bool server) {
  try {
    auto f = std::make_shared<TSSLSocketFactory>();
    f->loadCertificate(s.tls_cert.c_str());
    f->loadPrivateKey(s.tls_key.c_str());
    f->loadTrustedCertificates(s.tls_ca.c_str());
    f->authenticate(true);  // the peer must present a certificate signed by the CA
    f->server(server);
    return f;
  } catch (const TException& e) {
    return InvalidArgument(std::string("security: loading the TLS certificate, key or CA: ") + e.what());
  }
}

// Fulfils a promise once the server listens.
class ReadySignal : public apache::thrift::server::TServerEventHandler {
 public:
  explicit ReadySignal(std::shared_ptr<std::promise<Status>> ready) : ready_(std::move(ready)) {}
  void preServe() override { ready_->set_value(Status::Ok()); }

 private:
  std::shared_ptr<std::promise<Status>> ready_;
};

}  // namespace

namespace {

// Thrift's framed transport, but a frame's bytes are gathered as they arrive: Thrift's own
// allocates the whole frame when it has read the length. A frame is decoded only once it is
// whole, so what is left of it bounds every container claim in it (BoundedBinaryProtocol).
class GatheringFramedTransport : public apache::thrift::transport::TFramedTransport {
 public:
  explicit GatheringFramedTransport(std::shared_ptr<TTransport> transport) : TFramedTransport(std::move(transport)) {
    setMaxFrameSize(kMaxFrameBytes);
    // An empty read buffer to start with, not none: Thrift's fast path adds to the buffer's
    // pointer before it finds it empty (UBSan: an offset applied to a null pointer).
    rBuf_.reset(new uint8_t[kInitialBuffer]);
    rBufSize_ = kInitialBuffer;
    setReadBuffer(rBuf_.get(), 0);
  }
  static constexpr uint32_t kInitialBuffer = 4096;
  // Bytes of the frame being decoded not read yet.
  uint64_t unread() const { return static_cast<uint64_t>(rBound_ - rBase_); }

 protected:
  bool readFrame() override {
    using apache::thrift::transport::TTransportException;
    uint8_t length[4];
    uint32_t got = 0;
    while (got < sizeof(length)) {
      const uint32_t n = transport_->read(length + got, static_cast<uint32_t>(sizeof(length)) - got);
      if (n == 0) {
        if (got == 0) return false;  // the peer closed between messages
        throw TTransportException(TTransportException::END_OF_FILE, "a frame's length was cut short");
      }
      got += n;
    }
    const uint32_t size = (uint32_t{length[0]} << 24) | (uint32_t{length[1]} << 16) | (uint32_t{length[2]} << 8) |
                          uint32_t{length[3]};
    if (size > getMaxFrameSize()) {
      throw TTransportException(TTransportException::CORRUPTED_DATA,
                                "a frame of " + std::to_string(size) + " bytes (at most " +
                                    std::to_string(getMaxFrameSize()) + ")");
    }
    // The buffer at most doubles what has arrived.
    std::vector<uint8_t> frame;
    while (frame.size() < size) {
      const size_t have = frame.size();
      const size_t want = std::min<size_t>(size - have, std::max<size_t>(64 << 10, have));
      frame.resize(have + want);
      const uint32_t n = transport_->read(frame.data() + have, static_cast<uint32_t>(want));
      if (n == 0) throw TTransportException(TTransportException::END_OF_FILE, "a frame was cut short");
      frame.resize(have + n);
    }
    if (size > rBufSize_) {
      rBuf_.reset(new uint8_t[size]);
      rBufSize_ = size;
    }
    if (size > 0) std::memcpy(rBuf_.get(), frame.data(), size);
    setReadBuffer(rBuf_.get(), size);
    return true;
  }
};

// The binary protocol, with the limits above and one more: a list, set or map may claim no
// more elements than the rest of its frame can hold, at least a byte each (Thrift's own check
// counts an element struct as zero bytes, so a list of structs could claim millions in a few
// bytes, and its generated code sizes the list before reading it).
class BoundedBinaryProtocol
    : public apache::thrift::protocol::TVirtualProtocol<BoundedBinaryProtocol, apache::thrift::protocol::TBinaryProtocol> {
 public:
  explicit BoundedBinaryProtocol(std::shared_ptr<apache::thrift::transport::TTransport> transport)
      : TVirtualProtocol(transport), frame_(dynamic_cast<GatheringFramedTransport*>(transport.get())) {
    setStringSizeLimit(kMaxStringBytes);
    setContainerSizeLimit(kMaxContainerElements);
    setStrict(false, true);
  }

  uint32_t readListBegin(apache::thrift::protocol::TType& type, uint32_t& size) {
    const uint32_t n = TBinaryProtocol::readListBegin(type, size);
    Check(size, Least(type));
    return n;
  }
  uint32_t readSetBegin(apache::thrift::protocol::TType& type, uint32_t& size) {
    const uint32_t n = TBinaryProtocol::readSetBegin(type, size);
    Check(size, Least(type));
    return n;
  }
  uint32_t readMapBegin(apache::thrift::protocol::TType& key, apache::thrift::protocol::TType& value,
                        uint32_t& size) {
    const uint32_t n = TBinaryProtocol::readMapBegin(key, value, size);
    Check(size, Least(key) + Least(value));
    return n;
  }

 private:
  uint64_t Least(apache::thrift::protocol::TType type) {
    return std::max<uint64_t>(1, static_cast<uint64_t>(getMinSerializedSize(type)));
  }
  void Check(uint32_t elements, uint64_t least) const {
    if (frame_ != nullptr && uint64_t{elements} * least > frame_->unread()) {
      throw apache::thrift::protocol::TProtocolException(
          apache::thrift::protocol::TProtocolException::SIZE_LIMIT,
          "a container of " + std::to_string(elements) + " elements in " + std::to_string(frame_->unread()) +
              " bytes");
    }
  }

  GatheringFramedTransport* frame_;  // null: not framed (no bound beyond Thrift's)
};

class BoundedBinaryProtocolFactory : public apache::thrift::protocol::TProtocolFactory {
 public:
  std::shared_ptr<apache::thrift::protocol::TProtocol> getProtocol(
      std::shared_ptr<apache::thrift::transport::TTransport> transport) override {
    return std::make_shared<BoundedBinaryProtocol>(std::move(transport));
  }
};

class GatheringFramedTransportFactory : public apache::thrift::transport::TTransportFactory {
 public:
  std::shared_ptr<apache::thrift::transport::TTransport> getTransport(
      std::shared_ptr<apache::thrift::transport::TTransport> transport) override {
    return std::make_shared<GatheringFramedTransport>(std::move(transport));
  }
};

}  // namespace

std::shared_ptr<apache::thrift::transport::TTransport> FramedTransport(
    std::shared_ptr<apache::thrift::transport::TTransport> socket) {
  return std::make_shared<GatheringFramedTransport>(std::move(socket));
}

std::shared_ptr<apache::thrift::transport::TTransportFactory> ServerTransportFactory() {
  return std::make_shared<GatheringFramedTransportFactory>();
}

std::shared_ptr<apache::thrift::protocol::TProtocolFactory> ServerProtocolFactory() {
  return std::make_shared<BoundedBinaryProtocolFactory>();
}

Result<std::unique_ptr<RpcServer>> RpcServer::Start(std::shared_ptr<apache::thrift::TProcessor> processor,
                                                    const std::string& address, int port,
                                                    const SecurityConfig& security) {
  InitOnce();
  MC_RETURN_IF_ERROR(security.Validate());
  std::shared_ptr<TServerSocket> socket;
  if (security.tls()) {
    MC_ASSIGN_OR_RETURN(auto factory, TlsFactory(security, true));
    socket = std::make_shared<TSSLServerSocket>(address, port, factory);
  } else {
    socket = std::make_shared<TServerSocket>(address, port);
  }
  std::unique_ptr<RpcServer> s(new RpcServer());
  s->server_ = std::make_shared<TThreadedServer>(processor, socket, ServerTransportFactory(), ServerProtocolFactory());
  // serve() binds and listens; the event handler tells when it has (or the thread that it failed).
  auto ready = std::make_shared<std::promise<Status>>();
  s->server_->setServerEventHandler(std::make_shared<ReadySignal>(ready));
  s->thread_ = std::thread([server = s->server_, ready, address, port] {
    try {
      server->serve();
    } catch (const TException& e) {
      try {
        ready->set_value(
            ::modelcast::Unavailable("cannot listen on " + address + ":" + std::to_string(port) + ": " + e.what()));
      } catch (const std::future_error&) {
        LOG(ERROR) << "rpc server on " << address << ":" << port << " stopped: " << e.what();
      }
    }
  });
  auto listening = ready->get_future();
  if (listening.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    return DeadlineExceeded("rpc server on " + address + ":" + std::to_string(port) + " did not start listening");
  }
  MC_RETURN_IF_ERROR(listening.get());
  s->port_ = socket->getPort();
  if (security.insecure && !security.tls() && security.token.empty()) {
    LOG(WARNING) << "rpc server on " << address << ":" << s->port_
                 << " is plaintext without credentials (insecure: true)";
  }
  return s;
}

RpcServer::~RpcServer() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

RpcConnection::~RpcConnection() {
  try {
    if (transport && transport->isOpen()) transport->close();
  } catch (const TException&) {
  }
}

Result<std::unique_ptr<RpcConnection>> Connect(const std::string& address, int port, const SecurityConfig& security,
                                               int timeout_ms) {
  InitOnce();
  std::shared_ptr<TSocket> socket;
  if (security.tls()) {
    MC_ASSIGN_OR_RETURN(auto factory, TlsFactory(security, false));
    socket = factory->createSocket(address, port);
  } else {
    socket = std::make_shared<TSocket>(address, port);
  }
  socket->setConnTimeout(timeout_ms);
  socket->setRecvTimeout(timeout_ms);
  socket->setSendTimeout(timeout_ms);
  auto c = std::make_unique<RpcConnection>();
  // Answers are decoded as the servers decode requests: framed, within the same limits.
  c->transport = FramedTransport(socket);
  c->protocol = ServerProtocolFactory()->getProtocol(c->transport);
  try {
    c->transport->open();
  } catch (const TException& e) {
    return ::modelcast::Unavailable("cannot connect to " + address + ":" + std::to_string(port) + ": " + e.what());
  }
  return c;
}

Result<std::vector<Endpoint>> ParseEndpoints(const std::string& list) {
  std::vector<Endpoint> out;
  for (size_t at = 0; at <= list.size();) {
    const size_t comma = std::min(list.find(',', at), list.size());
    std::string entry = list.substr(at, comma - at);
    at = comma + 1;
    while (!entry.empty() && entry.front() == ' ') entry.erase(entry.begin());
    while (!entry.empty() && entry.back() == ' ') entry.pop_back();
    const size_t colon = entry.rfind(':');
    if (entry.empty()) return InvalidArgument("empty entry in the address list '" + list + "'");
    if (colon == std::string::npos || colon == 0)
      return InvalidArgument("'" + entry + "' is not host:port (in '" + list + "')");
    const std::string port = entry.substr(colon + 1);
    int p = 0;
    if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), ::isdigit) ||
        (p = std::stoi(port)) < 1 || p > 65535)
      return InvalidArgument("'" + entry + "': the port must be a number from 1 to 65535");
    out.push_back({entry.substr(0, colon), p});
  }
  return out;
}

Result<std::unique_ptr<RpcConnection>> ConnectAny(const std::vector<Endpoint>& endpoints, const SecurityConfig& security,
                                                  int timeout_ms, size_t* next) {
  if (endpoints.empty()) return InvalidArgument("no server address to connect to");
  std::string tried;
  const size_t start = *next % endpoints.size();
  for (size_t k = 0; k < endpoints.size(); ++k) {
    const size_t i = (start + k) % endpoints.size();
    auto c = Connect(endpoints[i].host, endpoints[i].port, security, timeout_ms);
    if (c.ok()) {
      *next = i;
      return c;
    }
    tried += (tried.empty() ? "" : "; ") + c.status().message();
  }
  return ::modelcast::Unavailable(tried);
}

}  // namespace modelcast::rpc
