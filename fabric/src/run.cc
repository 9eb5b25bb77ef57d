#include "run.h"

#include <glog/logging.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include "modelcast/common/checksum.h"
#include "modelcast/common/thread_placement.h"
#include "modelcast/fabric/wire.h"

namespace modelcast::fabric {
namespace {

// The run's state (see run.h for who owns it and which thread touches what). Every member
// below mu_ is guarded by it; the callbacks given to the transport capture a shared_ptr.
class Run : public std::enable_shared_from_this<Run> {
 public:
  Run(Transport& t, const ModelLayout& layout, uint8_t* buffer, const std::vector<bool>& held, const PlanFragment& f,
      const ExecutorOptions& o, bool writes)
      : t_(t),
        layout_(layout),
        buffer_(buffer),
        f_(f),
        o_(o),
        writes_(writes),
        start_(std::chrono::steady_clock::now()),
        held_(held) {
    report_.started_at = Monotonic(start_);
    held_.resize(layout.slices.size(), false);
    block_bytes_.assign(layout.block_offsets.size(), 0);
    for (const auto& sl : layout.slices) {
      block_bytes_[sl.block] = std::max(block_bytes_[sl.block], sl.offset + sl.length - layout.block_offsets[sl.block]);
    }
    // Where each block is registered: its own region, or its place in the whole buffer's.
    local_.resize(layout.block_offsets.size());
    for (size_t b = 0; b < local_.size(); ++b) {
      if (!o.block_regions.empty()) {
        local_[b] = {o.block_regions[b], 0};
      } else if (o.region != nullptr) {
        local_[b] = {o.region, layout.block_offsets[b]};
      }
    }
    // Sends go in plan order (by tick) across all peers, as the simulator replays them: the
    // node's uplink carries the slices the plan needs first, first.
    std::vector<FragmentStep> sends = f.sends;
    std::stable_sort(sends.begin(), sends.end(), [](const auto& a, const auto& b) { return a.tick < b.tick; });
    order_.assign(sends.begin(), sends.end());
    for (const auto& s : sends) receivers_.insert(s.peer);
    std::set<uint32_t> into;  // blocks this node receives into
    for (const auto& r : f.receives) {
      expected_[r.slice] = {r.peer, 0, false};
      ++expected_from_[r.peer];
      into.insert(layout.slices[r.slice].block);
    }
    unfinished_receivers_ = receivers_;
    if (writes_) {  // the offer: those blocks' regions, nothing else
      std::map<uint32_t, OfferedBlock> offer;
      for (uint32_t b : into) offer[b] = {local_[b].region->remote(), local_[b].base};
      region_text_ = EncodeOffer(offer);
    }
    std::vector<FragmentStep> receives = f.receives;
    std::stable_sort(receives.begin(), receives.end(), [](const auto& a, const auto& b) { return a.tick < b.tick; });
    for (const auto& r : receives) admit_order_.push_back(r.slice);
  }

  // On the caller's thread: takes the transport's messages and failures, and starts.
  void Start() {
    auto self = shared_from_this();
    // Failures first: a message let in by the message handler can start sends at once, and a
    // peer lost after that must not find the run deaf to it.
    t_.SetPeerFailureHandler(
        [self](const std::string& peer, const Status& cause) { self->OnPeerFailure(peer, cause); });
    t_.SetMessageHandler(
        [self](const IncomingMessage& m, AcceptPayload accept) { self->OnMessage(m, std::move(accept)); });
    // A peer lost before the failure handler was set was reported to nobody: it is found here
    // instead (after the handler, so that no loss falls between the two).
    for (const auto& peer : f_.Peers()) {
      if (t_.Connected(peer)) continue;
      std::lock_guard lock(mu_);
      return Fail(Unavailable(Missing("cannot begin: no connection to peer '" + peer + "' from " + f_.node)));
    }
    if (o_.supply) {
      std::weak_ptr<Run> weak = self;
      o_.supply->SetListener([weak] {
        if (auto run = weak.lock()) run->Supplied();
      });
    }
    std::lock_guard lock(mu_);
    if (o_.supply) TakeSupplied();
    for (auto& [peer, n] : expected_from_) {
      if (n == 0) {
        FinishedWith(peer);
      } else {
        Offer(peer);
      }
    }
    Pump();
  }

  // On the caller's thread: waits for the run to succeed, fail, be cancelled or run out of
  // time, then ends it (callbacks from now on find it ended) and lets go of the transport's
  // handlers. Meanwhile it starts the sends that waited for the send budget (o_.pacer), when
  // their time comes, and looks at the cancel flag every 20 ms.
  Result<ExecutorReport> WaitAndEnd() {
    std::unique_lock lock(mu_);
    const auto until =
        std::chrono::steady_clock::now() +
        std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(o_.deadline));
    bool finished = false;
    while (true) {
      if (!error_.ok() || Done()) {
        finished = true;
        break;
      }
      const auto now = std::chrono::steady_clock::now();
      if (o_.cancel != nullptr && o_.cancel->load()) {
        Fail(Cancelled(Missing("cancelled")));
        break;
      }
      if (now >= until) break;
      if (pace_due_ && now >= *pace_due_) {
        pace_due_.reset();
        Pump();
        continue;
      }
      auto wake = until;
      if (o_.cancel != nullptr) wake = std::min(wake, now + std::chrono::milliseconds(20));
      if (pace_due_) wake = std::min(wake, *pace_due_);
      cv_.wait_until(lock, wake);
    }
    ended_ = true;
    succeeded_ = error_.ok() && finished;
    if (o_.supply) o_.supply->SetListener(nullptr);
    DropWaiting();
    Result<ExecutorReport> result = Report(finished);
    lock.unlock();
    t_.SetMessageHandler(nullptr);
    t_.SetPeerFailureHandler(nullptr);
    return result;
  }

  // On the caller's thread, once the run has ended: the verifier drops what it had still to
  // check and exits (after the one checksum it may be computing).
  void StopVerifier() {
    std::thread verifier;
    {
      std::lock_guard lock(mu_);
      stop_verifier_ = true;
      verifier = std::move(verifier_);  // no slice lands after the end: none starts it again
    }
    verify_cv_.notify_all();
    if (verifier.joinable()) verifier.join();
  }

  // On the caller's thread, once the verifier has stopped: waits until no transport operation
  // of the run is in flight. A run that succeeded only waits for its last messages; one that
  // failed, was cancelled or ran out of time waits a second, then drops the connections of the
  // peers that still owe it (across a cut link an operation waits for the kernel's TCP timeout)
  // and waits for what they owed to fail. False: something is still due after all that (the
  // callbacks keep the run's state, and keep_alive, alive until it comes).
  bool Drain() {
    std::unique_lock lock(mu_);
    const auto quiet = [&] { return outstanding_ == 0; };
    if (cv_.wait_for(lock, std::chrono::seconds(succeeded_ ? 5 : 1), quiet)) return true;
    if (succeeded_) return false;
    std::vector<std::string> silent;
    for (const auto& [peer, n] : outstanding_by_peer_) silent.push_back(peer);
    lock.unlock();
    for (const auto& peer : silent) {
      LOG(WARNING) << "fabric: node " << f_.node << ": '" << peer
                   << "' still owes this ended run; dropping its connection";
      t_.AbortPeer(peer, Unavailable("'" + peer + "' did not answer after the run of '" + f_.node + "' ended"));
    }
    lock.lock();
    return cv_.wait_for(lock, std::chrono::seconds(5), quiet);
  }

  size_t Outstanding() {
    std::lock_guard lock(mu_);
    return outstanding_;
  }

 private:
  // One attempt at receiving a slice: the pieces announced (offset -> length, and whether it
  // has landed), what has landed, and how far from its start it has landed without a gap
  // (what a relay may forward already).
  struct Landing {
    uint64_t length = 0;
    bool landed = false;
  };
  struct Expected {
    std::string peer;
    int retries = 0;
    bool verified = false;
    std::map<uint64_t, Landing> pieces;
    uint64_t landed = 0;
    uint64_t prefix = 0;
    bool admitted = false;   // let in (its first piece taken) in this attempt
    bool in_window = false;  // counted in landing_ until it has landed
    double started = 0;      // when its first piece was announced
  };
  struct Waiting {  // a piece message whose payload has not been let in yet
    std::string peer;
    AcceptPayload accept;
  };
  // A slice on its way to one receiver, piece by piece: the next offset to post, and the pieces
  // handed to the transport and not yet done.
  struct Stream {
    std::string peer;
    uint32_t slice = 0;
    bool write = false;
    uint64_t next = 0;
    size_t posted = 0;
    bool marked = false;  // its first piece has been posted (the timeline's kPosted)
  };
  struct Unflushed {  // a piece written to a peer, waiting for a flush
    uint64_t stream;
    Piece piece;
  };
  struct Flushing {
    bool busy = false;                 // a flush is in flight
    std::vector<Unflushed> unflushed;  // pieces written since it started
  };
  struct Busy {  // pieces sent to one receiver
    int in_flight = 0;
    double since = 0;    // when in_flight last left 0
    double seconds = 0;  // time with a piece in flight, up to `since`
    uint64_t bytes = 0;
  };
  struct Arrivals {  // piece messages from one sender
    double last = -1;
    uint64_t bytes = 0;
    std::vector<double> rates;  // bytes / time since the one before, per arrival after the first
  };
  struct ToVerify {
    uint32_t slice;
    std::string peer;
    double started;
  };
  // Where a block lies in registered memory: at `base` in `region`.
  struct Local {
    const MemoryRegion* region = nullptr;
    uint64_t base = 0;
  };
  // What a receiver offered: writes into its blocks' regions, or messages.
  struct Offered {
    bool writes = false;
    std::map<uint32_t, OfferedBlock> blocks;
  };

  double Now() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }
  static double Monotonic(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(t.time_since_epoch()).count();
  }
  // Records a stage of `slice`'s timeline (with ExecutorOptions::timeline).
  void Mark(uint32_t slice, const std::string& peer, SliceStage stage) {
    if (o_.timeline) report_.timeline.push_back({slice, peer, stage, Monotonic(std::chrono::steady_clock::now())});
  }

  bool Done() const { return verified_ == expected_.size() && unfinished_receivers_.empty() && streams_.empty(); }

  Result<ExecutorReport> Report(bool finished) {
    if (!error_.ok()) return error_;
    if (!finished) return DeadlineExceeded(Missing("after " + std::to_string(o_.deadline) + " s"));
    report_.seconds = Now();
    for (const auto& [peer, b] : busy_) {
      report_.sent_to.push_back({peer, b.bytes, b.seconds + (b.in_flight > 0 ? report_.seconds - b.since : 0)});
    }
    for (auto& [peer, a] : arrivals_) {
      if (a.rates.size() < 4) continue;  // too few to say
      auto q = a.rates.begin() + static_cast<std::ptrdiff_t>(a.rates.size() * 3 / 4);
      std::nth_element(a.rates.begin(), q, a.rates.end());
      report_.received_from.push_back({peer, a.bytes, static_cast<double>(a.bytes) / *q});
    }
    return report_;
  }

  std::string Missing(const std::string& when) const {
    std::map<std::string, std::vector<uint32_t>> by_peer;
    for (const auto& [slice, e] : expected_) {
      if (!e.verified) by_peer[e.peer].push_back(slice);
    }
    std::string m = "node '" + f_.node + "' " + when + ": ";
    if (by_peer.empty() && unfinished_receivers_.empty()) return m + "sends still in flight";
    for (const auto& [peer, slices] : by_peer) {
      m += std::to_string(slices.size()) + " slice(s) still expected from '" + peer + "' (first " +
           std::to_string(slices.front()) + "); ";
    }
    for (const auto& r : unfinished_receivers_) m += "'" + r + "' has not confirmed its slices; ";
    size_t unsupplied = 0;
    for (const auto& step : order_) unsupplied += held_[step.slice] ? 0 : 1;
    if (unsupplied > 0) m += std::to_string(unsupplied) + " send(s) waiting for slices not yet held; ";
    return m;
  }

  void Fail(Status s) {
    if (error_.ok()) error_ = std::move(s);
    cv_.notify_all();
  }

  // A transport operation for `peer` is over: it no longer holds the run up. Returns whether
  // the run is still live (the caller may then act on the outcome).
  bool Completed(const std::string& peer) {
    Drop(peer);
    cv_.notify_all();
    return !ended_;
  }

  // The bytes of one piece of `s` (the last may be shorter).
  uint64_t PieceBytes(const SliceInfo& s) const {
    return (s.length + o_.pieces - 1) / o_.pieces;
  }

  // How much of `slice` this node can send from: all of it once held, else what has landed of
  // it from its start without a gap (a relay forwards a slice while it is still arriving).
  uint64_t Available(uint32_t slice) const {
    if (held_[slice]) return layout_.slices[slice].length;
    const auto it = expected_.find(slice);
    return it == expected_.end() ? 0 : it->second.prefix;
  }

  // Keeps the sends under way fed, then starts new ones in plan order, within the node's
  // window: among the next `lookahead` sends, those of which something is here to send (and
  // whose receiver has said how it takes slices). The lookahead keeps the link busy when a
  // slice arrives later than the plan expected. With a send budget (o_.pacer), a piece it has
  // no room for yet waits for WaitAndEnd to pump again when there is.
  void Pump() {
    for (auto& [id, stream] : streams_) {
      if (!Feed(id, stream)) return;
    }
    for (size_t i = 0; i < order_.size() && i < o_.lookahead && streams_.size() < o_.window && error_.ok();) {
      const FragmentStep next = order_[i];
      if (Available(next.slice) == 0 || !offers_.count(next.peer)) {
        ++i;
        continue;
      }
      order_.erase(order_.begin() + static_cast<std::ptrdiff_t>(i));
      const uint64_t id = StartStream(next.peer, next.slice);
      if (!Feed(id, streams_.at(id))) return;
    }
  }

  // A send of `slice` to `peer` begins (in plan order, or asked for again).
  uint64_t StartStream(const std::string& peer, uint32_t slice) {
    const SliceInfo& s = layout_.slices[slice];
    const Offered& offer = offers_.at(peer);
    const bool write = writes_ && offer.writes;
    if (write && (!offer.blocks.count(s.block) || local_[s.block].region == nullptr)) {
      Fail(InvalidArgument("'" + peer + "' offered no region for block " + std::to_string(s.block) + " of '" +
                           layout_.model + "', which slice " + std::to_string(slice) +
                           " it is to receive from node '" + f_.node + "' belongs to"));
    }
    const uint64_t id = ++streams_started_;
    streams_[id] = {peer, slice, write};
    return id;
  }

  // Posts what it can of a send: whole pieces of what is here, at most pieces_in_flight at
  // once. False: the send budget has no room (nothing more is to be posted for now).
  bool Feed(uint64_t id, Stream& st) {
    if (!error_.ok()) return false;
    const SliceInfo& s = layout_.slices[st.slice];
    const uint64_t available = Available(st.slice);
    while (st.posted < o_.pieces_in_flight && st.next < s.length) {
      const Piece piece{st.slice, st.next, std::min(PieceBytes(s), s.length - st.next)};
      if (piece.offset + piece.length > available) break;
      if (o_.pacer) {
        if (const double wait = o_.pacer->Take(piece.length); wait > 0) {
          const auto due = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                                  std::chrono::duration<double>(wait));
          if (!pace_due_ || due < *pace_due_) pace_due_ = due;
          cv_.notify_all();
          return false;
        }
      }
      st.next += piece.length;
      PostPiece(id, st, piece);
    }
    return true;
  }

  void PostPiece(uint64_t id, Stream& st, const Piece& piece) {
    const SliceInfo& s = layout_.slices[piece.slice];
    const std::string& peer = st.peer;
    VLOG(2) << f_.node << ": " << (st.write ? "write" : "send") << " slice " << piece.slice << " bytes " << piece.offset
            << "+" << piece.length << " to " << peer;
    if (!st.marked) {
      st.marked = true;
      if (report_.first_send < 0) report_.first_send = Now();
      Mark(piece.slice, peer, SliceStage::kPosted);
    }
    ++st.posted;
    // The link to the peer is busy while a piece is in flight to it (not while a relayed
    // slice waits for its next piece to land here).
    Busy& b = busy_[peer];
    if (b.in_flight++ == 0) b.since = Now();
    Hold(peer);
    auto self = shared_from_this();
    if (!st.write) {
      t_.Send(peer, kSliceMessage, EncodePieceHeader(piece, false), {buffer_ + s.offset + piece.offset, piece.length},
              [self, id, peer, piece](Status done) { self->PieceSent(id, peer, piece, false, done); });
      return;
    }
    // Write; a flush (every earlier write to the peer has landed) then says so, for every
    // piece written before it. One flush at a time per peer: a flush waits for all writes
    // in flight, so one per piece would only make the notifications come in bursts.
    // Each node has the block somewhere of its own: the slice is at the same place within it.
    const auto& remote = offers_.at(peer).blocks.at(s.block);
    const uint64_t within = s.offset - layout_.block_offsets[s.block] + piece.offset;
    const bool last = piece.offset + piece.length == s.length;
    Hold(peer);
    t_.Write(peer, *local_[s.block].region, local_[s.block].base + within, remote.region, remote.base + within,
             piece.length, [self, peer, piece, last](Status done) {
               std::lock_guard lock(self->mu_);
               if (last) self->Mark(piece.slice, peer, SliceStage::kSent);
               if (self->Completed(peer) && !done.ok()) {
                 self->Fail(done.WithContext(self->What("writing", piece.slice, peer)));
               }
             });
    Flushing& f = flushing_[peer];
    f.unflushed.push_back({id, piece});
    if (!f.busy) StartFlush(peer);
  }

  void StartFlush(const std::string& peer) {
    Flushing& f = flushing_[peer];
    f.busy = true;
    t_.Flush(peer, [self = shared_from_this(), peer, batch = std::exchange(f.unflushed, {})](Status st) {
      std::lock_guard lock(self->mu_);
      self->Flushed(peer, batch, st);
    });
  }

  // Every piece of `batch` was written to `peer` and flushed (or the flush failed): each
  // still holds the run up until the peer is told it landed. Pieces written since wait for
  // the next flush; when there is none (the run has ended, or the link failed), they are
  // given up here, or they would hold the run up forever.
  void Flushed(const std::string& peer, const std::vector<Unflushed>& batch, const Status& st) {
    Flushing& f = flushing_[peer];
    f.busy = false;
    cv_.notify_all();
    const bool go_on = !ended_ && st.ok();
    std::vector<Unflushed> given_up;
    if (!go_on) given_up = std::exchange(f.unflushed, {});
    for (const Unflushed& u : batch) {
      if (!go_on) {
        given_up.push_back(u);
        continue;
      }
      if (u.piece.offset + u.piece.length == layout_.slices[u.piece.slice].length) {
        Mark(u.piece.slice, peer, SliceStage::kFlushed);
      }
      t_.Send(peer, kLandedMessage, EncodePieceHeader(u.piece, true), {},
              [self = shared_from_this(), peer, u](Status done) { self->PieceSent(u.stream, peer, u.piece, true, done); });
    }
    for (const Unflushed& u : given_up) {
      Drop(peer);
      if (!ended_) Fail(st.WithContext(What("flushing", u.piece.slice, peer)));
    }
    if (go_on && !f.unflushed.empty()) StartFlush(peer);
  }

  std::string What(const char* verb, uint32_t slice, const std::string& peer) const {
    return std::string(verb) + " slice " + std::to_string(slice) + " of '" + layout_.model + "' to '" + peer + "'";
  }

  // A piece has gone to `peer` (for a write: landed there, and the peer told). Once every
  // piece of its slice has, the send is over and leaves the window.
  void PieceSent(uint64_t id, const std::string& peer, const Piece& piece, bool written, const Status& st) {
    std::lock_guard lock(mu_);
    VLOG(2) << f_.node << ": sent slice " << piece.slice << " bytes " << piece.offset << "+" << piece.length << " to "
            << peer << ": " << st.ToString();
    if (!Completed(peer)) return;
    if (!st.ok()) return Fail(st.WithContext(What("sending", piece.slice, peer)));
    const auto it = streams_.find(id);
    if (it == streams_.end()) return;
    Stream& stream = it->second;
    --stream.posted;
    Busy& b = busy_[peer];
    b.bytes += piece.length;
    if (--b.in_flight == 0) b.seconds += Now() - b.since;
    const SliceInfo& s = layout_.slices[piece.slice];
    if (stream.next == s.length && stream.posted == 0) {
      if (!written) Mark(piece.slice, peer, SliceStage::kSent);
      Mark(piece.slice, peer, SliceStage::kConfirmed);
      report_.bytes_sent += s.length;
      ++report_.slices_sent;
      if (written) ++report_.slices_written;
      streams_.erase(it);
    }
    Pump();
  }

  // Tells `sender` how this node takes its slices.
  void Offer(const std::string& sender) {
    Hold(sender);
    std::span<const uint8_t> payload;
    if (writes_) payload = {reinterpret_cast<const uint8_t*>(region_text_.data()), region_text_.size()};
    // The payload is the run's own (region_text_), which the callback keeps alive.
    t_.Send(sender, kOfferMessage, EncodeU32(writes_ ? 1 : 0), payload, [self = shared_from_this(), sender](Status st) {
      std::lock_guard lock(self->mu_);
      if (self->Completed(sender) && !st.ok()) {
        self->Fail(st.WithContext("telling '" + sender + "' how to send its slices"));
      }
    });
  }

  // A receiver's offer (OnMessage holds the lock).
  void OnOffer(const IncomingMessage& m, uint32_t writes, AcceptPayload accept) {
    if (!receivers_.count(m.peer) || offers_.count(m.peer)) {
      accept(nullptr, [](Status) {});
      return Fail(InvalidArgument("'" + m.peer + "' offered to take slices from node '" + f_.node +
                                  "', which has none for it in its plan fragment (or it offered twice)"));
    }
    if (writes == 0) {
      if (m.payload_size > 0) accept(nullptr, [](Status) {});
      offers_[m.peer] = {};
      return Pump();
    }
    if (m.payload_size == 0 || m.payload_size > kMaxOffer) {
      if (m.payload_size > 0) accept(nullptr, [](Status) {});
      return Fail(InvalidArgument("'" + m.peer + "' sent a remote region of " + std::to_string(m.payload_size) +
                                  " bytes (at most " + std::to_string(kMaxOffer) + ")"));
    }
    auto text = std::make_shared<std::string>(m.payload_size, '\0');
    Hold(m.peer);
    accept(reinterpret_cast<uint8_t*>(text->data()), [self = shared_from_this(), text, peer = m.peer](Status st) {
      std::lock_guard lock(self->mu_);
      if (!self->Completed(peer)) return;
      if (!st.ok()) return self->Fail(st.WithContext("receiving the remote regions of '" + peer + "'"));
      auto offered = ParseOffer(*text, self->block_bytes_, self->layout_.model);
      if (!offered.ok()) return self->Fail(offered.status().WithContext("remote regions offered by '" + peer + "'"));
      self->offers_[peer] = {true, std::move(*offered)};
      self->Pump();
    });
  }

  void Control(const std::string& peer, uint16_t type, uint32_t value) {
    Hold(peer);
    t_.Send(peer, type, EncodeU32(value), {}, [self = shared_from_this(), peer](Status st) {
      std::lock_guard lock(self->mu_);
      if (self->Completed(peer) && !st.ok()) self->Fail(st.WithContext("message to '" + peer + "'"));
    });
  }

  void FinishedWith(const std::string& sender) { Control(sender, kFinishedMessage, expected_from_[sender]); }

  // On the transport's thread.
  void OnMessage(const IncomingMessage& m, AcceptPayload accept) {
    std::lock_guard lock(mu_);
    VLOG(2) << f_.node << ": message type " << m.type << " from " << m.peer << " (" << m.payload_size << " bytes)";
    if (ended_) {  // the tail of a run that is over: its payload is nobody's
      if (m.payload_size > 0) accept(nullptr, [](Status) {});
      return;
    }
    const bool piece = m.type == kSliceMessage || m.type == kLandedMessage;
    uint32_t value = 0;
    Piece p;
    if (piece ? !DecodePieceHeader(m.header, m.type == kLandedMessage, &p) : !DecodeU32(m.header, &value)) {
      if (m.payload_size > 0) accept(nullptr, [](Status) {});
      return Fail(InvalidArgument("malformed message (type " + std::to_string(m.type) + ") from '" + m.peer + "'"));
    }
    if (piece) return OnPiece(m, p, std::move(accept));
    if (m.type == kResendMessage) {
      if (m.payload_size > 0) accept(nullptr, [](Status) {});
      if (!offers_.count(m.peer)) {
        return Fail(InvalidArgument("'" + m.peer + "' asked node '" + f_.node + "' again for slice " +
                                    std::to_string(value) + ", but has not said how it takes slices (no offer)"));
      }
      if (value < held_.size() && held_[value]) {
        StartStream(m.peer, value);
        return Pump();
      }
      const auto e = expected_.find(value);
      if (e != expected_.end() && !e->second.verified) {  // it is still on its way here: sent once it is
        deferred_resends_[value].push_back(m.peer);
        return;
      }
      return Fail(InvalidArgument("'" + m.peer + "' asked node '" + f_.node + "' again for slice " +
                                  std::to_string(value) + ", which it does not hold"));
    }
    if (m.type == kFinishedMessage) {
      if (m.payload_size > 0) accept(nullptr, [](Status) {});
      unfinished_receivers_.erase(m.peer);
      cv_.notify_all();
      return;
    }
    if (m.type == kOfferMessage) return OnOffer(m, value, std::move(accept));
    if (m.payload_size > 0) accept(nullptr, [](Status) {});
    return Fail(InvalidArgument("unknown message type " + std::to_string(m.type) + " from '" + m.peer + "'"));
  }

  // A piece of a slice: a message carrying it, or a notice that the sender wrote it here. It
  // must be of a slice this node expects from that peer and does not hold yet, lie within the
  // slice, and not overlap a piece already announced in this attempt.
  void OnPiece(const IncomingMessage& m, Piece p, AcceptPayload accept) {
    const bool written = m.type == kLandedMessage;
    auto refuse = [&](const std::string& why) {
      if (m.payload_size > 0) accept(nullptr, [](Status) {});
      Fail(InvalidArgument(why));
    };
    auto it = expected_.find(p.slice);
    if (p.slice >= layout_.slices.size() || it == expected_.end() || it->second.peer != m.peer ||
        it->second.verified) {
      return refuse("unexpected slice " + std::to_string(p.slice) + " of '" + layout_.model + "' from '" + m.peer +
                    "' at node '" + f_.node + "' (not in its plan fragment)");
    }
    if (written && (!writes_ || m.payload_size > 0)) {
      return refuse("'" + m.peer + "' says it wrote slice " + std::to_string(p.slice) + " into node '" + f_.node +
                    "', which offered no region");
    }
    if (!written) p.length = m.payload_size;
    const SliceInfo& s = layout_.slices[p.slice];
    const std::string bytes = "bytes " + std::to_string(p.offset) + "-" + std::to_string(p.offset + p.length);
    if (p.length == 0 || p.offset >= s.length || p.length > s.length - p.offset) {
      return refuse("'" + m.peer + "' sent " + bytes + " of slice " + std::to_string(p.slice) + ", which the layout says is " +
                    std::to_string(s.length) + " bytes");
    }
    Expected& e = it->second;
    const auto after = e.pieces.lower_bound(p.offset);
    const bool overlaps = (after != e.pieces.end() && after->first < p.offset + p.length) ||
                          (after != e.pieces.begin() && std::prev(after)->first + std::prev(after)->second.length > p.offset);
    if (overlaps) return refuse("'" + m.peer + "' sent " + bytes + " of slice " + std::to_string(p.slice) + " twice");
    if (e.pieces.empty()) {
      e.started = Now();
      Mark(p.slice, m.peer, SliceStage::kAnnounced);
    }
    e.pieces[p.offset] = {p.length, false};
    if (written) return PieceLanded(p, m.peer);  // written into our buffer and flushed by the sender
    Arrivals& a = arrivals_[m.peer];
    const double now = Now();
    if (a.last >= 0 && now > a.last) a.rates.push_back(static_cast<double>(p.length) / (now - a.last));
    a.last = now;
    a.bytes += p.length;
    waiting_.emplace(std::make_pair(p.slice, p.offset), Waiting{m.peer, std::move(accept)});
    Admit();
  }

  // Lets the waiting pieces land. A slice is let in in plan order among the next `lookahead`,
  // at most recv_window at a time, and its later pieces as they come: a node takes its slices
  // about in the order the plan has them arrive, so that early senders do not crowd its link
  // and delay the slices it must forward first. (Only messages wait: their payload moves when
  // accepted. A slice sent again after a bad checksum lands at once.)
  void Admit() {
    auto take = [&](std::map<std::pair<uint32_t, uint64_t>, Waiting>::iterator at) {
      const auto [slice, offset] = at->first;
      auto w = waiting_.extract(at);
      Expected& e = expected_[slice];
      if (!e.admitted) {
        e.admitted = true;
        Mark(slice, w.mapped().peer, SliceStage::kAdmitted);
      }
      Hold(w.mapped().peer);
      w.mapped().accept(buffer_ + layout_.slices[slice].offset + offset,
                        [self = shared_from_this(), slice, offset, peer = w.mapped().peer](Status st) {
                          self->Landed(slice, offset, peer, st);
                        });
    };
    auto take_all = [&](uint32_t slice) {
      for (auto at = waiting_.lower_bound({slice, 0}); at != waiting_.end() && at->first.first == slice;) take(at++);
    };
    for (auto at = waiting_.begin(); at != waiting_.end();) {
      const uint32_t slice = at->first.first;
      while (at != waiting_.end() && at->first.first == slice) ++at;  // past its pieces, which take_all erases
      if (admitted_.count(slice)) take_all(slice);
    }
    for (size_t i = 0; i < admit_order_.size() && i < o_.lookahead && landing_ < o_.recv_window;) {
      const uint32_t slice = admit_order_[i];
      const auto first = waiting_.lower_bound({slice, 0});
      const bool arrived = first != waiting_.end() && first->first.first == slice;
      Expected& e = expected_[slice];
      if (e.verified || arrived) {
        admit_order_.erase(admit_order_.begin() + static_cast<std::ptrdiff_t>(i));
        if (e.verified) continue;  // it was written into the buffer
        admitted_.insert(slice);
        e.in_window = true;
        ++landing_;
        take_all(slice);
      } else {
        ++i;
      }
    }
  }

  // Discards what still waits (the run is over).
  void DropWaiting() {
    for (auto& [key, w] : waiting_) w.accept(nullptr, [](Status) {});
    waiting_.clear();
  }

  // On the transport's thread: a piece's payload is in the buffer (or failed to get there).
  void Landed(uint32_t slice, uint64_t offset, const std::string& peer, const Status& st) {
    std::lock_guard lock(mu_);
    if (!Completed(peer)) return;
    if (!st.ok()) return Fail(st.WithContext("receiving slice " + std::to_string(slice) + " from '" + peer + "'"));
    PieceLanded({slice, offset, 0}, peer);
    if (error_.ok()) Admit();
  }

  // A piece is in the buffer. What a relay forwards of the slice may go on at once; once the
  // whole slice is here, the verifier thread checks it (off the transport's thread, which goes on
  // moving bytes meanwhile).
  void PieceLanded(const Piece& p, const std::string& peer) {
    Expected& e = expected_[p.slice];
    Landing& piece = e.pieces.at(p.offset);
    piece.landed = true;
    e.landed += piece.length;
    for (auto at = e.pieces.find(e.prefix); at != e.pieces.end() && at->second.landed; at = e.pieces.find(e.prefix)) {
      e.prefix += at->second.length;
    }
    cv_.notify_all();
    if (e.landed == layout_.slices[p.slice].length) {
      VLOG(1) << f_.node << ": slice " << p.slice << " from " << peer << " landed";
      if (e.in_window) {
        e.in_window = false;
        --landing_;
      }
      Mark(p.slice, peer, SliceStage::kLanded);
      Hold(kVerifying);
      to_verify_.push_back({p.slice, peer, e.started});
      if (!verifier_.joinable()) verifier_ = std::thread([this] { Verifier(); });
      verify_cv_.notify_one();
    }
    Pump();
  }

  // The verifier thread: the caller's StopVerifier joins it before the run's last reference
  // can go, so it may use `this`.
  void Verifier() {
    if (!o_.verifier_thread.is_default()) {
      if (Status st = o_.verifier_thread.Apply(); !st.ok()) {
        LOG(WARNING) << f_.node << ": placing the verifier thread: " << st.ToString();
      }
    }
    std::unique_lock lock(mu_);
    while (true) {
      verify_cv_.wait(lock, [&] { return stop_verifier_ || !to_verify_.empty(); });
      if (to_verify_.empty()) return;
      const ToVerify v = to_verify_.front();
      to_verify_.pop_front();
      bool good = false;
      if (!ended_) {
        const SliceInfo& s = layout_.slices[v.slice];
        lock.unlock();
        good = Xxh3(buffer_ + s.offset, s.length) == s.xxh3;
        lock.lock();
      }
      Drop(kVerifying);
      cv_.notify_all();
      if (!ended_ && error_.ok()) Verified(v.slice, v.peer, v.started, good);
    }
  }

  void Verified(uint32_t slice, const std::string& peer, double started, bool good) {
    const SliceInfo& s = layout_.slices[slice];
    Expected& e = expected_[slice];
    if (!good) {
      ++report_.corrupt;
      LOG(WARNING) << "fabric: node " << f_.node << ": slice " << slice << " of " << layout_.model << " from " << peer
                   << " failed its checksum; asking again (" << e.retries + 1 << "/" << o_.max_retries << ")";
      if (++e.retries > o_.max_retries) {
        return Fail(Corruption("slice " + std::to_string(slice) + " of '" + layout_.model + "' from '" + peer +
                               "' failed its checksum " + std::to_string(e.retries) + " times"));
      }
      // The next attempt starts from nothing; what a relay forwarded of this one fails its own
      // receivers' checksums, and they ask again once this node holds the slice.
      e.pieces.clear();
      e.landed = e.prefix = 0;
      e.admitted = false;
      Control(peer, kResendMessage, slice);
      return;
    }
    // The caller keeps it (the agent's store records it) before anyone hears it was received:
    // a slice it refuses is not counted, not confirmed to its sender, and fails the run.
    const double now = Now();
    if (o_.on_slice) {
      Status kept = o_.on_slice({layout_.model, slice, peer, s.length, started, now});
      if (!kept.ok()) {
        return Fail(kept.WithContext("node '" + f_.node + "' could not keep slice " + std::to_string(slice) +
                                     " (block " + std::to_string(s.block) + ") of model '" + layout_.model +
                                     "' from '" + peer + "'"));
      }
    }
    Mark(slice, peer, SliceStage::kVerified);
    e.verified = true;
    held_[slice] = true;
    ++verified_;
    report_.last_receive = now;
    report_.bytes_received += s.length;
    ++report_.slices_received;
    if (--expected_from_[peer] == 0) FinishedWith(peer);
    if (auto again = deferred_resends_.extract(slice)) {
      for (const auto& to : again.mapped()) StartStream(to, slice);
    }
    Pump();
    Admit();
  }

  // Slices the supply added (on whichever thread added them).
  void Supplied() {
    std::lock_guard lock(mu_);
    if (ended_) return;
    TakeSupplied();
    Pump();
  }

  void TakeSupplied() {
    Status failed;
    for (uint32_t slice : o_.supply->Take(&failed)) {
      if (slice < held_.size() && !expected_.count(slice)) held_[slice] = true;  // not one it receives
    }
    if (!failed.ok()) Fail(failed.WithContext("node '" + f_.node + "' supplying the slices it sends"));
  }

  // On the transport's thread.
  void OnPeerFailure(const std::string& peer, const Status& cause) {
    std::lock_guard lock(mu_);
    if (ended_) return;
    const auto from = expected_from_.find(peer);
    const bool owes = from != expected_from_.end() && from->second > 0;
    const bool owed = unfinished_receivers_.count(peer) > 0;
    if (owes || owed) Fail(Unavailable(Missing("lost '" + peer + "' (" + cause.message() + ")")));
  }

  void Hold(const std::string& peer) {
    ++outstanding_;
    ++outstanding_by_peer_[peer];
  }
  void Drop(const std::string& peer) {
    --outstanding_;
    auto it = outstanding_by_peer_.find(peer);
    if (it != outstanding_by_peer_.end() && --it->second == 0) outstanding_by_peer_.erase(it);
  }

  // Fixed at construction; the run's own copies, so that nothing of the caller's is needed
  // once it has returned (but for what keep_alive holds).
  Transport& t_;  // used only while the run is live, and by Drain
  const ModelLayout layout_;
  uint8_t* const buffer_;  // the caller's; touched only while the run is live
  const PlanFragment f_;
  const ExecutorOptions o_;  // keeps o_.keep_alive with the run; o_.cancel is read only by WaitAndEnd
  const bool writes_;        // this node takes slices by write and sends them by write where offered
  const std::chrono::steady_clock::time_point start_;
  std::string region_text_;  // this node's block regions, as offered
  std::vector<uint64_t> block_bytes_;
  std::vector<Local> local_;

  std::mutex mu_;  // guards everything below
  std::condition_variable cv_;
  bool ended_ = false;      // set once, by WaitAndEnd: callbacks from then on only record that they came
  bool succeeded_ = false;  // how it ended
  Status error_;
  std::vector<bool> held_;
  std::map<std::string, Offered> offers_;
  std::map<std::string, Flushing> flushing_;
  std::map<std::string, Busy> busy_;
  std::map<std::string, Arrivals> arrivals_;
  std::deque<ToVerify> to_verify_;
  std::condition_variable verify_cv_;
  bool stop_verifier_ = false;
  std::thread verifier_;              // started with the first slice to check
  std::deque<FragmentStep> order_;    // sends not yet started, in plan order
  std::optional<std::chrono::steady_clock::time_point> pace_due_;  // when the send budget has room again
  std::deque<uint32_t> admit_order_;  // receives not yet let in, in plan order
  std::set<uint32_t> admitted_;       // receives let in once (the rest of their pieces, and a resend, land at once)
  std::map<std::pair<uint32_t, uint64_t>, Waiting> waiting_;  // by slice and offset
  size_t landing_ = 0;  // receives let in and not yet landed
  std::set<std::string> receivers_;
  std::map<uint64_t, Stream> streams_;  // sends under way, by when they started
  uint64_t streams_started_ = 0;
  std::map<uint32_t, std::vector<std::string>> deferred_resends_;  // asked for again before this node held them
  size_t outstanding_ = 0;                             // transport callbacks not yet run, and slices not yet verified
  std::map<std::string, size_t> outstanding_by_peer_;  // the same by peer (kVerifying: the verifier's)
  static constexpr const char* kVerifying = "";
  std::map<uint32_t, Expected> expected_;
  std::map<std::string, uint32_t> expected_from_;
  size_t verified_ = 0;
  std::set<std::string> unfinished_receivers_;
  ExecutorReport report_;
};

}  // namespace

Result<ExecutorReport> RunFragment(Transport& transport, const ModelLayout& layout, uint8_t* buffer,
                                   const std::vector<bool>& held, const PlanFragment& fragment,
                                   const ExecutorOptions& options, bool writes) {
  auto run = std::make_shared<Run>(transport, layout, buffer, held, fragment, options, writes);
  run->Start();
  auto result = run->WaitAndEnd();
  run->StopVerifier();
  if (!run->Drain()) {
    // The callbacks still due keep the run's state, and keep_alive, until they come.
    LOG(WARNING) << "fabric: node " << fragment.node << ": " << run->Outstanding()
                 << " transport operation(s) still in flight after the run; its buffers stay with them";
  }
  return result;
}

}  // namespace modelcast::fabric
