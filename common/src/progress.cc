#include "modelcast/common/progress.h"

#include <unistd.h>

#include <cstdio>

#include "modelcast/common/units.h"

namespace modelcast {

ProgressBar::ProgressBar(std::string label, uint64_t total_bytes)
    : ProgressBar(std::move(label), total_bytes, ::isatty(STDOUT_FILENO) == 1) {}

ProgressBar::ProgressBar(std::string label, uint64_t total_bytes, bool enabled)
    : label_(std::move(label)),
      total_(total_bytes),
      enabled_(enabled),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

ProgressBar::~ProgressBar() { Finish(); }

void ProgressBar::Add(uint64_t bytes) {
  done_.fetch_add(bytes, std::memory_order_relaxed);
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  std::unique_lock lock(mu_, std::try_to_lock);
  if (!lock.owns_lock() || finished_ || now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  Draw(false);
}

void ProgressBar::Finish() {
  if (!enabled_) return;
  std::lock_guard lock(mu_);
  if (finished_) return;
  finished_ = true;
  Draw(true);
}

void ProgressBar::Draw(bool final) {
  const uint64_t done = done_.load(std::memory_order_relaxed);
  const double frac = total_ == 0 ? 1.0 : std::min(1.0, static_cast<double>(done) / static_cast<double>(total_));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar(filled, '#');
  bar.resize(kWidth, '.');
  std::fprintf(stdout, "\r%s [%s] %3.0f%% %s / %s  %s\x1b[K%s", label_.c_str(), bar.c_str(), frac * 100,
               FormatBytes(done).c_str(), FormatBytes(total_).c_str(),
               secs > 0 ? FormatRate(static_cast<double>(done) / secs).c_str() : "", final ? "\n" : "");
  std::fflush(stdout);
}

}  // namespace modelcast
