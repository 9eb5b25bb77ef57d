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

#include "modelcast/common/checksum.h"

namespace modelcast::fabric {

ModelLayout ModelLayout::FromManifest(const model::Manifest& m) {
  ModelLayout l;
  l.model = m.name;
  uint64_t offset = 0;
  for (const auto& b : m.blocks) {
    l.block_offsets.push_back(offset);
    offset += b.file_bytes;
  }
  l.buffer_bytes = offset;
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

namespace {

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
      const ExecutorOptions& o)
      : t_(t), layout_(layout), buffer_(buffer), held_(held), f_(f), o_(o), start_(std::chrono::steady_clock::now()) {
    held_.resize(layout.slices.size(), false);
    for (const auto& s : f.sends) queues_[s.peer].push_back(s.slice);
    for (const auto& r : f.receives) {
      expected_[r.slice] = {r.peer, 0, false};
      ++expected_from_[r.peer];
    }
    for (const auto& [peer, _] : queues_) unfinished_receivers_.insert(peer);
  }

  Result<ExecutorReport> Go() {
    t_.SetMessageHandler([this](const IncomingMessage& m, AcceptPayload accept) { OnMessage(m, std::move(accept)); });
    t_.SetPeerFailureHandler([this](const std::string& peer, const Status& cause) { OnPeerFailure(peer, cause); });
    {
      std::lock_guard lock(mu_);
      for (auto& [peer, n] : expected_from_) {
        if (n == 0) FinishedWith(peer);
      }
      Pump();
    }
    std::unique_lock lock(mu_);
    const bool finished =
        cv_.wait_for(lock, std::chrono::duration<double>(o_.deadline), [&] { return !error_.ok() || Done(); });
    // Stop taking callbacks that touch this object.
    t_.SetMessageHandler(nullptr);
    t_.SetPeerFailureHandler(nullptr);
    if (!error_.ok()) return error_;
    if (!finished) return DeadlineExceeded(Missing("after " + std::to_string(o_.deadline) + " s"));
    report_.seconds = Now();
    return report_;
  }

  // The callbacks still in flight when Go returns hold no reference to this object after it
  // has been drained; the caller keeps it alive until then.
  bool Drain() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(5), [&] { return outstanding_ == 0; });
  }

 private:
  struct Expected {
    std::string peer;
    int retries = 0;
    bool verified = false;
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

  // Starts every send whose slice is held, in plan order per peer, within the window.
  void Pump() {
    for (auto& [peer, queue] : queues_) {
      while (!queue.empty() && in_flight_[peer] < o_.window && held_[queue.front()]) {
        const uint32_t slice = queue.front();
        queue.pop_front();
        SendSlice(peer, slice);
      }
    }
  }

  void SendSlice(const std::string& peer, uint32_t slice) {
    const SliceInfo& s = layout_.slices[slice];
    VLOG(1) << f_.node << ": send slice " << slice << " to " << peer;
    ++in_flight_[peer];
    ++in_flight_total_;
    ++outstanding_;
    t_.Send(peer, kSliceMessage, U32(slice), {buffer_ + s.offset, s.length}, [this, peer, slice](Status st) {
      std::lock_guard lock(mu_);
      --outstanding_;
      --in_flight_[peer];
      --in_flight_total_;
      if (!st.ok()) {
        Fail(
            st.WithContext("sending slice " + std::to_string(slice) + " of '" + layout_.model + "' to '" + peer + "'"));
      } else {
        report_.bytes_sent += layout_.slices[slice].length;
        ++report_.slices_sent;
        Pump();
      }
      cv_.notify_all();
    });
  }

  void Control(const std::string& peer, uint16_t type, uint32_t value) {
    ++outstanding_;
    t_.Send(peer, type, U32(value), {}, [this, peer](Status st) {
      std::lock_guard lock(mu_);
      --outstanding_;
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
    if (m.type != kSliceMessage) {
      accept(nullptr, [](Status) {});
      return Fail(InvalidArgument("unknown message type " + std::to_string(m.type) + " from '" + m.peer + "'"));
    }
    // A slice: it must be one we expect from this peer, of exactly its length, not yet held.
    auto it = expected_.find(value);
    if (it == expected_.end() || it->second.peer != m.peer || it->second.verified || value >= layout_.slices.size()) {
      accept(nullptr, [](Status) {});
      return Fail(InvalidArgument("unexpected slice " + std::to_string(value) + " of '" + layout_.model + "' from '" +
                                  m.peer + "' at node '" + f_.node + "' (not in its plan fragment)"));
    }
    const SliceInfo& s = layout_.slices[value];
    if (m.payload_size != s.length) {
      accept(nullptr, [](Status) {});
      return Fail(InvalidArgument("slice " + std::to_string(value) + " from '" + m.peer + "' is " +
                                  std::to_string(m.payload_size) + " bytes, the layout says " +
                                  std::to_string(s.length)));
    }
    const double started = Now();
    ++outstanding_;
    accept(buffer_ + s.offset, [this, value, started, peer = m.peer](Status st) { Landed(value, peer, started, st); });
  }

  void Landed(uint32_t slice, const std::string& peer, double started, const Status& st) {
    std::lock_guard lock(mu_);
    VLOG(1) << f_.node << ": slice " << slice << " from " << peer << " landed: " << st.ToString();
    --outstanding_;
    cv_.notify_all();
    if (!st.ok()) return Fail(st.WithContext("receiving slice " + std::to_string(slice) + " from '" + peer + "'"));
    const SliceInfo& s = layout_.slices[slice];
    Expected& e = expected_[slice];
    if (Xxh3(buffer_ + s.offset, s.length) != s.xxh3) {
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
    report_.bytes_received += s.length;
    ++report_.slices_received;
    if (--expected_from_[peer] == 0) FinishedWith(peer);
    if (o_.on_slice) o_.on_slice({layout_.model, slice, peer, s.length, started, Now()});
    Pump();
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
  const std::chrono::steady_clock::time_point start_;
  std::mutex mu_;
  std::condition_variable cv_;
  Status error_;
  std::map<std::string, std::deque<uint32_t>> queues_;
  std::map<std::string, size_t> in_flight_;
  size_t in_flight_total_ = 0;
  size_t outstanding_ = 0;  // transport callbacks not yet run
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
  auto run = std::make_unique<Run>(transport, layout, buffer, held, fragment, options);
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
