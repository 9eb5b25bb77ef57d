// The UCX backend (the default). UCX picks RDMA verbs, shared memory or TCP by itself; the
// settings that matter are given here, from the agent's config, not users' shells.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "modelcast/common/thread_placement.h"
#include "modelcast/fabric/transport.h"

namespace modelcast::fabric {

struct UcxOptions {
  std::string name;                            // this node's name
  std::string listen_address = "127.0.0.1:0";  // ip:port; port 0 picks a free one
  std::string tls;                             // UCX_TLS, e.g. "tcp" inside network namespaces
  std::string net_devices;                     // UCX_NET_DEVICES, e.g. "eth0"
  std::string tcp_seg_size = "1m";             // UCX_TCP_TX_SEG_SIZE and UCX_TCP_RX_SEG_SIZE (bench/fabric_p2p)
  double connect_timeout = 10;                 // seconds for a peer to answer Connect
  double keepalive_interval = 1;               // seconds: how soon a silent peer counts as dead
  std::map<std::string, std::string> extra;    // any other UCX setting, without "UCX_"
  ThreadPlacement thread;                      // the progress thread's nice value and CPUs (agent: fabric.nice, .cpus)
};

Result<std::unique_ptr<Transport>> MakeUcxTransport(const UcxOptions& options);

}  // namespace modelcast::fabric
