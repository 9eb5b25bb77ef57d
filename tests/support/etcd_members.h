// Three etcd members on loopback (Debian's etcd-server), each with a data dir of its own: the
// consensus store of the highly available coordinator's tests. A member can be killed and started
// again with its data (it catches up).
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "etcd_client.h"
#include "support/etcd_command.h"
#include "support/ports.h"
#include "support/process.h"

namespace modelcast::testing {

class EtcdMembers {
 public:
  static constexpr int kMembers = 3;

  // Starts the members under `dir` and waits (30 s at most) until they answer a write.
  Status Start(const std::filesystem::path& dir) {
    dir_ = dir;
    std::string cluster;
    for (int i = 0; i < kMembers; ++i) {
      client_ports_[i] = FreePort();
      peer_ports_[i] = FreePort();
      cluster += (i ? "," : "") + Name(i) + "=http://127.0.0.1:" + std::to_string(peer_ports_[i]);
    }
    cluster_ = cluster;
    for (int i = 0; i < kMembers; ++i) StartMember(i, "new");
    auto c = coordinator::EtcdClient::Create(Endpoints(), 5);
    if (!c.ok()) return c.status();
    const auto by = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    Status st = Unavailable("not asked");
    while (std::chrono::steady_clock::now() < by) {
      auto v = (*c)->Version();
      st = v.ok() ? (*c)->Put("/ready", "1").status() : v.status();
      if (st.ok()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // a poll with a deadline: they elect a leader
    }
    return st;
  }
  static std::string Name(int i) { return EtcdMemberName(i); }
  std::vector<std::string> Endpoints() const {
    std::vector<std::string> e;
    for (int p : client_ports_) e.push_back("127.0.0.1:" + std::to_string(p));
    return e;
  }
  // "[a, b, c]": the endpoints as a YAML flow list.
  std::string YamlList() const {
    std::string eps;
    for (const auto& e : Endpoints()) eps += (eps.empty() ? "" : ", ") + e;
    return "[" + eps + "]";
  }
  // Starts member i: "new" with the others at first, "existing" when it comes back.
  void StartMember(int i, const std::string& state) {
    members_[i] = std::make_unique<Child>(EtcdMemberArgv(i, dir_, client_ports_[i], peer_ports_[i], cluster_, state));
  }
  void Kill(int i) {
    members_[i]->Kill(SIGKILL);
    members_[i]->Wait(std::chrono::seconds(10));
  }
  Child& Member(int i) { return *members_[i]; }

 private:
  std::filesystem::path dir_;
  int client_ports_[kMembers] = {}, peer_ports_[kMembers] = {};
  std::string cluster_;
  std::unique_ptr<Child> members_[kMembers];
};

}  // namespace modelcast::testing
