// lambdapipe: the binomial pipeline of DESIGN.md, on a circulant graph so that it is
// round-optimal for any number of nodes, extended with k-way sources, locality and
// stragglers.
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <numeric>

#include "algorithms.h"
#include "circulant.h"
#include "plan_builder.h"
#include "schedulers.h"

namespace modelcast::planner {
namespace {

uint32_t CeilLog2(uint64_t x) {
  uint32_t q = 0;
  while ((1ull << q) < x) ++q;
  return q;
}

// Ticks of a k-way multicast of s slices to n targets: s + ceil(log2(n / k + 1)) - 1.
double MulticastTicks(uint32_t s, size_t n, size_t k) {
  if (n == 0) return 0;
  const size_t group = (n + k - 1) / k;
  return static_cast<double>(s) + CeilLog2(group + 1) - 1;
}

struct Split {
  std::vector<int32_t> local;       // load their own copy
  std::vector<int32_t> core;        // multicast targets, fastest first
  std::vector<int32_t> stragglers;  // fed from spare link capacity
  double reference_rate = 0;        // the core's slowest link
};

Split ChooseSplit(const PlanRequest& req) {
  const ModelShape& m = req.model;
  const uint32_t s = m.num_slices();
  const double total = static_cast<double>(m.TotalBytes());
  const double slice = static_cast<double>(m.MaxSliceBytes());
  const size_t k = req.sources.size();
  double source_rate = INFINITY;
  for (int32_t src : req.sources) source_rate = std::min(source_rate, req.nodes[src].nic);

  Split split;
  std::vector<int32_t> network;
  // Locality: a target whose own copy loads faster than the multicast is expected to
  // deliver loads it and leaves the tree.
  std::vector<double> rates;
  for (int32_t t : req.targets) rates.push_back(req.nodes[t].nic);
  std::nth_element(rates.begin(), rates.begin() + rates.size() / 2, rates.end());
  const double typical = std::min(source_rate, rates[rates.size() / 2]);
  const double multicast_seconds = MulticastTicks(s, req.targets.size(), std::max<size_t>(k, 1)) * slice / typical;
  for (int32_t t : req.targets) {
    const PlanNode& n = req.nodes[t];
    const bool has_copy = n.holds != Tier::kNone && n.local_rate > 0;
    if (has_copy && (k == 0 || (req.locality && total / n.local_rate <= multicast_seconds))) {
      split.local.push_back(t);
    } else {
      network.push_back(t);
    }
  }
  if (network.empty()) {
    split.reference_rate = std::isfinite(source_rate) ? source_rate : 1.0;
    return split;
  }
  // Stragglers: keep the j fastest targets in the multicast (whose tick is set by the
  // slowest of them and the sources) and feed the others from spare capacity, choosing j to
  // minimise the sum of the targets' estimated completion times.
  std::stable_sort(network.begin(), network.end(),
                   [&](int32_t a, int32_t b) { return req.nodes[a].nic > req.nodes[b].nic; });
  std::vector<double> own(network.size() + 1, 0);  // suffix sums of total / nic
  for (size_t i = network.size(); i-- > 0;) own[i] = own[i + 1] + total / req.nodes[network[i]].nic;
  // Only a significant drop in link rate (below 3/4 of the next faster target) is a place
  // to split: among equal links, a smaller multicast group is never worth a straggler.
  constexpr double kStragglerRatio = 0.75;
  size_t best_j = network.size();
  double best_cost = INFINITY;
  for (size_t j = 1; j <= network.size(); ++j) {
    if (j < network.size() && req.nodes[network[j]].nic >= kStragglerRatio * req.nodes[network[j - 1]].nic) continue;
    const double rate = std::min(source_rate, req.nodes[network[j - 1]].nic);
    const double core = MulticastTicks(s, j, k) * slice / rate;
    const double cost = core * static_cast<double>(j) + own[j] + 0.5 * core * static_cast<double>(network.size() - j);
    if (cost < best_cost * (1 - 1e-9)) {
      best_cost = cost;
      best_j = j;
    }
  }
  split.core.assign(network.begin(), network.begin() + best_j);
  split.stragglers.assign(network.begin() + best_j, network.end());
  split.reference_rate = std::min(source_rate, req.nodes[split.core.back()].nic);
  return split;
}

// The slice order of each group: group g starts at the block boundary nearest g * s / k, so
// that in the first s/k ticks the groups receive different, block-aligned parts of the model.
// Within each chunk slices go largest first: the shorter last slice of every block then
// travels in rounds of short slices at the end, instead of each round being as long as a
// full slice while carrying a short one (the order within a chunk does not matter to
// pipelines: a group serves its chunk only once it holds all of it).
std::vector<std::vector<uint32_t>> SliceOrders(const ModelShape& m, size_t k) {
  const uint32_t s = m.num_slices();
  std::vector<uint32_t> starts(k + 1, 0);
  for (size_t g = 1; g < k; ++g) {
    const double want = static_cast<double>(g) * s / static_cast<double>(k);
    uint32_t best = 0;
    for (uint32_t first : m.block_first_slice) {
      if (first < s && std::abs(first - want) < std::abs(best - want)) best = first;
    }
    starts[g] = std::max(best, starts[g - 1]);
  }
  starts[k] = s;
  std::vector<std::vector<uint32_t>> chunks(k);
  for (size_t g = 0; g < k; ++g) {
    for (uint32_t x = starts[g]; x < starts[g + 1]; ++x) chunks[g].push_back(x);
    std::stable_sort(chunks[g].begin(), chunks[g].end(),
                     [&](uint32_t a, uint32_t b) { return m.slice_bytes[a] > m.slice_bytes[b]; });
  }
  std::vector<std::vector<uint32_t>> orders(k);
  for (size_t g = 0; g < k; ++g) {
    for (size_t j = 0; j < k; ++j) {
      const auto& c = chunks[(g + j) % k];
      orders[g].insert(orders[g].end(), c.begin(), c.end());
    }
  }
  return orders;
}

}  // namespace

Result<Plan> PlanLambdaPipe(const PlanRequest& req, const std::vector<SliceSet>* initial) {
  const Split split = ChooseSplit(req);
  PlanBuilder b(req, "lambdapipe", split.reference_rate);
  if (initial != nullptr) {
    for (size_t n = 0; n < req.nodes.size(); ++n) {
      for (uint32_t x = (*initial)[n].Next(0); x < b.slices(); x = (*initial)[n].Next(x + 1))
        b.Hold(static_cast<int32_t>(n), x);
    }
  }
  const uint32_t s = b.slices();
  const size_t k = std::min(req.sources.size(), split.core.size());
  if (k > 0) {
    const auto groups = RoundRobin(split.core, k);
    const auto orders = SliceOrders(req.model, k);
    std::map<uint32_t, std::unique_ptr<CirculantSchedule>> schedules;  // by group size
    for (size_t g = 0; g < k; ++g) {
      std::vector<int32_t> procs = {req.sources[g]};
      procs.insert(procs.end(), groups[g].begin(), groups[g].end());
      const uint32_t p = static_cast<uint32_t>(procs.size());
      auto& sched = schedules[p];
      if (!sched) sched = std::make_unique<CirculantSchedule>(p);
      const Tier source_tier = req.nodes[req.sources[g]].holds;
      sched->ForEachTransfer(s, [&](uint32_t round, uint32_t from, uint32_t to, uint32_t block) {
        const uint32_t slice = orders[g][block];
        const int32_t dst = procs[to];
        if (b.Arrival(dst, slice) == 0) return;  // held before the plan starts (replan)
        b.Add(procs[from], dst, slice, round, from == 0 ? source_tier : Tier::kGpu);
      });
    }
    if (k > 1) {
      b.Note("k-way: " + std::to_string(k) + " sources each root a group of ~" +
             std::to_string((split.core.size() + k - 1) / k) + " targets, slice order rotated per group");
    }
  }
  LoadLocally(b, split.local, initial);
  for (int32_t t : split.local) {
    b.Note("locality: " + req.nodes[t].name + " loads its own " + std::string(TierName(req.nodes[t].holds)) +
           " copy instead of joining the multicast");
  }
  if (!split.stragglers.empty()) {
    std::vector<int32_t> senders = req.sources;
    senders.insert(senders.end(), split.core.begin(), split.core.end());
    senders.insert(senders.end(), split.local.begin(), split.local.end());
    senders.insert(senders.end(), split.stragglers.begin(), split.stragglers.end());
    std::vector<uint32_t> lost;
    MC_RETURN_IF_ERROR(FillGreedy(b, split.stragglers, senders, 0, &lost));
    for (int32_t t : split.stragglers) {
      char rate[32];
      std::snprintf(rate, sizeof(rate), "%.3g", req.nodes[t].nic * 8 / 1e9);
      b.Note("straggler: " + req.nodes[t].name + " (" + rate + " Gbit/s) is fed from spare link capacity " +
             "instead of slowing the multicast");
    }
  }
  return b.Finish();
}

}  // namespace modelcast::planner
