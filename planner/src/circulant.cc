#include "circulant.h"

namespace modelcast::planner {

CirculantSchedule::CirculantSchedule(uint32_t processors) : p_(processors), q_(0) {
  while ((1ull << q_) < p_) ++q_;
  skips_.assign(q_ + 2, 0);
  skips_[q_] = p_;
  for (int k = static_cast<int>(q_) - 1; k >= 0; --k) skips_[k] = (skips_[k + 1] + 1) / 2;
  skips_[q_ + 1] = 2ull * p_;
  recv_.resize(p_);
  for (uint32_t r = 1; r < p_; ++r) ComputeReceiveSchedule(r);
}

// The greedy decomposition of r into skips, largest first: the index of the skip that
// completes it (q for the root, which is reached by no skip).
uint32_t CirculantSchedule::Baseblock(uint32_t r) const {
  uint64_t acc = 0;
  for (int k = static_cast<int>(q_) - 1; k >= 0; --k) {
    if (acc + skips_[k] == r) return static_cast<uint32_t>(k);
    if (acc + skips_[k] < r) acc += skips_[k];
  }
  return q_;
}

// Assigns to each round k of a phase a residue e in {0..q} minus the baseblock (e == q
// standing for the baseblock itself), by walking canonical skip paths 0 -> s_e -> s_e + s_e'
// (e' <= e) ...: the residue of a path's last step can be received in round k when the path
// ends at or before the round's sender r - s_k, so the sender already holds that block.
void CirculantSchedule::ComputeReceiveSchedule(uint32_t r) {
  const uint32_t base = Baseblock(r);
  std::vector<bool> alive(q_ + 1, true);
  alive[base] = false;
  std::vector<uint32_t> residue(q_, 0);
  const int64_t target = static_cast<int64_t>(p_) + r;  // r shifted by p: r - s_k stays >= 0
  auto limit = [&](uint32_t k) { return target - static_cast<int64_t>(skips_[k]); };

  auto walk = [&](auto&& self, int64_t at, int64_t bound, int e, uint32_t k) -> uint32_t {
    for (; e >= 0; --e) {
      if (!alive[e]) continue;
      const int64_t next = at + static_cast<int64_t>(skips_[e]);
      if (next > limit(k) || next >= bound) continue;
      if (next <= limit(k + 1)) k = self(self, next, bound, e, k);
      if (k >= q_ || at > limit(k + 1)) return k;
      bound = next;
      residue[k++] = static_cast<uint32_t>(e);
      alive[e] = false;
    }
    return k;
  };
  walk(walk, 0, 2ll * p_, static_cast<int>(q_), 0);

  recv_[r].resize(q_);
  for (uint32_t k = 0; k < q_; ++k) {
    recv_[r][k] =
        residue[k] == q_ ? static_cast<int32_t>(base) : static_cast<int32_t>(residue[k]) - static_cast<int32_t>(q_);
  }
}

}  // namespace modelcast::planner
