// Round-optimal broadcast of n blocks from processor 0 to processors 1..p-1 on a circulant
// graph, after J. L. Träff, "Round-optimal n-block broadcast schedules in logarithmic time"
// (arXiv 2312.11236): n - 1 + ceil(log2 p) rounds for every p, the lower bound in the model
// where each processor sends one block and receives one block per round.
//
// With q = ceil(log2 p) and skips s_0 = 1 <= s_1 <= ... <= s_q = p (s_k = ceil(s_{k+1} / 2)),
// in round i processor r receives from (r - s_{i mod q}) mod p and sends to (r + s_{i mod q})
// mod p. Rounds come in phases of q. In each phase a processor receives its "baseblock"
// of that phase and the q - 1 other residues of the previous phase; which residue arrives in
// which round is its receive schedule, computed so that the sender always holds the block.
#pragma once

#include <cstdint>
#include <vector>

namespace modelcast::planner {

class CirculantSchedule {
 public:
  explicit CirculantSchedule(uint32_t processors);

  uint32_t processors() const { return p_; }
  uint32_t q() const { return q_; }
  uint32_t skip(uint32_t k) const { return skips_[k]; }
  // Rounds needed to broadcast n blocks: n - 1 + q.
  uint32_t Rounds(uint32_t n) const { return n == 0 ? 0 : n - 1 + q_; }

  // Calls f(round, sender, receiver, block) for each transfer of the broadcast of n blocks, in
  // round order. A processor never receives a block twice; the sender holds the block
  // before the round (processor 0 holds all blocks from the start).
  template <typename F>
  void ForEachTransfer(uint32_t n, F&& f) const;

  uint32_t Baseblock(uint32_t r) const;

 private:
  void ComputeReceiveSchedule(uint32_t r);

  uint32_t p_;
  uint32_t q_;
  std::vector<uint64_t> skips_;  // q + 2 entries; skips_[q + 1] = 2p is a sentinel
  // Per processor r, for round k of a phase, the block it receives relative to the phase:
  // >= 0 its baseblock, < 0 a block of the previous phase.
  std::vector<std::vector<int32_t>> recv_;
};

template <typename F>
void CirculantSchedule::ForEachTransfer(uint32_t n, F&& f) const {
  if (n == 0 || p_ < 2) return;
  // Start x rounds into a phase so that the last block ends a phase; blocks past the last
  // are clamped to it (receivers that already have it skip it).
  const uint32_t x = (q_ - (n - 1) % q_) % q_;
  std::vector<std::vector<bool>> has(p_, std::vector<bool>(n, false));
  int64_t offset = -static_cast<int64_t>(x);
  for (uint32_t i = x; i < n - 1 + q_ + x; ++i) {
    const uint32_t k = i % q_;
    for (uint32_t r = 1; r < p_; ++r) {
      int64_t block = recv_[r][k] + offset;
      if (block < 0) continue;
      if (block >= n) block = n - 1;
      if (has[r][block]) continue;
      has[r][block] = true;
      const uint32_t sender = static_cast<uint32_t>((r + p_ - skips_[k] % p_) % p_);
      f(i - x, sender, r, static_cast<uint32_t>(block));
    }
    if (k == q_ - 1) offset += q_;
  }
}

}  // namespace modelcast::planner
