#include "plan_builder.h"

#include <algorithm>
#include <cmath>

#include "modelcast/planner/pipelines.h"

namespace modelcast::planner {

namespace {
constexpr double kSlack = 1e-6;  // rounding room when adding shares of a channel
}

PlanBuilder::PlanBuilder(const PlanRequest& request, std::string algorithm, double reference_rate)
    : request_(request),
      usage_(request.nodes.size()),
      arrival_(request.nodes.size(), std::vector<uint32_t>(request.model.num_slices(), kNever)) {
  plan_.algorithm = std::move(algorithm);
  for (const auto& n : request.nodes) plan_.node_names.push_back(n.name);
  plan_.num_slices = request.model.num_slices();
  plan_.num_blocks = request.model.num_blocks();
  plan_.reference_rate = reference_rate;
  plan_.tick_seconds = static_cast<double>(request.model.MaxSliceBytes()) / reference_rate;
  for (int32_t s : request.sources) {
    for (uint32_t x = 0; x < plan_.num_slices; ++x) arrival_[s][x] = 0;
  }
}

uint32_t PlanBuilder::Duration(int32_t src, int32_t dst, uint32_t slice) const {
  const double rate =
      src == dst ? request_.nodes[src].local_rate : std::min(request_.nodes[src].nic, request_.nodes[dst].nic);
  const double ticks = static_cast<double>(request_.model.slice_bytes[slice]) / (rate * plan_.tick_seconds);
  return std::max<uint32_t>(1, static_cast<uint32_t>(std::ceil(ticks - 1e-9)));
}

double PlanBuilder::SendShare(int32_t src, int32_t dst, uint32_t slice) const {
  const double rate =
      static_cast<double>(request_.model.slice_bytes[slice]) / (Duration(src, dst, slice) * plan_.tick_seconds);
  return rate / (src == dst ? request_.nodes[src].local_rate : request_.nodes[src].nic);
}

double PlanBuilder::RecvShare(int32_t src, int32_t dst, uint32_t slice) const {
  const double rate =
      static_cast<double>(request_.model.slice_bytes[slice]) / (Duration(src, dst, slice) * plan_.tick_seconds);
  return rate / request_.nodes[dst].nic;
}

bool PlanBuilder::Fits(int32_t src, int32_t dst, uint32_t slice, uint32_t tick) const {
  const uint32_t d = Duration(src, dst, slice);
  if (src == dst) {
    const double share = SendShare(src, dst, slice);
    for (uint32_t t = tick; t < tick + d; ++t) {
      if (At(usage_[src].local, t) + share > 1 + kSlack) return false;
    }
    return true;
  }
  const double s = SendShare(src, dst, slice), r = RecvShare(src, dst, slice);
  for (uint32_t t = tick; t < tick + d; ++t) {
    if (At(usage_[src].send, t) + s > 1 + kSlack || At(usage_[dst].recv, t) + r > 1 + kSlack) return false;
  }
  return true;
}

void PlanBuilder::Book(std::vector<float>& v, uint32_t tick, uint32_t duration, double share) {
  if (v.size() < tick + duration) v.resize(tick + duration, 0.f);
  for (uint32_t t = tick; t < tick + duration; ++t) v[t] += static_cast<float>(share);
}

void PlanBuilder::Add(int32_t src, int32_t dst, uint32_t slice, uint32_t tick, Tier tier) {
  const uint32_t d = Duration(src, dst, slice);
  const double rate = static_cast<double>(request_.model.slice_bytes[slice]) / (d * plan_.tick_seconds);
  if (src == dst) {
    Book(usage_[src].local, tick, d, rate / request_.nodes[src].local_rate);
  } else {
    Book(usage_[src].send, tick, d, rate / request_.nodes[src].nic);
    Book(usage_[dst].recv, tick, d, rate / request_.nodes[dst].nic);
  }
  plan_.transfers.push_back({tick, src, dst, slice, tier, d});
  arrival_[dst][slice] = std::min(arrival_[dst][slice], tick + d);
}

Plan PlanBuilder::Finish() {
  std::stable_sort(plan_.transfers.begin(), plan_.transfers.end(), [](const Transfer& a, const Transfer& b) {
    return a.tick != b.tick ? a.tick < b.tick : a.src < b.src;
  });
  plan_.num_ticks = 0;
  for (const auto& t : plan_.transfers) plan_.num_ticks = std::max(plan_.num_ticks, t.end());

  const ModelShape& model = request_.model;
  const uint32_t blocks = model.num_blocks();
  plan_.full_at.assign(request_.nodes.size(), -1);
  // When each target completes each block.
  std::vector<std::vector<uint32_t>> block_done(request_.nodes.size());
  std::vector<uint32_t> events;
  for (int32_t n : request_.targets) {
    uint32_t full = 0;
    block_done[n].assign(blocks, 0);
    for (uint32_t b = 0; b < blocks; ++b) {
      for (uint32_t x = model.block_first_slice[b]; x < model.block_first_slice[b + 1]; ++x) {
        block_done[n][b] = std::max(block_done[n][b], arrival_[n][x]);
      }
      full = std::max(full, block_done[n][b]);
      if (block_done[n][b] != kNever) events.push_back(block_done[n][b]);
    }
    plan_.full_at[n] = full == kNever ? -1 : static_cast<int32_t>(full);
  }
  std::sort(events.begin(), events.end());
  events.erase(std::unique(events.begin(), events.end()), events.end());

  int max_stages = request_.max_pipeline_stages;
  if (max_stages <= 0) max_stages = std::max<int>(4, static_cast<int>(request_.sources.size()));
  // How many partial (not yet full) targets hold each block: no pipeline can form while some
  // block is held by none, which spares the search at most ticks of a large plan.
  struct Event {
    uint32_t tick;
    int32_t node;
    int32_t block;  // -1: the node becomes full
  };
  std::vector<Event> changes;
  for (int32_t n : request_.targets) {
    for (uint32_t b = 0; b < blocks; ++b) {
      if (block_done[n][b] != kNever) changes.push_back({block_done[n][b], n, static_cast<int32_t>(b)});
    }
    if (plan_.full_at[n] >= 0) changes.push_back({static_cast<uint32_t>(plan_.full_at[n]), n, -1});
  }
  std::sort(changes.begin(), changes.end(), [](const Event& a, const Event& b) {
    return a.tick != b.tick ? a.tick < b.tick : a.block > b.block;  // blocks before "full" at one tick
  });
  std::vector<uint32_t> holders(blocks, 0);
  uint32_t uncovered = blocks;
  std::vector<Pipeline> previous;
  size_t i = 0;
  // The first pipeline's tick is searched for exactly; after it, pipelines are reshaped at
  // most every `stride` ticks and whenever a target becomes a full instance (the
  // coordinator forms the real pipelines from actual holdings; the plan's are a forecast).
  const uint32_t stride = std::max<uint32_t>(1, plan_.num_ticks / 128);
  std::vector<bool> full_tick(plan_.num_ticks + 1, false);
  for (int32_t f : plan_.full_at) {
    if (f >= 0) full_tick[f] = true;
  }
  bool formed = false;
  uint32_t last_search = 0;
  for (uint32_t tick : events) {
    for (; i < changes.size() && changes[i].tick <= tick; ++i) {
      const Event& e = changes[i];
      if (e.block >= 0) {
        if (holders[e.block]++ == 0) --uncovered;
      } else {
        for (uint32_t b = 0; b < blocks; ++b) {
          if (--holders[b] == 0) ++uncovered;
        }
      }
    }
    if (formed && tick - last_search < stride && !full_tick[tick]) continue;
    std::vector<Pipeline> now;
    if (uncovered == 0) {
      last_search = tick;
      std::vector<NodeBlocks> partial;
      for (int32_t n : request_.targets) {
        if (plan_.full_at[n] >= 0 && static_cast<uint32_t>(plan_.full_at[n]) <= tick) continue;  // a full instance
        NodeBlocks nb{n, SliceSet(blocks)};
        for (uint32_t b = 0; b < blocks; ++b) {
          if (block_done[n][b] <= tick) nb.blocks.Set(b);
        }
        if (!nb.blocks.Empty()) partial.push_back(std::move(nb));
      }
      now = FormPipelines(model, partial, max_stages);
      formed = formed || !now.empty();
    }
    const bool same =
        now.size() == previous.size() &&
        std::equal(now.begin(), now.end(), previous.begin(), [](const Pipeline& a, const Pipeline& b) {
          return a.stages.size() == b.stages.size() &&
                 std::equal(a.stages.begin(), a.stages.end(), b.stages.begin(), [](const Stage& x, const Stage& y) {
                   return x.node == y.node && x.first_block == y.first_block && x.end_block == y.end_block;
                 });
        });
    if (!same) {
      plan_.pipelines.push_back({tick, now});
      previous = std::move(now);
    }
  }
  return std::move(plan_);
}

}  // namespace modelcast::planner
