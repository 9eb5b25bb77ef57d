// A transport wrapper that injects faults, for reliability tests: it drops, delays or
// corrupts messages, and fails a peer after some bytes, on top of a real transport.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "modelcast/fabric/transport.h"

namespace modelcast::fabric {

struct FaultOptions {
  // 1-based positions, among the payload transfers this node starts (messages that carry a
  // payload, and one-sided writes, counted together), of those to alter: corrupted ones
  // arrive with one byte of the payload flipped (the sender's buffer is untouched); dropped
  // ones are reported done and never arrive.
  std::vector<uint64_t> corrupt;
  std::vector<uint64_t> drop;
  double delay = 0;       // seconds every message, write and flush waits before it starts
  std::string fail_peer;  // after fail_after_bytes of payload to this peer, it "fails"
  uint64_t fail_after_bytes = 0;

  // "corrupt=2,5;drop=7;delay=10ms;fail=node-3@100MiB" (any subset, ';'-separated).
  static Result<FaultOptions> Parse(const std::string& spec);
  bool empty() const { return corrupt.empty() && drop.empty() && delay == 0 && fail_peer.empty(); }
};

std::unique_ptr<Transport> MakeFaultTransport(std::unique_ptr<Transport> inner, FaultOptions options);

}  // namespace modelcast::fabric
