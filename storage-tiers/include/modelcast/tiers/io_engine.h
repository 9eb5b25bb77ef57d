// Reads from SSD with io_uring: each read is cut into chunks and many chunks are kept in flight
// (queue depth), O_DIRECT into the host pool, which is registered with the ring as fixed
// buffers. Where io_uring is refused (kernel too old, disabled by sysctl or seccomp) the engine
// falls back to threads calling pread, and where an O_DIRECT read is refused it retries that
// read through the page cache; each fallback is logged once and counted.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "modelcast/common/status.h"

namespace modelcast::tiers {

struct ReadOp {
  int fd = -1;           // the file, opened with O_DIRECT where the filesystem allows it
  int buffered_fd = -1;  // the same file without O_DIRECT, for retries (-1: same as fd)
  std::string path;      // for errors
  uint64_t offset = 0;   // with O_DIRECT: offset, length and dst 4 KiB-aligned
  uint64_t length = 0;
  uint8_t* dst = nullptr;
  std::function<void(Status)> done;  // runs on an engine thread; must not block for long
};

struct IoEngineOptions {
  unsigned queue_depth = 32;          // chunks in flight
  uint64_t chunk_bytes = 1ull << 20;  // the unit of one read request
  bool io_uring = true;               // false: pread threads (what the fallback uses)
  double read_rate = 0;               // emulation: bytes/s at most (0: as fast as the device)
};

struct IoCounters {
  std::atomic<uint64_t> bytes{0};
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> uring_refused{0};   // 1 when the engine runs on pread threads
  std::atomic<uint64_t> fixed_refused{0};   // 1 when registering the buffers failed
  std::atomic<uint64_t> direct_refused{0};  // reads retried through the page cache
};

class IoEngine {
 public:
  // `fixed`: memory that reads land in, registered with the ring when possible (reads may
  // also land elsewhere, unregistered).
  static Result<std::unique_ptr<IoEngine>> Create(const IoEngineOptions& options, std::span<uint8_t> fixed);
  ~IoEngine();  // finishes the reads in flight; reads not yet started end with Cancelled
  IoEngine(const IoEngine&) = delete;
  IoEngine& operator=(const IoEngine&) = delete;

  void Submit(std::vector<ReadOp> ops);
  const IoCounters& counters() const { return counters_; }

 private:
  struct Active;
  struct Chunk;
  explicit IoEngine(const IoEngineOptions& options) : options_(options) {}
  void RunRing();
  void RunPread();
  bool PopOps(std::vector<ReadOp>* out, bool block);
  Status ReadBuffered(const ReadOp& op, uint64_t offset, uint8_t* dst, uint64_t length, bool direct_refused);
  // With read_rate: seconds until `bytes` more may be issued; 0 means now, and counts them.
  double PaceRead(uint64_t bytes);

  IoEngineOptions options_;
  IoCounters counters_;
  void* ring_ = nullptr;  // struct io_uring*, kept out of this header
  std::span<uint8_t> fixed_;
  uint64_t fixed_piece_ = 0;  // registered in pieces of this many bytes (0: not registered)
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<ReadOp> queue_;
  bool stop_ = false;
  std::mutex pace_mu_;
  double next_read_ = 0;  // steady seconds before which no read is issued (read_rate)
  std::vector<std::thread> threads_;
};

}  // namespace modelcast::tiers
