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
  static constexpr int kMembers = EtcdCluster::kMembers;

  // Starts the members under `dir` and waits (30 s at most) until they answer a write.
  Status Start(const std::filesystem::path& dir) {
    dir_ = dir;
    for (int i = 0; i < kMembers; ++i) {
      ports_.client_ports[i] = FreePort();
      ports_.peer_ports[i] = FreePort();
    }
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
  std::vector<std::string> Endpoints() const { return ports_.Endpoints(); }
  std::string YamlList() const { return ports_.YamlList(); }
  // Starts member i: "new" with the others at first, "existing" when it comes back.
  void StartMember(int i, const std::string& state) {
    members_[i] = std::make_unique<Child>(ports_.MemberArgv(i, dir_, state));
  }
  void Kill(int i) {
    members_[i]->Kill(SIGKILL);
    members_[i]->Wait(std::chrono::seconds(10));
  }
  Child& Member(int i) { return *members_[i]; }

 private:
  std::filesystem::path dir_;
  EtcdCluster ports_;
  std::unique_ptr<Child> members_[kMembers];
};

}  // namespace modelcast::testing
