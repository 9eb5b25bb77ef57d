#include "schedulers.h"

#include <algorithm>

namespace modelcast::planner {

Status FillGreedy(PlanBuilder& b, const std::vector<int32_t>& receivers, const std::vector<int32_t>& senders,
                  uint32_t start, std::vector<uint32_t>* lost) {
  const uint32_t s = b.slices();
  if (receivers.empty()) return Status::Ok();
  // A slice is obtainable if some sender holds it or is already scheduled to.
  std::vector<bool> obtainable(s, false);
  for (int32_t u : senders) {
    for (uint32_t x = 0; x < s; ++x) obtainable[x] = obtainable[x] || b.Arrival(u, x) != kNever;
  }
  for (int32_t v : receivers) {
    for (uint32_t x = 0; x < s; ++x) obtainable[x] = obtainable[x] || b.Arrival(v, x) != kNever;
  }
  for (uint32_t x = 0; x < s; ++x) {
    if (!obtainable[x]) lost->push_back(x);
  }
  // What each receiver still has to be sent.
  std::vector<SliceSet> need(receivers.size(), SliceSet(s));
  size_t open = 0;
  for (size_t i = 0; i < receivers.size(); ++i) {
    for (uint32_t x = 0; x < s; ++x) {
      if (obtainable[x] && b.Arrival(receivers[i], x) == kNever) need[i].Set(x);
    }
    open += need[i].Empty() ? 0 : 1;
  }
  constexpr int kSliceTries = 8;
  constexpr size_t kSenderScan = 256;
  uint32_t last_arrival = start;  // no transfer arrives after this tick yet
  for (uint32_t t = start; open > 0; ++t) {
    bool started = false;
    for (size_t i = 0; i < receivers.size(); ++i) {
      if (need[i].Empty()) continue;
      const int32_t v = receivers[i];
      int tries = 0;
      bool done = false;
      for (uint32_t x = need[i].Next(0); x < s && tries < kSliceTries && !done; x = need[i].Next(x + 1), ++tries) {
        const size_t offset = (static_cast<size_t>(v) * 7919 + t) % senders.size();
        const size_t scan = std::min(senders.size(), kSenderScan);
        for (size_t j = 0; j < scan; ++j) {
          const int32_t u = senders[(offset + j) % senders.size()];
          if (u == v || b.Arrival(u, x) > t || !b.Fits(u, v, x, t)) continue;
          b.Add(u, v, x, t, Tier::kGpu);
          last_arrival = std::max(last_arrival, t + b.Duration(u, v, x));
          need[i].Clear(x);
          started = done = true;
          if (need[i].Empty()) --open;
          break;
        }
      }
    }
    // Nothing started and nothing in flight: what is left can never be sent.
    if (!started && t >= last_arrival) {
      bool any_sender_can_get_more = false;
      for (int32_t u : senders) {
        for (uint32_t x = 0; x < s && !any_sender_can_get_more; ++x) {
          any_sender_can_get_more = b.Arrival(u, x) != kNever && b.Arrival(u, x) > t;
        }
      }
      if (!any_sender_can_get_more) {
        return Internal("greedy fill made no progress at tick " + std::to_string(t) + " with " + std::to_string(open) +
                        " receivers unfinished");
      }
    }
    if (t > start + 100'000'000u) return Internal("greedy fill did not finish");
  }
  std::sort(lost->begin(), lost->end());
  lost->erase(std::unique(lost->begin(), lost->end()), lost->end());
  return Status::Ok();
}

Status RunQueues(PlanBuilder& b, std::vector<std::deque<QueuedSend>> queues) {
  const uint32_t s = b.slices();
  std::vector<int32_t> active;
  for (size_t u = 0; u < queues.size(); ++u) {
    if (!queues[u].empty()) active.push_back(static_cast<int32_t>(u));
  }
  // Whether a node holds every slice by tick t.
  auto full_by = [&](int32_t u, uint32_t t) {
    for (uint32_t x = 0; x < s; ++x) {
      if (b.Arrival(u, x) > t) return false;
    }
    return true;
  };
  uint32_t in_flight_until = 0;
  for (uint32_t t = 0; !active.empty(); ++t) {
    bool started = false;
    for (int32_t u : active) {
      auto& q = queues[u];
      if (q.empty()) continue;
      const QueuedSend& head = q.front();
      if (b.Arrival(u, head.slice) > t) continue;
      if (head.whole_model && !full_by(u, t)) continue;
      if (!b.Fits(u, head.dst, head.slice, t)) continue;
      const uint32_t d = b.Duration(u, head.dst, head.slice);
      b.Add(u, head.dst, head.slice, t, Tier::kGpu);
      in_flight_until = std::max(in_flight_until, t + d);
      q.pop_front();
      started = true;
    }
    std::erase_if(active, [&](int32_t u) { return queues[u].empty(); });
    if (!started && t >= in_flight_until && !active.empty()) {
      const int32_t u = active.front();
      return Internal("send queue of node " + std::to_string(u) + " waits for slice " +
                      std::to_string(queues[u].front().slice) + " that it will never hold");
    }
  }
  return Status::Ok();
}

void LoadLocally(PlanBuilder& b, const std::vector<int32_t>& targets, const std::vector<SliceSet>* initial) {
  for (int32_t n : targets) {
    const Tier tier = b.request().nodes[n].holds;
    uint32_t t = 0;
    for (uint32_t x = 0; x < b.slices(); ++x) {
      if (initial != nullptr && (*initial)[n].Has(x)) continue;
      b.Add(n, n, x, t, tier);
      t += b.Duration(n, n, x);
    }
  }
}

std::vector<std::vector<int32_t>> RoundRobin(const std::vector<int32_t>& nodes, size_t groups) {
  std::vector<std::vector<int32_t>> out(groups);
  if (groups == 0) return out;
  for (size_t i = 0; i < nodes.size(); ++i) out[i % groups].push_back(nodes[i]);
  return out;
}

}  // namespace modelcast::planner
