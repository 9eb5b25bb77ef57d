// A standby coordinator's HTTP API: it listens where its serving.http says and forwards every
// request to the leader's API (its address from etcd, published there by the leader on its
// lease): a whole answer once it is whole, a stream (server-sent events) as it comes. While no
// coordinator leads (between a leader's death and the next one's start) it answers 503 with
// Retry-After, which OpenAI's clients retry; an answer cut short by the leader's death ends the
// stream early, which they retry too. Clients may so be pointed at any coordinator of the head.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "modelcast/common/status.h"

namespace httplib {
class Server;
}

namespace modelcast::coordinator {

class EtcdClient;

class ServingForwarder {
 public:
  // The leader's API is at the value of `key` in etcd ("host:port"; absent: nobody leads now),
  // read again when the last read is more than half a second old.
  static Result<std::unique_ptr<ServingForwarder>> Start(const std::string& address, int port, int threads,
                                                         std::shared_ptr<EtcdClient> etcd, std::string key);
  // Stops listening; requests being forwarded are cut short.
  ~ServingForwarder();
  int port() const { return port_; }

 private:
  ServingForwarder() = default;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
  // The leader API's "host:port" (empty: nobody leads; an error: etcd did not answer).
  Result<std::string> Leader();

  std::shared_ptr<EtcdClient> etcd_;
  std::string key_;
  std::mutex mu_;  // the address last read
  std::string leader_;
  std::chrono::steady_clock::time_point read_;
};

}  // namespace modelcast::coordinator
