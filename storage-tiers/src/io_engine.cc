#include "modelcast/tiers/io_engine.h"

#include <liburing.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstring>

#include <glog/logging.h>

namespace modelcast::tiers {

namespace {
constexpr uint64_t kFixedPiece = 1ull << 30;  // the kernel's limit for one registered buffer

std::string ErrnoText(int err) { return std::string(strerror(err)); }
}  // namespace

// One submitted ReadOp while its chunks are in flight.
struct IoEngine::Active {
  ReadOp op;
  uint64_t next = 0;      // bytes of the op handed to chunks so far
  unsigned inflight = 0;  // chunks in the ring
  Status status;
};

struct IoEngine::Chunk {
  Active* active;
  uint64_t pos;  // within the op
  uint64_t len;
};

Result<std::unique_ptr<IoEngine>> IoEngine::Create(const IoEngineOptions& options, std::span<uint8_t> fixed) {
  if (options.queue_depth == 0) return InvalidArgument("io engine: queue depth must be at least 1");
  if (!(options.read_rate >= 0)) return InvalidArgument("io engine: read rate must not be negative");
  if (options.chunk_bytes == 0 || options.chunk_bytes % 4096 != 0) {
    return InvalidArgument("io engine: chunk size must be a positive multiple of 4096, got " +
                           std::to_string(options.chunk_bytes));
  }
  std::unique_ptr<IoEngine> engine(new IoEngine(options));
  if (options.io_uring) {
    auto* ring = new io_uring;
    const int rc = io_uring_queue_init(std::max(8u, options.queue_depth), ring, 0);
    if (rc < 0) {
      delete ring;
      LOG(WARNING) << "io_uring refused (" << ErrnoText(-rc) << "): SSD reads fall back to pread threads";
      engine->counters_.uring_refused = 1;
    } else {
      engine->ring_ = ring;
    }
  }
  if (engine->ring_ != nullptr && !fixed.empty()) {
    std::vector<iovec> iovs;
    for (uint64_t off = 0; off < fixed.size(); off += kFixedPiece) {
      iovs.push_back({fixed.data() + off, std::min<uint64_t>(kFixedPiece, fixed.size() - off)});
    }
    const int rc = io_uring_register_buffers(static_cast<io_uring*>(engine->ring_), iovs.data(), iovs.size());
    if (rc < 0) {
      LOG(WARNING) << "io_uring: registering the host pool as fixed buffers failed (" << ErrnoText(-rc)
                   << ", RLIMIT_MEMLOCK?): reads use unregistered buffers";
      engine->counters_.fixed_refused = 1;
    } else {
      engine->fixed_ = fixed;
      engine->fixed_piece_ = kFixedPiece;
    }
  }
  if (engine->ring_ != nullptr) {
    engine->threads_.emplace_back([e = engine.get()] { e->RunRing(); });
  } else {
    const unsigned n = std::clamp(options.queue_depth, 1u, 8u);
    for (unsigned i = 0; i < n; ++i) engine->threads_.emplace_back([e = engine.get()] { e->RunPread(); });
  }
  return engine;
}

IoEngine::~IoEngine() {
  std::deque<ReadOp> dropped;
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    dropped.swap(queue_);
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  for (auto& op : dropped) op.done(Cancelled("read of " + op.path + " cancelled: the store is closing"));
  if (ring_ != nullptr) {
    auto* ring = static_cast<io_uring*>(ring_);
    io_uring_queue_exit(ring);
    delete ring;
  }
}

void IoEngine::Submit(std::vector<ReadOp> ops) {
  {
    std::lock_guard lock(mu_);
    for (auto& op : ops) queue_.push_back(std::move(op));
  }
  cv_.notify_all();
}

bool IoEngine::PopOps(std::vector<ReadOp>* out, bool block) {
  std::unique_lock lock(mu_);
  if (block) cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
  if (stop_) return false;
  while (!queue_.empty()) {
    out->push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  return true;
}

Status IoEngine::ReadBuffered(const ReadOp& op, uint64_t offset, uint8_t* dst, uint64_t length, bool direct_refused) {
  int fd = op.fd;
  if (direct_refused) {
    if (counters_.direct_refused.fetch_add(1) == 0) {
      LOG(WARNING) << "O_DIRECT read of " << op.path << " refused: retrying through the page cache (logged once)";
    }
    if (op.buffered_fd >= 0) fd = op.buffered_fd;
  }
  uint64_t done = 0;
  while (done < length) {
    const ssize_t n = ::pread(fd, dst + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL && !direct_refused)
      return ReadBuffered(op, offset + done, dst + done, length - done, true);
    if (n < 0) return IOError("read " + op.path + " at offset " + std::to_string(offset + done), errno);
    if (n == 0) {
      return OutOfRange(op.path + ": file ends before offset " + std::to_string(offset + length) + " (read " +
                        std::to_string(offset + done) + ")");
    }
    done += static_cast<uint64_t>(n);
  }
  counters_.bytes += length;
  return Status::Ok();
}

double IoEngine::PaceRead(uint64_t bytes) {
  if (options_.read_rate <= 0) return 0;
  const double now = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  std::lock_guard lock(pace_mu_);
  if (next_read_ > now) return next_read_ - now;
  // No credit for idle time: an emulated device is never faster than its rate.
  next_read_ = now + static_cast<double>(bytes) / options_.read_rate;
  return 0;
}

void IoEngine::RunPread() {
  for (;;) {
    ReadOp op;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      op = std::move(queue_.front());
      queue_.pop_front();
    }
    counters_.requests++;
    for (double wait; (wait = PaceRead(op.length)) > 0;) std::this_thread::sleep_for(std::chrono::duration<double>(wait));
    Status st = ReadBuffered(op, op.offset, op.dst, op.length, false);
    op.done(std::move(st));
  }
}

void IoEngine::RunRing() {
  auto* ring = static_cast<io_uring*>(ring_);
  std::deque<std::unique_ptr<Active>> waiting;  // ops with chunks not yet in the ring
  std::vector<std::unique_ptr<Chunk>> retry;    // short reads: the rest goes in again
  unsigned inflight = 0;
  auto finish_if_done = [&](Active* a) {
    if (a->inflight == 0 && (a->next == a->op.length || !a->status.ok())) {
      ReadOp op = std::move(a->op);
      Status st = std::move(a->status);
      delete a;
      op.done(std::move(st));
      return true;
    }
    return false;
  };
  auto queue_chunk = [&](Chunk* c) {
    io_uring_sqe* sqe = io_uring_get_sqe(ring);
    CHECK(sqe != nullptr) << "io_uring: no free submission entry with " << inflight << " in flight";
    uint8_t* dst = c->active->op.dst + c->pos;
    const uint64_t off = c->active->op.offset + c->pos;
    if (fixed_piece_ != 0 && dst >= fixed_.data() && dst + c->len <= fixed_.data() + fixed_.size()) {
      const uint64_t rel = static_cast<uint64_t>(dst - fixed_.data());
      io_uring_prep_read_fixed(sqe, c->active->op.fd, dst, static_cast<unsigned>(c->len), off,
                               static_cast<int>(rel / fixed_piece_));
    } else {
      io_uring_prep_read(sqe, c->active->op.fd, dst, static_cast<unsigned>(c->len), off);
    }
    io_uring_sqe_set_data(sqe, c);
    ++inflight;
    ++c->active->inflight;
  };
  for (;;) {
    std::vector<ReadOp> fresh;
    if (!PopOps(&fresh, inflight == 0 && waiting.empty() && retry.empty())) {
      if (inflight == 0 && waiting.empty() && retry.empty()) break;
    }
    for (auto& op : fresh) {
      counters_.requests++;
      auto a = std::make_unique<Active>();
      a->op = std::move(op);
      waiting.push_back(std::move(a));
    }
    // Fill the ring: short-read remainders first, then the ops in arrival order.
    while (inflight < options_.queue_depth && !retry.empty()) {
      queue_chunk(retry.back().release());
      retry.pop_back();
    }
    double paced = 0;  // seconds until the read rate lets the next chunk go
    while (inflight < options_.queue_depth && !waiting.empty()) {
      Active* a = waiting.front().get();
      if (a->next == a->op.length || !a->status.ok()) {
        waiting.front().release();
        waiting.pop_front();
        finish_if_done(a);
        continue;
      }
      uint64_t len = std::min(options_.chunk_bytes, a->op.length - a->next);
      uint8_t* dst = a->op.dst + a->next;
      if (fixed_piece_ != 0 && dst >= fixed_.data() && dst < fixed_.data() + fixed_.size()) {
        // A fixed read must stay inside one registered piece.
        const uint64_t rel = static_cast<uint64_t>(dst - fixed_.data());
        len = std::min(len, (rel / fixed_piece_ + 1) * fixed_piece_ - rel);
      }
      if ((paced = PaceRead(len)) > 0) break;
      queue_chunk(new Chunk{a, a->next, len});
      a->next += len;
    }
    if (inflight == 0) {
      if (paced > 0) std::this_thread::sleep_for(std::chrono::duration<double>(std::min(paced, 0.05)));
      continue;
    }
    int rc = io_uring_submit_and_wait(ring, 1);
    if (rc < 0 && rc != -EINTR) LOG(ERROR) << "io_uring_submit_and_wait: " << ErrnoText(-rc);
    io_uring_cqe* cqe = nullptr;
    unsigned head = 0, seen = 0;
    io_uring_for_each_cqe(ring, head, cqe) {
      ++seen;
      std::unique_ptr<Chunk> c(static_cast<Chunk*>(io_uring_cqe_get_data(cqe)));
      const int res = cqe->res;
      --inflight;
      Active* a = c->active;
      --a->inflight;
      const uint64_t off = a->op.offset + c->pos;
      if (res == -EAGAIN || res == -EINTR) {
        retry.push_back(std::move(c));
      } else if (res == -EINVAL || res == -EOPNOTSUPP) {
        // O_DIRECT refused for this read (alignment the filesystem does not accept): once more
        // through the page cache, synchronously.
        Status st = ReadBuffered(a->op, off, a->op.dst + c->pos, c->len, true);
        if (!st.ok() && a->status.ok()) a->status = st;
      } else if (res < 0) {
        if (a->status.ok()) a->status = IOError("read " + a->op.path + " at offset " + std::to_string(off), -res);
      } else if (res == 0) {
        if (a->status.ok()) {
          a->status = OutOfRange(a->op.path + ": file ends before offset " + std::to_string(off + c->len));
        }
      } else {
        counters_.bytes += static_cast<uint64_t>(res);
        if (static_cast<uint64_t>(res) < c->len) {
          c->pos += static_cast<uint64_t>(res);
          c->len -= static_cast<uint64_t>(res);
          retry.push_back(std::move(c));
        }
      }
      // An op whose chunks are all handed out (or that failed) completes with its last chunk.
      if (a->inflight == 0 && (a->next == a->op.length || !a->status.ok())) {
        bool still_retrying = false;
        for (auto& r : retry) still_retrying |= r->active == a;
        if (!still_retrying) {
          waiting.erase(std::remove_if(waiting.begin(), waiting.end(),
                                       [&](std::unique_ptr<Active>& w) {
                                         if (w.get() != a) return false;
                                         w.release();
                                         return true;
                                       }),
                        waiting.end());
          finish_if_done(a);
        }
      }
    }
    io_uring_cq_advance(ring, seen);
  }
}

}  // namespace modelcast::tiers
