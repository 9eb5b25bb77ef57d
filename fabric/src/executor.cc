#include "modelcast/fabric/executor.h"

#include <glog/logging.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include "modelcast/common/checksum.h"

namespace modelcast::fabric {

ModelLayout ModelLayout::FromManifest(const model::Manifest& m) {
  std::vector<uint64_t> offsets;
  uint64_t offset = 0;
  for (const auto& b : m.blocks) {
    offsets.push_back(offset);
    offset += b.file_bytes;
  }
  return FromManifest(m, std::move(offsets), offset);
}

ModelLayout ModelLayout::FromManifest(const model::Manifest& m, std::vector<uint64_t> block_offsets,
                                      uint64_t buffer_bytes) {
  ModelLayout l;
  l.model = m.name;
  l.block_offsets = std::move(block_offsets);
  l.buffer_bytes = buffer_bytes;
  for (const auto& s : m.slices) l.slices.push_back({l.block_offsets[s.block] + s.offset, s.length, s.xxh3, s.block});
  return l;
}

Result<PlanFragment> PlanFragment::FromPlan(const coord::Plan& plan, const std::string& node) {
  auto it = std::find(plan.node_names.begin(), plan.node_names.end(), node);
  if (it == plan.node_names.end()) return NotFound("the plan has no node '" + node + "'");
  const int32_t me = static_cast<int32_t>(it - plan.node_names.begin());
  PlanFragment f;
  f.node = node;
  for (const auto& t : plan.transfers) {
    if (t.local()) continue;
    if (t.src == me) f.sends.push_back({t.tick, plan.node_names.at(t.dst), t.slice});
    if (t.dst == me) f.receives.push_back({t.tick, plan.node_names.at(t.src), t.slice});
  }
  return f;
}

std::vector<std::string> PlanFragment::Peers() const {
  std::set<std::string> p;
  for (const auto& s : sends) p.insert(s.peer);
  for (const auto& r : receives) p.insert(r.peer);
  return {p.begin(), p.end()};
}

Status PlanFragment::Validate(const ModelLayout& layout) const {
  std::set<uint32_t> received;
  for (const auto* list : {&sends, &receives}) {
    for (const auto& s : *list) {
      if (s.slice >= layout.slices.size()) {
        return InvalidArgument("plan fragment of '" + node + "' names slice " + std::to_string(s.slice) + " (peer '" +
                               s.peer + "'), but model '" + layout.model + "' has " +
                               std::to_string(layout.slices.size()));
      }
      if (s.peer.empty() || s.peer == node) return InvalidArgument("plan fragment of '" + node + "' names a bad peer");
    }
  }
  for (const auto& r : receives) {
    if (!received.insert(r.slice).second) {
      return InvalidArgument("plan fragment of '" + node + "' receives slice " + std::to_string(r.slice) + " twice");
    }
  }
  return Status::Ok();
}

Result<SliceMethod> ParseSliceMethod(const std::string& name) {
  if (name == "auto") return SliceMethod::kAuto;
  if (name == "messages") return SliceMethod::kMessages;
  if (name == "writes") return SliceMethod::kWrites;
  return InvalidArgument("slice method '" + name + "' is not one of auto, messages, writes");
}

const char* SliceMethodName(SliceMethod m) {
  switch (m) {
    case SliceMethod::kAuto:
      return "auto";
    case SliceMethod::kMessages:
      return "messages";
    case SliceMethod::kWrites:
      return "writes";
  }
  return "?";
}

namespace {

// The largest remote-region offer accepted (a packed key is a few hundred bytes, one per block).
constexpr uint64_t kMaxOffer = 1 << 20;

std::vector<uint8_t> U32(uint32_t v) {
  return {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v >> 16),
          static_cast<uint8_t>(v >> 24)};
}

bool ReadU32(const std::vector<uint8_t>& h, uint32_t* v) {
  if (h.size() != 4) return false;
  *v = h[0] | (h[1] << 8) | (h[2] << 16) | (static_cast<uint32_t>(h[3]) << 24);
  return true;
}

class Run {
 public:
  Run(Transport& t, const ModelLayout& layout, uint8_t* buffer, const std::vector<bool>& held, const PlanFragment& f,
      const ExecutorOptions& o, bool writes)
      : t_(t),
        layout_(layout),
        buffer_(buffer),
        held_(held),
        f_(f),
        o_(o),
        writes_(writes),
        start_(std::chrono::steady_clock::now()) {
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
      nlohmann::json offer = nlohmann::json::array();
      for (uint32_t b : into) {
        offer.push_back({{"block", b}, {"base", local_[b].base}, {"region", local_[b].region->remote().Serialize()}});
      }
      region_text_ = offer.dump();
    }
    std::vector<FragmentStep> receives = f.receives;
    std::stable_sort(receives.begin(), receives.end(), [](const auto& a, const auto& b) { return a.tick < b.tick; });
    for (const auto& r : receives) admit_order_.push_back(r.slice);
  }

  Result<ExecutorReport> Go() {
    t_.SetMessageHandler([this](const IncomingMessage& m, AcceptPayload accept) { OnMessage(m, std::move(accept)); });
    t_.SetPeerFailureHandler([this](const std::string& peer, const Status& cause) { OnPeerFailure(peer, cause); });
    {
      std::lock_guard lock(mu_);
      for (auto& [peer, n] : expected_from_) {
        if (n == 0) {
          FinishedWith(peer);
        } else {
          Offer(peer);
        }
      }
      Pump();
    }
    std::unique_lock lock(mu_);
    const auto until = std::chrono::steady_clock::now() +
                       std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                           std::chrono::duration<double>(o_.deadline));
    const auto stop = [&] { return !error_.ok() || Done(); };
    bool finished = false;
    if (o_.cancel == nullptr) {
      finished = cv_.wait_until(lock, until, stop);
    } else {
      // Cancellable: look at the flag every 20 ms.
      while (!(finished = cv_.wait_until(lock, std::min(until, std::chrono::steady_clock::now() + std::chrono::milliseconds(20)), stop))) {
        if (o_.cancel->load()) {
          Fail(Cancelled(Missing("cancelled")));
          break;
        }
        if (std::chrono::steady_clock::now() >= until) break;
      }
    }
    // Stop taking callbacks that touch this object.
    t_.SetMessageHandler(nullptr);
    t_.SetPeerFailureHandler(nullptr);
    DropWaiting();
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

  // The callbacks still in flight when Go returns hold no reference to this object after it
  // has been drained; the caller keeps it alive until then.
  bool Drain() {
    std::unique_lock lock(mu_);
    const auto quiet = [&] { return outstanding_ == 0; };
    // A run that succeeded only waits for its last messages; one that failed, was cancelled or
    // ran out of time waits a second, then treats what is still due as waiting on peers gone silent.
    const bool succeeded = error_.ok() && Done();
    if (!cv_.wait_for(lock, std::chrono::seconds(succeeded ? 5 : 1), quiet)) {
      if (succeeded) return false;
      // Across a cut link a send waits for the kernel's TCP timeout: the connections to those
      // peers are dropped, so that what they owe fails now.
      std::vector<std::string> silent;
      for (const auto& [peer, n] : outstanding_by_peer_) {
        if (peer != kVerifying) silent.push_back(peer);
      }
      lock.unlock();
      for (const auto& peer : silent) {
        LOG(WARNING) << "fabric: node " << f_.node << ": '" << peer << "' still owes this ended run; dropping its connection";
        t_.AbortPeer(peer, Unavailable("'" + peer + "' did not answer after the run of '" + f_.node + "' ended"));
      }
      lock.lock();
      if (!cv_.wait_for(lock, std::chrono::seconds(5), quiet)) return false;
    }
    stop_verifier_ = true;
    verify_cv_.notify_all();
    lock.unlock();
    if (verifier_.joinable()) verifier_.join();
    return true;
  }

 private:
  struct Expected {
    std::string peer;
    int retries = 0;
    bool verified = false;
  };
  struct Waiting {  // a slice message whose payload has not been let in yet
    std::string peer;
    AcceptPayload accept;
  };
  struct Flushing {
    bool busy = false;                // a flush is in flight
    std::vector<uint32_t> unflushed;  // slices written since it started
  };
  struct Busy {  // sends to one receiver
    int in_flight = 0;
    double since = 0;    // when in_flight last left 0
    double seconds = 0;  // time with a send in flight, up to `since`
    uint64_t bytes = 0;
  };
  struct Arrivals {  // slice messages from one sender
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
  struct Remote {
    RemoteRegion region;
    uint64_t base = 0;
  };
  // What a receiver offered: writes into its blocks' regions, or messages.
  struct Offered {
    bool writes = false;
    std::map<uint32_t, Remote> blocks;
  };

  double Now() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

  bool Done() const { return verified_ == expected_.size() && unfinished_receivers_.empty() && in_flight_total_ == 0; }

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
    return m;
  }

  void Fail(Status s) {
    if (error_.ok()) error_ = std::move(s);
    cv_.notify_all();
  }

  // Starts sends in plan order, within the node's window: among the next `lookahead` sends,
  // those whose slice is held (and whose receiver has said how it takes slices). The
  // lookahead keeps the link busy when a slice arrives later than the plan expected.
  void Pump() {
    for (size_t i = 0; i < order_.size() && i < o_.lookahead && in_flight_total_ < o_.window;) {
      const FragmentStep next = order_[i];
      if (!held_[next.slice] || !offers_.count(next.peer)) {
        ++i;
        continue;
      }
      order_.erase(order_.begin() + static_cast<std::ptrdiff_t>(i));
      SendSlice(next.peer, next.slice);
    }
  }

  void SendSlice(const std::string& peer, uint32_t slice) {
    const SliceInfo& s = layout_.slices[slice];
    const Offered& offer = offers_.at(peer);
    const bool write = writes_ && offer.writes;
    VLOG(1) << f_.node << ": " << (write ? "write" : "send") << " slice " << slice << " to " << peer;
    const auto remote = write ? offer.blocks.find(s.block) : offer.blocks.end();
    if (write && (remote == offer.blocks.end() || local_[s.block].region == nullptr)) {
      return Fail(InvalidArgument("'" + peer + "' offered no region for block " + std::to_string(s.block) + " of '" +
                                  layout_.model + "', which slice " + std::to_string(slice) +
                                  " it is to receive from node '" + f_.node + "' belongs to"));
    }
    if (report_.first_send < 0) report_.first_send = Now();
    ++in_flight_total_;
    Busy& b = busy_[peer];
    if (b.in_flight++ == 0) b.since = Now();
    Hold(peer);
    if (!write) {
      t_.Send(peer, kSliceMessage, U32(slice), {buffer_ + s.offset, s.length},
              [this, peer, slice](Status st) { Sent(peer, slice, false, st); });
      return;
    }
    // Write; a flush (every earlier write to the peer has landed) then says so, for every
    // slice written before it. One flush at a time per peer: a flush waits for all writes
    // in flight, so one per slice would only make the notifications come in bursts.
    // Each node has the block somewhere of its own: the slice is at the same place within it.
    const uint64_t within = s.offset - layout_.block_offsets[s.block];
    Hold(peer);
    t_.Write(peer, *local_[s.block].region, local_[s.block].base + within, remote->second.region,
             remote->second.base + within, s.length, [this, peer, slice](Status st) {
      std::lock_guard lock(mu_);
      Drop(peer);
      if (!st.ok()) Fail(st.WithContext(What("writing", slice, peer)));
      cv_.notify_all();
    });
    Flushing& f = flushing_[peer];
    f.unflushed.push_back(slice);
    if (!f.busy) StartFlush(peer);
  }

  void StartFlush(const std::string& peer) {
    Flushing& f = flushing_[peer];
    f.busy = true;
    t_.Flush(peer, [this, peer, batch = std::exchange(f.unflushed, {})](Status st) {
      std::lock_guard lock(mu_);
      Flushing& f = flushing_[peer];
      f.busy = false;
      for (uint32_t slice : batch) {
        if (!st.ok()) {
          Drop(peer);
          Fail(st.WithContext(What("flushing", slice, peer)));
          continue;
        }
        t_.Send(peer, kLandedMessage, U32(slice), {}, [this, peer, slice](Status st) { Sent(peer, slice, true, st); });
      }
      cv_.notify_all();
      if (st.ok() && !f.unflushed.empty()) StartFlush(peer);
    });
  }

  std::string What(const char* verb, uint32_t slice, const std::string& peer) const {
    return std::string(verb) + " slice " + std::to_string(slice) + " of '" + layout_.model + "' to '" + peer + "'";
  }

  // A slice has gone to `peer` (for a write: landed there, and the peer told).
  void Sent(const std::string& peer, uint32_t slice, bool written, const Status& st) {
    std::lock_guard lock(mu_);
    VLOG(1) << f_.node << ": sent slice " << slice << " to " << peer << ": " << st.ToString();
    Drop(peer);
    --in_flight_total_;
    Busy& b = busy_[peer];
    if (st.ok()) b.bytes += layout_.slices[slice].length;
    if (--b.in_flight == 0) b.seconds += Now() - b.since;
    if (!st.ok()) {
      Fail(st.WithContext(What("sending", slice, peer)));
    } else {
      report_.bytes_sent += layout_.slices[slice].length;
      ++report_.slices_sent;
      if (written) ++report_.slices_written;
      Pump();
    }
    cv_.notify_all();
  }

  // Tells `sender` how this node takes its slices.
  void Offer(const std::string& sender) {
    Hold(sender);
    std::span<const uint8_t> payload;
    if (writes_) payload = {reinterpret_cast<const uint8_t*>(region_text_.data()), region_text_.size()};
    t_.Send(sender, kOfferMessage, U32(writes_ ? 1 : 0), payload, [this, sender](Status st) {
      std::lock_guard lock(mu_);
      Drop(sender);
      if (!st.ok()) Fail(st.WithContext("telling '" + sender + "' how to send its slices"));
      cv_.notify_all();
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
    accept(reinterpret_cast<uint8_t*>(text->data()), [this, text, peer = m.peer](Status st) {
      std::lock_guard lock(mu_);
      Drop(peer);
      cv_.notify_all();
      if (!st.ok()) return Fail(st.WithContext("receiving the remote regions of '" + peer + "'"));
      auto offered = ParseOffer(*text);
      if (!offered.ok()) return Fail(offered.status().WithContext("remote regions offered by '" + peer + "'"));
      offers_[peer] = {true, std::move(*offered)};
      Pump();
    });
  }

  // A receiver's offer: [{"block": B, "base": OFFSET, "region": REMOTE-REGION}, ...], each
  // region holding its block whole from `base` on.
  Result<std::map<uint32_t, Remote>> ParseOffer(const std::string& text) const {
    auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_array()) return InvalidArgument("not a list of block regions");
    std::map<uint32_t, Remote> blocks;
    for (const auto& e : j) {
      if (!e.is_object() || !e.contains("block") || !e["block"].is_number_unsigned() || !e.contains("base") ||
          !e["base"].is_number_unsigned() || !e.contains("region") || !e["region"].is_string()) {
        return InvalidArgument("an entry is not {block, base, region}: " + e.dump().substr(0, 200));
      }
      const uint64_t b = e["block"].get<uint64_t>(), base = e["base"].get<uint64_t>();
      if (b >= block_bytes_.size()) {
        return InvalidArgument("block " + std::to_string(b) + " is not in model '" + layout_.model + "' (" +
                               std::to_string(block_bytes_.size()) + " blocks)");
      }
      MC_ASSIGN_OR_RETURN(auto region, RemoteRegion::Parse(e["region"].get<std::string>()));
      if (base > region.length || region.length - base < block_bytes_[b]) {
        return InvalidArgument("the region of block " + std::to_string(b) + " (" + std::to_string(region.length) +
                               " bytes from " + std::to_string(base) + ") cannot hold its " +
                               std::to_string(block_bytes_[b]) + " bytes");
      }
      if (!blocks.emplace(static_cast<uint32_t>(b), Remote{std::move(region), base}).second) {
        return InvalidArgument("block " + std::to_string(b) + " offered twice");
      }
    }
    return blocks;
  }

  void Control(const std::string& peer, uint16_t type, uint32_t value) {
    Hold(peer);
    t_.Send(peer, type, U32(value), {}, [this, peer](Status st) {
      std::lock_guard lock(mu_);
      Drop(peer);
      if (!st.ok()) Fail(st.WithContext("message to '" + peer + "'"));
      cv_.notify_all();
    });
  }

  void FinishedWith(const std::string& sender) { Control(sender, kFinishedMessage, expected_from_[sender]); }

  void OnMessage(const IncomingMessage& m, AcceptPayload accept) {
    std::lock_guard lock(mu_);
    VLOG(1) << f_.node << ": message type " << m.type << " from " << m.peer << " (" << m.payload_size << " bytes)";
    uint32_t value = 0;
    if (!ReadU32(m.header, &value)) {
      accept(nullptr, [](Status) {});
      return Fail(InvalidArgument("malformed message (type " + std::to_string(m.type) + ") from '" + m.peer + "'"));
    }
    if (m.type == kResendMessage) {
      if (value >= held_.size() || !held_[value]) {
        return Fail(InvalidArgument("'" + m.peer + "' asked node '" + f_.node + "' again for slice " +
                                    std::to_string(value) + ", which it does not hold"));
      }
      SendSlice(m.peer, value);
      return;
    }
    if (m.type == kFinishedMessage) {
      unfinished_receivers_.erase(m.peer);
      cv_.notify_all();
      return;
    }
    if (m.type == kOfferMessage) return OnOffer(m, value, std::move(accept));
    if (m.type != kSliceMessage && m.type != kLandedMessage) {
      accept(nullptr, [](Status) {});
      return Fail(InvalidArgument("unknown message type " + std::to_string(m.type) + " from '" + m.peer + "'"));
    }
    // A slice: it must be one we expect from this peer, of exactly its length, not yet held.
    auto it = expected_.find(value);
    if (it == expected_.end() || it->second.peer != m.peer || it->second.verified || value >= layout_.slices.size()) {
      if (m.payload_size > 0) accept(nullptr, [](Status) {});
      return Fail(InvalidArgument("unexpected slice " + std::to_string(value) + " of '" + layout_.model + "' from '" +
                                  m.peer + "' at node '" + f_.node + "' (not in its plan fragment)"));
    }
    if (m.type == kLandedMessage) {  // written into our buffer and flushed by the sender
      if (!writes_ || m.payload_size > 0) {
        if (m.payload_size > 0) accept(nullptr, [](Status) {});
        return Fail(InvalidArgument("'" + m.peer + "' says it wrote slice " + std::to_string(value) + " into node '" +
                                    f_.node + "', which offered no region"));
      }
      const auto last = last_landed_.find(m.peer);
      return LandedLocked(value, m.peer, last == last_landed_.end() ? 0 : last->second, Status::Ok());
    }
    const SliceInfo& s = layout_.slices[value];
    if (m.payload_size != s.length) {
      accept(nullptr, [](Status) {});
      return Fail(InvalidArgument("slice " + std::to_string(value) + " from '" + m.peer + "' is " +
                                  std::to_string(m.payload_size) + " bytes, the layout says " +
                                  std::to_string(s.length)));
    }
    if (waiting_.count(value)) {
      accept(nullptr, [](Status) {});
      return Fail(InvalidArgument("'" + m.peer + "' sent slice " + std::to_string(value) + " twice"));
    }
    Arrivals& a = arrivals_[m.peer];
    const double now = Now();
    if (a.last >= 0 && now > a.last) a.rates.push_back(static_cast<double>(s.length) / (now - a.last));
    a.last = now;
    a.bytes += s.length;
    waiting_.emplace(value, Waiting{m.peer, std::move(accept)});
    Admit();
  }

  // Lets the waiting slices land, at most recv_window at a time, in plan order among the next
  // `lookahead`: a node takes its slices about in the order the plan has them arrive, so that
  // early senders do not crowd its link and delay the slices it must forward first. (Only
  // messages wait: their payload moves when accepted. A slice sent again after a bad checksum
  // lands at once.)
  void Admit() {
    auto take = [&](uint32_t slice) {
      auto w = waiting_.extract(slice);
      const double started = Now();
      Hold(w.mapped().peer);
      ++landing_;
      w.mapped().accept(buffer_ + layout_.slices[slice].offset, [this, slice, started, peer = w.mapped().peer](
                                                                    Status st) { Landed(slice, peer, started, st); });
    };
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      const uint32_t slice = (it++)->first;
      if (admitted_.count(slice)) take(slice);
    }
    for (size_t i = 0; i < admit_order_.size() && i < o_.lookahead && landing_ < o_.recv_window;) {
      const uint32_t slice = admit_order_[i];
      if (expected_[slice].verified || waiting_.count(slice)) {
        admit_order_.erase(admit_order_.begin() + static_cast<std::ptrdiff_t>(i));
        if (expected_[slice].verified) continue;  // it was written into the buffer
        admitted_.insert(slice);
        take(slice);
      } else {
        ++i;
      }
    }
  }

  // Discards what still waits (the run is over).
  void DropWaiting() {
    for (auto& [slice, w] : waiting_) w.accept(nullptr, [](Status) {});
    waiting_.clear();
  }

  void Landed(uint32_t slice, const std::string& peer, double started, const Status& st) {
    std::lock_guard lock(mu_);
    Drop(peer);
    --landing_;
    LandedLocked(slice, peer, started, st);
    if (error_.ok()) Admit();
  }

  // A slice is in the buffer: the verifier thread checks it (off the transport's thread, which
  // goes on moving bytes meanwhile).
  void LandedLocked(uint32_t slice, const std::string& peer, double started, const Status& st) {
    VLOG(1) << f_.node << ": slice " << slice << " from " << peer << " landed: " << st.ToString();
    cv_.notify_all();
    if (!st.ok()) return Fail(st.WithContext("receiving slice " + std::to_string(slice) + " from '" + peer + "'"));
    Hold(kVerifying);
    to_verify_.push_back({slice, peer, started});
    if (!verifier_.joinable()) verifier_ = std::thread([this] { Verifier(); });
    verify_cv_.notify_one();
  }

  void Verifier() {
    std::unique_lock lock(mu_);
    while (true) {
      verify_cv_.wait(lock, [&] { return stop_verifier_ || !to_verify_.empty(); });
      if (to_verify_.empty()) return;
      const ToVerify v = to_verify_.front();
      to_verify_.pop_front();
      const SliceInfo& s = layout_.slices[v.slice];
      lock.unlock();
      const bool good = Xxh3(buffer_ + s.offset, s.length) == s.xxh3;
      lock.lock();
      Drop(kVerifying);
      cv_.notify_all();
      if (error_.ok()) Verified(v.slice, v.peer, v.started, good);
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
      Control(peer, kResendMessage, slice);
      return;
    }
    e.verified = true;
    held_[slice] = true;
    ++verified_;
    report_.last_receive = last_landed_[peer] = Now();
    report_.bytes_received += s.length;
    ++report_.slices_received;
    if (--expected_from_[peer] == 0) FinishedWith(peer);
    if (o_.on_slice) o_.on_slice({layout_.model, slice, peer, s.length, started, report_.last_receive});
    Pump();
    Admit();
  }

  void OnPeerFailure(const std::string& peer, const Status& cause) {
    std::lock_guard lock(mu_);
    const bool owes = expected_from_.count(peer) && expected_from_[peer] > 0;
    const bool owed = unfinished_receivers_.count(peer) > 0;
    if (owes || owed) Fail(Unavailable(Missing("lost '" + peer + "' (" + cause.message() + ")")));
  }

  Transport& t_;
  const ModelLayout& layout_;
  uint8_t* buffer_;
  std::vector<bool> held_;
  const PlanFragment& f_;
  const ExecutorOptions& o_;
  const bool writes_;  // this node takes slices by write and sends them by write where offered
  const std::chrono::steady_clock::time_point start_;
  std::string region_text_;  // this node's block regions, as offered
  std::vector<uint64_t> block_bytes_;
  std::vector<Local> local_;
  std::map<std::string, Offered> offers_;
  std::map<std::string, double> last_landed_;
  std::map<std::string, Flushing> flushing_;
  std::map<std::string, Busy> busy_;
  std::map<std::string, Arrivals> arrivals_;
  std::deque<ToVerify> to_verify_;
  std::condition_variable verify_cv_;
  bool stop_verifier_ = false;
  std::thread verifier_;  // started with the first slice to check
  std::mutex mu_;
  std::condition_variable cv_;
  Status error_;
  std::deque<FragmentStep> order_;    // sends not yet started, in plan order
  std::deque<uint32_t> admit_order_;  // receives not yet let in, in plan order
  std::set<uint32_t> admitted_;       // receives let in once (a resend lands at once)
  std::map<uint32_t, Waiting> waiting_;
  size_t landing_ = 0;  // receives let in and not yet landed
  std::set<std::string> receivers_;
  size_t in_flight_total_ = 0;
  size_t outstanding_ = 0;  // transport callbacks not yet run, and slices not yet verified
  std::map<std::string, size_t> outstanding_by_peer_;  // the same by peer (kVerifying: the verifier's)
  static constexpr const char* kVerifying = "";

  void Hold(const std::string& peer) {
    ++outstanding_;
    ++outstanding_by_peer_[peer];
  }
  void Drop(const std::string& peer) {
    --outstanding_;
    auto it = outstanding_by_peer_.find(peer);
    if (it != outstanding_by_peer_.end() && --it->second == 0) outstanding_by_peer_.erase(it);
  }
  std::map<uint32_t, Expected> expected_;
  std::map<std::string, uint32_t> expected_from_;
  size_t verified_ = 0;
  std::set<std::string> unfinished_receivers_;
  ExecutorReport report_;
};

}  // namespace

Result<ExecutorReport> ExecuteFragment(Transport& transport, const ModelLayout& layout, uint8_t* buffer,
                                       const std::vector<bool>& held, const PlanFragment& fragment,
                                       const ExecutorOptions& options) {
  MC_RETURN_IF_ERROR(fragment.Validate(layout));
  if (held.size() != layout.slices.size()) return InvalidArgument("executor: held has the wrong size");
  for (const auto& s : fragment.sends) {
    // A slice sent must be held at the start or received in this fragment.
    const bool received = std::any_of(fragment.receives.begin(), fragment.receives.end(),
                                      [&](const FragmentStep& r) { return r.slice == s.slice; });
    if (!held[s.slice] && !received) {
      return InvalidArgument("plan fragment of '" + fragment.node + "' sends slice " + std::to_string(s.slice) +
                             " to '" + s.peer + "' but neither holds nor receives it");
    }
  }
  bool writes = false;
  switch (options.method) {
    case SliceMethod::kMessages:
      break;
    case SliceMethod::kAuto:
      writes = (options.region != nullptr || !options.block_regions.empty()) && transport.capabilities().write_notify;
      break;
    case SliceMethod::kWrites:
      if (options.region == nullptr && options.block_regions.empty()) {
        return InvalidArgument("executor: slices by write need the registered buffer");
      }
      if (!transport.capabilities().one_sided_write) {
        return FailedPrecondition("executor: transport '" + transport.capabilities().backend +
                                  "' cannot write one-sided; use messages");
      }
      writes = true;
      break;
  }
  if (writes && options.block_regions.empty() &&
      (options.region->data() != buffer || options.region->size() < layout.buffer_bytes)) {
    return InvalidArgument("executor: the registered region is not the " + std::to_string(layout.buffer_bytes) +
                           "-byte model buffer");
  }
  if (writes && !options.block_regions.empty()) {
    // Every block this node sends from or receives into is registered where the layout has it.
    if (options.block_regions.size() != layout.block_offsets.size()) {
      return InvalidArgument("executor: " + std::to_string(options.block_regions.size()) + " block regions for " +
                             std::to_string(layout.block_offsets.size()) + " blocks");
    }
    std::vector<uint64_t> end(layout.block_offsets.size(), 0);
    for (const auto& s : layout.slices) end[s.block] = std::max(end[s.block], s.offset + s.length);
    std::set<uint32_t> used;
    for (const auto& s : fragment.sends) used.insert(layout.slices[s.slice].block);
    for (const auto& r : fragment.receives) used.insert(layout.slices[r.slice].block);
    for (uint32_t b : used) {
      const MemoryRegion* r = options.block_regions[b];
      if (r == nullptr || r->data() != buffer + layout.block_offsets[b] ||
          r->size() < end[b] - layout.block_offsets[b]) {
        return InvalidArgument("executor: block " + std::to_string(b) + " of '" + layout.model +
                               "' is not registered where the layout has it");
      }
    }
  }
  auto run = std::make_unique<Run>(transport, layout, buffer, held, fragment, options, writes);
  auto result = run->Go();
  if (!run->Drain()) {
    // A transport callback is still due: keep its target alive rather than risk a dangling
    // pointer (the transport fails every operation when it stops).
    LOG(WARNING) << "fabric: node " << fragment.node << ": operations still in flight after the run; leaking its state";
    (void)run.release();
  }
  return result;
}

}  // namespace modelcast::fabric
