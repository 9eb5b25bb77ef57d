// The plan executor on an agent: runs this node's part of a multicast plan with a transport.
//
// It sends each slice to its next receiver as soon as it holds it (cut-through: a slice is
// forwarded the moment it has arrived and passed its checksum, not once a whole block has),
// starts its sends in plan order with a window of slices in flight, verifies every received slice's
// XXH3 before forwarding or reporting it, asks the sender again for a corrupt one, and emits
// a progress event per slice. A dead peer, an unexpected or malformed slice, or the deadline
// ends the run with an error naming the peer and the slices.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "modelcast/common/slice_event.h"
#include "modelcast/common/status.h"
#include "modelcast/common/thread_placement.h"
#include "modelcast/fabric/fragment.h"
#include "modelcast/fabric/transport.h"
#include "modelcast/model/manifest.h"

namespace modelcast::fabric {

// Where each slice lives in a node's model buffer (blocks placed one after another at their
// file sizes, so 4 KiB-aligned), and what its checksum is.
struct SliceInfo {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t xxh3 = 0;
  uint32_t block = 0;
};

struct ModelLayout {
  std::string model;
  uint64_t buffer_bytes = 0;
  std::vector<uint64_t> block_offsets;
  std::vector<SliceInfo> slices;

  static ModelLayout FromManifest(const model::Manifest& manifest);
  // Blocks wherever they are in a larger buffer of `buffer_bytes` (the tiered store's host
  // pool: block_offsets[b] = the pool offset of block b's buffer).
  static ModelLayout FromManifest(const model::Manifest& manifest, std::vector<uint64_t> block_offsets,
                                  uint64_t buffer_bytes);
};

// The per-slice progress event (shared with the tiered store).
using SliceEvent = ::modelcast::SliceEvent;

// How slices travel to a receiver. Each receiver announces, before anything moves, whether
// its senders may write into its registered buffer (it then sends its remote descriptor);
// a sender writes where the receiver offers it and its own method allows it, and sends
// messages otherwise. A write is followed by a flush and a "landed" notification.
enum class SliceMethod {
  kAuto,      // writes where the transport tells each write's arrival (write_notify) and
              // `region` is given; messages otherwise (UCX over TCP: bench/fabric_p2p)
  kMessages,  // active messages: the receiver lands each payload where it belongs
  kWrites,    // one-sided writes into the receiver's registered buffer (needs `region`)
};

Result<SliceMethod> ParseSliceMethod(const std::string& name);  // "auto", "messages", "writes"
const char* SliceMethodName(SliceMethod m);

// Where a slice was, when, at one node: its timeline (ExecutorOptions::timeline). Times are
// CLOCK_MONOTONIC seconds (steady_clock), the same clock in every process of a machine, so the
// timelines of two ends on one host line up.
enum class SliceStage : uint8_t {
  kPosted,     // sender: its first piece (message or write) handed to the transport
  kSent,       // sender: its last completion (a message's payload left; a write's local completion)
  kFlushed,    // sender, writes: the flush covering it completed (it has landed at the peer)
  kConfirmed,  // sender: it has gone and left the window (a write: its landed notice has been sent)
  kAnnounced,  // receiver: its first piece (a message header, or a landed notice) arrived
  kAdmitted,   // receiver: its first piece let in (AcceptPayload called)
  kLanded,     // receiver: all of it in the buffer (every piece landed)
  kVerified,   // receiver: its checksum passed and the caller kept it
};
const char* SliceStageName(SliceStage stage);

struct SliceMark {
  uint32_t slice = 0;
  std::string peer;
  SliceStage stage = SliceStage::kPosted;
  double at = 0;  // CLOCK_MONOTONIC seconds
};

// Slices a node comes to hold while its run goes on: a source that streams its blocks from SSD
// adds each slice once it is in the buffer and verified, and the run sends it at once (in plan
// order among those ready), instead of waiting for the whole model to be loaded. A read that
// fails fails the supply, and with it the run. Thread-safe; Add and Fail never block on the run.
class SliceSupply {
 public:
  void Add(uint32_t slice);
  void Fail(Status status);

  // For the run: takes what was added (and the failure) since the last call, and sets who is
  // told of more (nullptr: nobody).
  std::vector<uint32_t> Take(Status* failure);
  void SetListener(std::function<void()> listener);

 private:
  void Tell();

  std::mutex mu_;
  std::vector<uint32_t> added_;
  Status failed_;
  std::function<void()> listener_;
};

// A node's budget for the bytes it sends, shared by every run on the node (the agent's
// fabric.max_send_rate), so that a multicast leaves room on the link for what else the node
// does (serving). Sends start at most `bytes_per_second` on average; one may start up to
// `burst_seconds` of the rate early, so short gaps between sends are not lost. Thread-safe.
class SendPacer {
 public:
  explicit SendPacer(double bytes_per_second, double burst_seconds = 0.005);
  // Counts `bytes` and returns 0 when they may start at `now` (steady_clock seconds); otherwise
  // counts nothing and returns the seconds until they may.
  double Take(uint64_t bytes, double now);
  double Take(uint64_t bytes);  // at the steady clock's now
  double rate() const { return rate_; }

 private:
  const double rate_;
  const double burst_;
  std::mutex mu_;
  double free_at_ = -1e300;  // when what was counted so far has gone at the rate
};

struct ExecutorOptions {
  SliceMethod method = SliceMethod::kAuto;
  // Registered memory for writes, either `region`: the whole model buffer, or `block_regions`:
  // one region per block of the layout, each exactly that block's buffer (nullptr for a block
  // this node neither sends from nor receives into). An agent registers the blocks of one
  // operation for that operation alone: a receiver offers its senders the regions of the blocks
  // it receives and nothing else, so no peer can write anywhere else in its memory.
  const MemoryRegion* region = nullptr;
  std::vector<const MemoryRegion*> block_regions;
  size_t window = 4;                     // slices in flight from this node (to all peers), started in plan order
  size_t recv_window = 2;                // slices landing at once, let in in plan order (messages only)
  size_t lookahead = 8;                  // how far down its plan order a node goes for a send or receive that is ready
  // A slice moves in this many pieces (equal, but for a shorter last one), each its own message
  // or write; a relay forwards each piece of a slice it receives as soon as it has landed
  // (cut-through), and every receiver still checks the whole slice before it counts. So a hop
  // costs a piece's time, not a slice's. 1: whole slices. Each piece costs the sender and the
  // receiver a message: two halves (1 MiB of the 2 MiB slices of bench/fabric_multicast) gave the
  // multicast most of what cut-through gives, at up to a tenth of fabric_p2p's loopback
  // throughput in some runs (docs/BENCHMARKS.md); 1 suits a node with nothing to relay.
  size_t pieces = 2;
  size_t pieces_in_flight = 2;           // per slice being sent: pieces handed to the transport at once
  int max_retries = 3;                   // re-requests of one corrupt slice before giving up
  double deadline = 60;                  // seconds for the whole fragment
  // Called for every slice that arrived and passed its checksum, before the run counts it as
  // received or tells its sender: the caller keeps it (records it in its store) and says
  // whether it could. A refusal fails the run, naming node, model, block, slice and the cause,
  // and the slice is not reported received. Runs on the run's verifier thread, under the run's
  // lock, only while ExecuteFragment has not returned; it must not block.
  std::function<Status(const SliceEvent&)> on_slice;
  const std::atomic<bool>* cancel = nullptr;  // set: the run ends with kCancelled, naming what was missing
  // Held by the run for as long as the transport may still call back into it: normally until
  // ExecuteFragment returns, but longer when a peer never answered and an operation of the run
  // is still in flight (a receive landing in `buffer`, a write from a registered region). The
  // caller puts there what that memory depends on (the buffer's lease, the regions), so that
  // no late transfer lands in memory that has gone to someone else.
  std::shared_ptr<const void> keep_alive;
  bool timeline = false;  // record every slice's stages in ExecutorReport::timeline
  // Slices to send that are neither held at the start nor received come from here (nullptr:
  // every slice sent must be held or received).
  std::shared_ptr<SliceSupply> supply;
  // The node's send budget (nullptr: as fast as the transport takes them). Sends wait, in plan
  // order, until it has room.
  std::shared_ptr<SendPacer> pacer;
  // Where the run's verifier thread, which checks every received slice, runs (its nice value and
  // CPUs; default: as the process's threads). An agent places it with the rest of its fabric
  // (fabric.nice, fabric.cpus), so checksums yield the CPU to requests.
  ThreadPlacement verifier_thread;
};

// What one end of a link measured of it in a run: the bytes that crossed it, and how long the
// link was busy carrying them, so that bytes / busy_seconds is what it carried while in use. A
// straggler shows up as a low rate on every link it has, whatever the plan fed it.
//
// Each end sees part of the truth. A sender times each send from its start to its completion,
// counting the time some send to the peer was in flight: right for writes (a flush completes when
// they have landed) and rendezvous messages, but an eager message completes once the transport
// has buffered it, long before it is on the wire. A receiver sees eager messages arrive whole: it
// takes the rate between consecutive arrivals from a sender, the 75th percentile of them (the
// link's rate while the sender kept it busy; gaps where the sender had nothing to send fall
// below). The coordinator takes the lower of the two.
struct LinkUse {
  std::string peer;
  uint64_t bytes = 0;
  double busy_seconds = 0;
};

struct ExecutorReport {
  uint64_t bytes_received = 0;
  uint64_t bytes_sent = 0;
  uint32_t slices_received = 0;
  uint32_t slices_sent = 0;
  uint32_t corrupt = 0;         // received slices that failed their checksum and were sent again
  uint32_t slices_written = 0;  // of slices_sent, those sent by one-sided write
  double seconds = 0;
  double first_send = -1;    // seconds since the run began; -1: none
  double last_receive = -1;  // when the last slice landed and passed its checksum; -1: none
  std::vector<LinkUse> sent_to;        // per receiver this node sent to, timed by its sends
  std::vector<LinkUse> received_from;  // per sender of slice messages, timed by their arrivals
  double started_at = 0;               // CLOCK_MONOTONIC seconds when the run began
  std::vector<SliceMark> timeline;     // with ExecutorOptions::timeline, in the order they happened
};

// `buffer` holds the model per `layout`: filled where `held` says so (a source holds it all),
// written by receives elsewhere. The transport must be started and connected to the peers.
//
// Threads: the call blocks its caller until the run has ended and its transport operations are
// over (or, for a peer that never answers, given up on after a few seconds: see keep_alive).
// While it runs, the run takes the transport's message and peer-failure handlers; it lets go of
// them before it returns, and a callback the transport still makes after that finds the run
// ended and does nothing the caller could see. The transport (or channel) passed in may be
// destroyed once the call has returned.
// The report's timeline as CSV (`node,slice,peer,stage,at`, a header line first), for
// scripts/slice-timeline.py, which lines up the timelines of every node of a run.
std::string TimelineCsv(const std::string& node, const ExecutorReport& report);

Result<ExecutorReport> ExecuteFragment(Transport& transport, const ModelLayout& layout, uint8_t* buffer,
                                       const std::vector<bool>& held, const PlanFragment& fragment,
                                       const ExecutorOptions& options);

}  // namespace modelcast::fabric
