// What every planning algorithm shares: the tick model (durations from link rates), a ledger
// of how much of each node's links each tick already uses, and the final pass that sorts the
// transfers and derives full-instance ticks and pipelines from them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "modelcast/planner/plan.h"

namespace modelcast::planner {

inline constexpr uint32_t kNever = UINT32_MAX;

class PlanBuilder {
 public:
  // `reference_rate`: the link rate (bytes/s) a tick is measured on; a full slice crosses
  // such a link in one tick.
  PlanBuilder(const PlanRequest& request, std::string algorithm, double reference_rate);

  const PlanRequest& request() const { return request_; }
  const ModelShape& model() const { return request_.model; }
  uint32_t slices() const { return request_.model.num_slices(); }
  double tick_seconds() const { return plan_.tick_seconds; }

  // Ticks a transfer of `slice` takes: over min(nic) for a network transfer, over the node's
  // local rate for a local load (src == dst).
  uint32_t Duration(int32_t src, int32_t dst, uint32_t slice) const;
  // Whether `node`'s send (or receive, or local) channel has room for the transfer over its
  // whole duration. `Add` books it.
  bool Fits(int32_t src, int32_t dst, uint32_t slice, uint32_t tick) const;
  void Add(int32_t src, int32_t dst, uint32_t slice, uint32_t tick, Tier tier);
  void Note(std::string note) { plan_.notes.push_back(std::move(note)); }

  // Tick from which `node` holds `slice` (0 for a source's slices), or kNever.
  uint32_t Arrival(int32_t node, uint32_t slice) const { return arrival_[node][slice]; }
  // Starting holdings: `node` holds `slice` from tick 0.
  void Hold(int32_t node, uint32_t slice) { arrival_[node][slice] = 0; }

  // Sorts transfers, computes num_ticks, full_at for the targets and pipelines.
  Plan Finish();

 private:
  struct Usage {
    std::vector<float> send, recv, local;
  };
  // Fraction of a node's channel a transfer uses per tick.
  double SendShare(int32_t src, int32_t dst, uint32_t slice) const;
  double RecvShare(int32_t src, int32_t dst, uint32_t slice) const;
  static float At(const std::vector<float>& v, uint32_t tick) { return tick < v.size() ? v[tick] : 0.f; }
  static void Book(std::vector<float>& v, uint32_t tick, uint32_t duration, double share);

  const PlanRequest& request_;
  Plan plan_;
  std::vector<Usage> usage_;
  std::vector<std::vector<uint32_t>> arrival_;
};

}  // namespace modelcast::planner
