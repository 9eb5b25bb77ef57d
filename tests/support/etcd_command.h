// The command line of one etcd member of a three-member cluster (Debian's
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

// Member i, its data in `dir`/m<i>; `cluster` names every member's peer URL ("m0=http://..,m1=.."),
// `state` is "new" at first and "existing" when it comes back. Short heartbeats and elections,
// so that a member killed is replaced in about a second.
// `host`: the address it listens on (loopback unless a test puts it in a namespace).
inline std::vector<std::string> EtcdMemberArgv(int i, const std::filesystem::path& dir, int client_port,
                                               int peer_port, const std::string& cluster, const std::string& state,
                                               const std::string& host = "127.0.0.1") {
  const std::string client = "http://" + host + ":" + std::to_string(client_port);
  const std::string peer = "http://" + host + ":" + std::to_string(peer_port);
  return {EtcdBinary(), "--name", EtcdMemberName(i), "--data-dir", (dir / EtcdMemberName(i)).string(),
          "--listen-client-urls", client, "--advertise-client-urls", client, "--listen-peer-urls", peer,
          "--initial-advertise-peer-urls", peer, "--initial-cluster", cluster, "--initial-cluster-state", state,
          "--initial-cluster-token", "mc-test", "--heartbeat-interval", "50", "--election-timeout", "500",
          "--log-level", "warn"};
}

}  // namespace modelcast::testing
