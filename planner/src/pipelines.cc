#include "modelcast/planner/pipelines.h"

#include <algorithm>

namespace modelcast::planner {
namespace {

struct Candidate {
  uint32_t run_end;  // the node holds blocks [pos, run_end)
  uint32_t index;    // into the nodes vector
};

class PipelineSearch {
 public:
  PipelineSearch(const ModelShape& model, const std::vector<NodeBlocks>& nodes, int max_stages)
      : model_(model),
        nodes_(nodes),
        max_stages_(max_stages),
        blocks_(model.num_blocks()),
        by_block_(blocks_),
        used_(nodes.size(), false) {
    // Each node's runs of consecutive blocks, bucketed by where they end; filling the
    // per-block lists from the furthest-reaching bucket down leaves each list ordered by
    // reach, longest first (ties in node order), without a sort.
    struct Run {
      uint32_t begin, end, index;
    };
    std::vector<std::vector<Run>> by_end(blocks_ + 1);
    for (uint32_t i = 0; i < nodes_.size(); ++i) {
      const SliceSet& held = nodes_[i].blocks;
      for (uint32_t b = held.Next(0); b < blocks_;) {
        uint32_t end = b;
        while (end < blocks_ && held.Has(end)) ++end;
        by_end[end].push_back({b, end, i});
        b = held.Next(end);
      }
    }
    for (uint32_t end = blocks_; end > 0; --end) {
      for (const Run& r : by_end[end]) {
        for (uint32_t x = r.begin; x < r.end; ++x) by_block_[x].push_back({r.end, r.index});
      }
    }
  }

  // Every block must be held by someone, or no pipeline can exist.
  bool Coverable() const {
    for (const auto& list : by_block_) {
      if (list.empty()) return false;
    }
    return true;
  }

  bool Next(Pipeline* out) {
    std::vector<uint32_t> chosen;
    budget_ = 256 * static_cast<int64_t>(max_stages_);
    if (!Search(0, &chosen)) return false;
    for (uint32_t i : chosen) used_[i] = true;
    *out = Balance(chosen);
    return true;
  }

 private:
  bool Search(uint32_t pos, std::vector<uint32_t>* chosen) {
    if (pos == blocks_) return true;
    if (static_cast<int>(chosen->size()) == max_stages_ || --budget_ < 0) return false;
    uint32_t tried_end = blocks_ + 1;
    for (const Candidate& c : by_block_[pos]) {
      if (used_[c.index] || std::find(chosen->begin(), chosen->end(), c.index) != chosen->end()) continue;
      if (c.run_end == tried_end) continue;  // another node reaching as far was already tried and failed
      tried_end = c.run_end;
      chosen->push_back(c.index);
      if (Search(c.run_end, chosen)) return true;
      chosen->pop_back();
      if (budget_ < 0) return false;
    }
    return false;
  }

  // Moves stage boundaries within what the chosen nodes hold so that stages carry about the
  // same number of layers.
  Pipeline Balance(const std::vector<uint32_t>& chosen) const {
    const size_t m = chosen.size();
    // The maximal run of node j around the part it was chosen for: [lo_j, hi_j).
    std::vector<uint32_t> lo(m), hi(m);
    uint32_t pos = 0;
    for (size_t j = 0; j < m; ++j) {
      const SliceSet& held = nodes_[chosen[j]].blocks;
      uint32_t a = pos;
      while (a > 0 && held.Has(a - 1)) --a;
      uint32_t b = pos;
      while (b < blocks_ && held.Has(b)) ++b;
      lo[j] = a;
      hi[j] = b;
      pos = b;
    }
    std::vector<uint32_t> prefix(blocks_ + 1, 0);
    for (uint32_t b = 0; b < blocks_; ++b) prefix[b + 1] = prefix[b] + model_.block_layers[b];
    Pipeline p;
    uint32_t start = 0;
    for (size_t j = 0; j < m; ++j) {
      uint32_t end = blocks_;
      if (j + 1 < m) {
        // Aim for an equal share of the layers still to place.
        const double share = static_cast<double>(prefix[blocks_] - prefix[start]) / static_cast<double>(m - j);
        uint32_t ideal = start + 1;
        while (ideal < blocks_ && prefix[ideal] - prefix[start] < share) ++ideal;
        const uint32_t min_end = std::max(start + 1, lo[j + 1]);
        const uint32_t max_end = std::min<uint32_t>(hi[j], blocks_ - static_cast<uint32_t>(m - j - 1));
        end = std::clamp(ideal, min_end, std::max(min_end, max_end));
      }
      p.stages.push_back({nodes_[chosen[j]].node, start, end});
      start = end;
    }
    return p;
  }

  const ModelShape& model_;
  const std::vector<NodeBlocks>& nodes_;
  const int max_stages_;
  const uint32_t blocks_;
  std::vector<std::vector<Candidate>> by_block_;
  std::vector<bool> used_;
  int64_t budget_ = 0;
};

}  // namespace

std::vector<Pipeline> FormPipelines(const ModelShape& model, const std::vector<NodeBlocks>& nodes, int max_stages) {
  std::vector<Pipeline> out;
  if (nodes.empty() || model.num_blocks() == 0 || max_stages < 1) return out;
  PipelineSearch search(model, nodes, max_stages);
  if (!search.Coverable()) return out;
  Pipeline p;
  while (search.Next(&p)) out.push_back(std::move(p));
  return out;
}

Status ValidatePipeline(const ModelShape& model, const Pipeline& p, const std::vector<SliceSet>& blocks_held) {
  if (p.stages.empty()) return InvalidArgument("pipeline has no stages");
  uint32_t next = 0;
  std::vector<int32_t> seen;
  for (const Stage& s : p.stages) {
    if (s.first_block != next || s.end_block <= s.first_block || s.end_block > model.num_blocks()) {
      return InvalidArgument("pipeline stage on node " + std::to_string(s.node) + " serves blocks [" +
                             std::to_string(s.first_block) + ", " + std::to_string(s.end_block) +
                             ") but should start at block " + std::to_string(next));
    }
    if (s.node < 0 || static_cast<size_t>(s.node) >= blocks_held.size()) {
      return InvalidArgument("pipeline stage names unknown node " + std::to_string(s.node));
    }
    if (std::find(seen.begin(), seen.end(), s.node) != seen.end()) {
      return InvalidArgument("node " + std::to_string(s.node) + " serves two stages of one pipeline");
    }
    seen.push_back(s.node);
    for (uint32_t b = s.first_block; b < s.end_block; ++b) {
      if (!blocks_held[s.node].Has(b)) {
        return InvalidArgument("node " + std::to_string(s.node) + " serves block " + std::to_string(b) +
                               " without holding all of its slices");
      }
    }
    next = s.end_block;
  }
  if (next != model.num_blocks()) return InvalidArgument("pipeline stops at block " + std::to_string(next));
  return Status::Ok();
}

}  // namespace modelcast::planner
