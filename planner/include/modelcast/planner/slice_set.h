// A fixed-size set of slice (or block) indices, as a bitset.
#pragma once

#include <bit>
#include <cstdint>
#include <vector>

namespace modelcast::planner {

class SliceSet {
 public:
  SliceSet() = default;
  explicit SliceSet(uint32_t size, bool full = false) : size_(size), words_((size + 63) / 64, full ? ~0ull : 0) {
    if (full) Trim();
  }

  uint32_t size() const { return size_; }
  bool Has(uint32_t i) const { return (words_[i >> 6] >> (i & 63)) & 1; }
  void Set(uint32_t i) { words_[i >> 6] |= 1ull << (i & 63); }
  void Clear(uint32_t i) { words_[i >> 6] &= ~(1ull << (i & 63)); }
  uint32_t Count() const {
    uint32_t n = 0;
    for (uint64_t w : words_) n += static_cast<uint32_t>(std::popcount(w));
    return n;
  }
  bool Full() const { return Count() == size_; }
  bool Empty() const {
    for (uint64_t w : words_) {
      if (w) return false;
    }
    return true;
  }
  void Add(const SliceSet& other) {
    for (size_t i = 0; i < words_.size(); ++i) words_[i] |= other.words_[i];
  }
  // The smallest element >= from, or size() when none.
  uint32_t Next(uint32_t from) const {
    if (from >= size_) return size_;
    size_t w = from >> 6;
    uint64_t bits = words_[w] & (~0ull << (from & 63));
    while (true) {
      if (bits) return static_cast<uint32_t>(w * 64 + std::countr_zero(bits));
      if (++w >= words_.size()) return size_;
      bits = words_[w];
    }
  }
  bool operator==(const SliceSet& o) const { return size_ == o.size_ && words_ == o.words_; }

 private:
  void Trim() {
    if (size_ % 64 && !words_.empty()) words_.back() &= (1ull << (size_ % 64)) - 1;
  }
  uint32_t size_ = 0;
  std::vector<uint64_t> words_;
};

}  // namespace modelcast::planner
