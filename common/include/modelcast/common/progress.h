// A progress bar for long work (prepare, verify) that draws only when stdout is a terminal.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace modelcast {

class ProgressBar {
 public:
  // `enabled` defaults to whether stdout is a terminal.
  ProgressBar(std::string label, uint64_t total_bytes);
  ProgressBar(std::string label, uint64_t total_bytes, bool enabled);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Thread-safe; redraws at most ten times a second.
  void Add(uint64_t bytes);
  // Draws the final state and ends the line (also done by the destructor).
  void Finish();
  bool enabled() const { return enabled_; }

 private:
  void Draw(bool final);

  std::string label_;
  uint64_t total_;
  bool enabled_;
  bool finished_ = false;
  std::atomic<uint64_t> done_{0};
  std::mutex mu_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace modelcast
