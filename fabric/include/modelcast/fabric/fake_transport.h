// An in-process network of transports, for tests that must provoke races cheaply: no sockets,
// every byte copied in memory, and every callback run on its node's own progress thread, as a
// real backend runs them (the same handler bookkeeping as UCX's). Links can be cut and nodes
// killed on command, from any thread, at any moment; a seeded jitter delays each delivery and
// completion so that runs interleave differently from one seed to the next.
//
// What crosses a link arrives in the order it was started (messages, writes and flushes
// alike, per direction). Payloads up to `eager_limit` are copied when sent, and the send
// completes at once (UCX's eager protocol); larger ones are read from the sender's buffer only
// when the receiver accepts them, and the send completes then (rendezvous). A cut fails what
// is in flight on the link, at both ends, and reports the peer failed to both.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "modelcast/fabric/transport.h"

namespace modelcast::fabric {

struct FakeNetworkOptions {
  uint64_t seed = 1;
  double max_jitter = 0;           // seconds: deliveries and completions wait up to this long
  uint64_t eager_limit = 4 << 10;  // larger payloads move when accepted (rendezvous)
  bool write_notify = false;       // capabilities().write_notify of its transports
};

struct FakeNetworkStats {
  uint64_t messages = 0;    // delivered
  uint64_t writes = 0;      // landed
  uint64_t failed_ops = 0;  // operations failed by a cut, a kill or a stop
  uint64_t cuts = 0;        // links cut (a kill counts each of its links)
};

class FakeNetwork {
 public:
  explicit FakeNetwork(FakeNetworkOptions options = {});
  // Every transport joined must be destroyed first.
  ~FakeNetwork();
  FakeNetwork(const FakeNetwork&) = delete;
  FakeNetwork& operator=(const FakeNetwork&) = delete;

  // The transport of node `name` (its address: "fake:<name>"). Not started; one per name.
  Result<std::unique_ptr<Transport>> Join(const std::string& name);

  // Cuts every link of `name` and refuses its connections from now on: what is in flight to
  // or from it fails, and both ends of each link see the other fail.
  void Kill(const std::string& name);
  // Cuts the link between `a` and `b` (both see the other fail); they may connect again.
  void Cut(const std::string& a, const std::string& b);

  FakeNetworkStats stats() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace modelcast::fabric
