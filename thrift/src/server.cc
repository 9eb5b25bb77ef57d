#include "modelcast/rpc/server.h"

#include <thrift/TOutput.h>
#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/server/TThreadedServer.h>
#include <thrift/transport/TBufferTransports.h>
#include <thrift/transport/TSSLServerSocket.h>
#include <thrift/transport/TSSLSocket.h>
#include <thrift/transport/TServerSocket.h>
#include <thrift/transport/TSocket.h>

#include <csignal>
#include <future>

#include <glog/logging.h>

namespace modelcast::rpc {

using apache::thrift::TException;
using apache::thrift::protocol::TBinaryProtocol;
using apache::thrift::protocol::TBinaryProtocolFactory;
using apache::thrift::server::TThreadedServer;
using apache::thrift::transport::TBufferedTransport;
using apache::thrift::transport::TBufferedTransportFactory;
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

std::shared_ptr<apache::thrift::protocol::TProtocolFactory> ServerProtocolFactory() {
  return std::make_shared<TBinaryProtocolFactory>(kMaxStringBytes, kMaxContainerElements, /*strict_read=*/false,
                                                  /*strict_write=*/true);
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
  s->server_ = std::make_shared<TThreadedServer>(processor, socket, std::make_shared<TBufferedTransportFactory>(),
                                                 ServerProtocolFactory());
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
  c->transport = std::make_shared<TBufferedTransport>(socket);
  c->protocol = std::make_shared<TBinaryProtocol>(c->transport);
  try {
    c->transport->open();
  } catch (const TException& e) {
    return ::modelcast::Unavailable("cannot connect to " + address + ":" + std::to_string(port) + ": " + e.what());
  }
  return c;
}

}  // namespace modelcast::rpc
