// The command lines of a three-member etcd cluster (Debian's
// etcd-server): shared by the tests (EtcdMembers) and the benchmarks that run a replicated head.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace modelcast::testing {

inline const char* EtcdBinary() {
  for (const char* p : {"/usr/bin/etcd", "/usr/local/bin/etcd"}) {
    if (std::filesystem::exists(p)) return p;
  }
  return nullptr;
}

inline std::string EtcdMemberName(int i) { return "m" + std::to_string(i); }

// Where the three members of a test's etcd listen, and their command lines. Short heartbeats and
// elections, so that a member killed is replaced in about a second.
struct EtcdCluster {
  static constexpr int kMembers = 3;
  std::string host = "127.0.0.1";  // where every member listens (loopback, or a test's namespace)
  int client_ports[kMembers] = {}, peer_ports[kMembers] = {};

  // Clients' "host:port" of every member.
  std::vector<std::string> Endpoints() const {
    std::vector<std::string> e;
    for (int p : client_ports) e.push_back(host + ":" + std::to_string(p));
    return e;
  }
  // "[a, b, c]": the endpoints as a YAML flow list.
  std::string YamlList() const {
    std::string eps;
    for (const auto& e : Endpoints()) eps += (eps.empty() ? "" : ", ") + e;
    return "[" + eps + "]";
  }
  // Member i, its data in `dir`/m<i>; `state` is "new" at first and "existing" when it comes back.
  std::vector<std::string> MemberArgv(int i, const std::filesystem::path& dir, const std::string& state) const {
    std::string cluster;
    for (int k = 0; k < kMembers; ++k) {
      cluster += (k ? "," : "") + EtcdMemberName(k) + "=http://" + host + ":" + std::to_string(peer_ports[k]);
    }
    const std::string client = "http://" + host + ":" + std::to_string(client_ports[i]);
    const std::string peer = "http://" + host + ":" + std::to_string(peer_ports[i]);
    return {EtcdBinary(), "--name", EtcdMemberName(i), "--data-dir", (dir / EtcdMemberName(i)).string(),
            "--listen-client-urls", client, "--advertise-client-urls", client, "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer, "--initial-cluster", cluster, "--initial-cluster-state", state,
            "--initial-cluster-token", "mc-test", "--heartbeat-interval", "50", "--election-timeout", "500",
            "--log-level", "warn"};
  }
};

}  // namespace modelcast::testing
