// A Thrift server and client connections with modelcast's security: binary protocol over
// framed sockets, mutual TLS when configured. The server binds only to the address it is
// given and serves each connection on its own thread.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <thrift/TProcessor.h>
#include <thrift/protocol/TProtocol.h>
#include <thrift/transport/TTransport.h>
#include <thrift/transport/TTransportUtils.h>

#include "modelcast/common/status.h"
#include "modelcast/rpc/security.h"

namespace apache::thrift::server {
class TThreadedServer;
}

namespace modelcast::rpc {

// What a request may claim before it is refused while it is decoded (before any credential is
// looked at): a string of at most 64 MiB (a manifest is far smaller), a list, set or map of at
// most 4 Mi elements (a plan fragment lists at most every slice of a model, and a model has at
// most 4 Mi slices); Thrift's own limit on a whole message (100 MB) applies as well.
constexpr int32_t kMaxStringBytes = 64 << 20;
constexpr int32_t kMaxContainerElements = 4 << 20;

// Every message travels in a frame (Thrift's framed transport: a 4-byte length, then the
// message) of at most kMaxFrameBytes. A reader gathers a frame's bytes as they arrive (its buffer
// grows with them, rather than being allocated whole when the length is read) and decodes it only
// once all of it is here, so a list, set or map in it can claim no more elements than the frame's
// bytes can hold: no request makes a server allocate for bytes it was never sent.
constexpr uint32_t kMaxFrameBytes = 100 << 20;

// The binary protocol with those limits: what every modelcast server decodes requests with.
std::shared_ptr<apache::thrift::protocol::TProtocolFactory> ServerProtocolFactory();
// The framed transport that gathers frames as they arrive (servers' and clients' alike).
std::shared_ptr<apache::thrift::transport::TTransport> FramedTransport(
    std::shared_ptr<apache::thrift::transport::TTransport> socket);
std::shared_ptr<apache::thrift::transport::TTransportFactory> ServerTransportFactory();

class RpcServer {
 public:
  // Listens on address:port (port 0: any free port; port() tells which) and serves in the
  // background. A bad address, a port in use or unreadable TLS files are errors.
  static Result<std::unique_ptr<RpcServer>> Start(std::shared_ptr<apache::thrift::TProcessor> processor,
                                                  const std::string& address, int port, const SecurityConfig& security);
  ~RpcServer();  // stops serving and joins its threads
  RpcServer(const RpcServer&) = delete;
  RpcServer& operator=(const RpcServer&) = delete;

  int port() const { return port_; }

 private:
  RpcServer() = default;
  std::shared_ptr<apache::thrift::server::TThreadedServer> server_;
  std::thread thread_;
  int port_ = 0;
};

// An open connection to a server: `protocol` is what generated clients take.
struct RpcConnection {
  std::shared_ptr<apache::thrift::transport::TTransport> transport;
  std::shared_ptr<apache::thrift::protocol::TProtocol> protocol;
  ~RpcConnection();
};

// Connects to address:port within `timeout_ms` (also each call's send/receive timeout).
Result<std::unique_ptr<RpcConnection>> Connect(const std::string& address, int port, const SecurityConfig& security,
                                               int timeout_ms = 5000);

// One server of several that stand in for each other (the coordinators of a highly available
// head: only the leader listens).
struct Endpoint {
  std::string host;
  int port = 0;
  std::string ToString() const { return host + ":" + std::to_string(port); }
};
// "host:port" or "host:port,host:port,...": an error names the entry that is wrong.
Result<std::vector<Endpoint>> ParseEndpoints(const std::string& list);
// Connects to the first of `endpoints` that answers, trying them in turn from `*next` (which is
// left at the one that answered, so the next call starts there); the error names every one tried.
Result<std::unique_ptr<RpcConnection>> ConnectAny(const std::vector<Endpoint>& endpoints, const SecurityConfig& security,
                                                  int timeout_ms, size_t* next);

}  // namespace modelcast::rpc
