// A test's Thrift client of the coordinator: scale-outs and what became of them. Used by the
// loopback fixture and the netns fault tests (from inside the head's namespace).
#pragma once

#include <gtest/gtest.h>
#include <thrift/protocol/TMultiplexedProtocol.h>

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "Coordinator.h"
#include "modelcast/rpc/server.h"

namespace modelcast::testing {

class CoordinatorProbe {
 public:
  // Connects (with the cluster's token); false with why in `*error`.
  bool Connect(const std::string& address, int port, const std::string& token, std::string* error) {
    client.reset();
    conn.reset();
    security.token = token;
    auto c = rpc::Connect(address, port, security);
    if (!c.ok()) {
      *error = c.status().ToString();
      return false;
    }
    conn = std::move(*c);
    client = std::make_unique<rpc::CoordinatorClient>(
        std::make_shared<apache::thrift::protocol::TMultiplexedProtocol>(conn->protocol, "Coordinator"));
    header = rpc::MakeHeader(security, "test");
    return true;
  }
  void Disconnect() {
    client.reset();
    conn.reset();
  }

  // `targets`: only these nodes may receive (empty: any).
  std::string ScaleOut(const std::string& model, int replicas, const std::vector<std::string>& targets = {}) {
    rpc::ScaleOutRequest so;
    so.header = header;
    so.model = model;
    so.replicas = replicas;
    if (!targets.empty()) {
      rpc::ScaleOptions o;
      o.__set_targets(targets);
      so.__set_options(o);
    }
    rpc::ScaleOutResponse resp;
    client->scaleOut(resp, so);
    return resp.operation_id;
  }
  // Releases `replicas` instances of the model (the coordinator picks them); the operation's id.
  std::string ScaleIn(const std::string& model, int replicas) {
    rpc::ScaleInRequest si;
    si.header = header;
    si.model = model;
    si.replicas = replicas;
    std::string id;
    client->scaleIn(id, si);
    return id;
  }
  rpc::OperationStatus Operation(const std::string& id) {
    rpc::OperationStatus op;
    client->getOperation(op, header, id);
    return op;
  }
  // Follows the operation until it is no longer pending or running, or `timeout` passes.
  rpc::OperationStatus WaitForEnd(const std::string& id,
                                  std::chrono::steady_clock::duration timeout = std::chrono::seconds(60)) {
    rpc::OperationStatus op;
    const auto done_by = std::chrono::steady_clock::now() + timeout;
    do {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      client->getOperation(op, header, id);
    } while ((op.state == rpc::OperationState::RUNNING || op.state == rpc::OperationState::PENDING) &&
             std::chrono::steady_clock::now() < done_by);
    return op;
  }
  static std::map<std::string, rpc::NodeProgress> ByNode(const rpc::OperationStatus& op) {
    std::map<std::string, rpc::NodeProgress> m;
    for (const auto& n : op.nodes) m[n.node] = n;
    return m;
  }
  // "node:STATE" per instance of the model.
  std::vector<std::string> InstanceNodes(const std::string& model) {
    std::vector<rpc::Instance> list;
    client->listInstances(list, header, model);
    std::vector<std::string> nodes;
    for (const auto& i : list) nodes.push_back(i.node + ":" + rpc::to_string(i.state));
    return nodes;
  }
  // The nodes the coordinator takes as alive.
  int AliveNodes() {
    rpc::ClusterStatus st;
    client->getClusterStatus(st, header);
    int alive = 0;
    for (const auto& n : st.nodes) alive += n.alive;
    return alive;
  }
  // Those it does not, with how long ago each was last heard from.
  std::string DeadNodes() {
    rpc::ClusterStatus st;
    client->getClusterStatus(st, header);
    const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    std::string dead;
    for (const auto& n : st.nodes) {
      if (!n.alive) dead += n.name + " (last heard " + std::to_string(now - n.last_heartbeat_unix) + " s ago) ";
    }
    return dead;
  }

  rpc::SecurityConfig security;
  std::unique_ptr<rpc::RpcConnection> conn;
  std::unique_ptr<rpc::CoordinatorClient> client;
  rpc::RequestHeader header;
};

// Moves the calling thread into a network namespace (the sockets it opens then are that
// namespace's) and back when destroyed. Child processes started meanwhile inherit it.
class InNetns {
 public:
  explicit InNetns(const std::string& name) {
    self_ = ::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    const int fd = ::open(("/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC);
    ok_ = self_ >= 0 && fd >= 0 && ::setns(fd, CLONE_NEWNET) == 0;
    if (fd >= 0) ::close(fd);
  }
  ~InNetns() {
    if (ok_ && ::setns(self_, CLONE_NEWNET) != 0) ADD_FAILURE() << "cannot return to the test's network namespace";
    if (self_ >= 0) ::close(self_);
  }
  InNetns(const InNetns&) = delete;
  InNetns& operator=(const InNetns&) = delete;
  bool ok() const { return ok_; }

 private:
  int self_ = -1;
  bool ok_ = false;
};

}  // namespace modelcast::testing
