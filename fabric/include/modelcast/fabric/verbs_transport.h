// The raw verbs backend: libibverbs and librdmacm, one reliable-connected queue pair per peer.
//
// Connections are made with the RDMA connection manager (rdma_cm) on "ip:port" addresses of
// RDMA-capable interfaces (InfiniBand's IPoIB, RoCE). Small messages travel inline as SENDs
// into receive buffers posted ahead; a message payload larger than `eager_limit` is read by the
// receiver with RDMA READ straight into the destination it accepts. Writes are RDMA WRITE WITH
// IMMEDIATE: the receiver learns of each write as it lands, and since a reliable connection
// keeps order, a message sent after a write arrives after the write's bytes (write_notify).
// GPU memory is registered through dma-buf (cuMemGetHandleForAddressRange +
// ibv_reg_dmabuf_mr) where the driver offers it, else through nvidia-peermem when loaded, else
// refused so that the caller stages it through host memory.
//
// Built when libibverbs and librdmacm are found (MODELCAST_WITH_VERBS); without them, or
// without an RDMA device, MakeVerbsTransport fails with a message saying which.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "modelcast/common/thread_placement.h"
#include "modelcast/fabric/transport.h"
#include "modelcast/fabric/ucx_transport.h"

namespace modelcast::fabric {

struct VerbsOptions {
  std::string name;                     // this node's name
  std::string listen_address;           // ip:port on an RDMA-capable interface; port 0 picks one
  double connect_timeout = 10;          // seconds for a peer to answer Connect
  uint32_t queue_depth = 128;           // receive buffers and outstanding sends per peer
  uint32_t eager_limit = 16 * 1024;     // header + payload up to this size travel inline
  ThreadPlacement thread;               // the progress thread's nice value and CPUs
};

// Whether this build has the verbs backend.
bool VerbsCompiled();

struct RdmaDevice {
  std::string name;                    // e.g. mlx5_0
  std::vector<std::string> addresses;  // IPv4 addresses of the network interfaces behind it
};
// The RDMA devices on this machine; empty without any (or without the verbs backend).
std::vector<RdmaDevice> FindRdmaDevices();

Result<std::unique_ptr<Transport>> MakeVerbsTransport(const VerbsOptions& options);

}  // namespace modelcast::fabric
