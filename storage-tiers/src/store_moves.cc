// Moving blocks between tiers: allocation with eviction, promotion (SSD -> host -> GPU),
// demotion, receiving from the fabric, and write-behind to SSD.
#include <algorithm>
#include <iterator>
#include <cstring>

#include <glog/logging.h>

#include "modelcast/common/checksum.h"
#include "modelcast/model/package.h"
#include "store_impl.h"

namespace modelcast::tiers {

namespace {

double Since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// One block of one Promote: the slices still to arrive in the target tier.
struct Job {
  Store::Impl* impl = nullptr;
  std::shared_ptr<Request> req;
  std::shared_ptr<const model::Manifest> manifest;
  std::string model;
  uint32_t block = 0;
  Tier to = Tier::kHost;
  std::string source;
  uint64_t host_offset = 0, gpu_offset = 0;
  bool holds_host = false;  // host copy marked busy (source of a GPU promotion)
  std::shared_ptr<BlockFiles> files;
  std::atomic<uint32_t> left{0};
  std::vector<double> started;  // per slice in the block
};

}  // namespace

bool Store::Impl::HostOnly(const BlockState& b) {
  const Copy& h = b.copy[int(Tier::kHost)];
  return h.allocated && h.count > 0 && !b.on_ssd && !b.copy[int(Tier::kGpu)].complete();
}

uint64_t Store::Impl::PinnedBytesLocked(Tier tier) const {
  uint64_t total = 0;
  const RangeAllocator* alloc = Allocator(tier);
  for (const auto& [name, ms] : models) {
    for (uint32_t b = 0; b < ms.blocks.size(); ++b) {
      const BlockState& bs = ms.blocks[b];
      const Copy& c = bs.copy[int(tier)];
      if (!c.allocated) continue;
      if (c.pins > 0 || c.busy > 0 || bs.write_queued || (tier == Tier::kHost && HostOnly(bs))) {
        total += alloc->Rounded(ms.manifest->blocks[b].file_bytes);
      }
    }
  }
  return total;
}

void Store::Impl::FreeLocked(Tier tier, ModelState& ms, uint32_t block) {
  Copy& c = ms.blocks[block].copy[int(tier)];
  if (!c.allocated) return;
  Allocator(tier)->Free(c.offset, ms.manifest->blocks[block].file_bytes);
  c.allocated = false;
  c.count = 0;
  std::fill(c.slices.begin(), c.slices.end(), false);
}

Status Store::Impl::AllocateLocked(Tier tier, const std::string& model, uint32_t block,
                                   std::unique_lock<std::mutex>& lock) {
  ModelState& ms = models.at(model);
  Copy& c = ms.blocks[block].copy[int(tier)];
  if (c.allocated) return Status::Ok();
  const auto& be = ms.manifest->blocks[block];
  RangeAllocator* alloc = Allocator(tier);
  for (;;) {
    if (auto off = alloc->Allocate(be.file_bytes)) {
      c.allocated = true;
      c.offset = *off;
      c.count = 0;
      c.slices.assign(be.num_slices, false);
      // The file's zero padding after the last slice: write-behind writes whole block files.
      if (tier == Tier::kHost) std::memset(Address(tier, c.offset) + be.bytes, 0, be.file_bytes - be.bytes);
      return Status::Ok();
    }
    if (!EvictOneLocked(tier, model, block, lock)) {
      return ResourceExhausted(
          std::string(TierName(tier)) + " tier: no room for " + BlockName(model, block) + " (" +
          std::to_string(be.file_bytes) + " bytes): capacity " + std::to_string(alloc->capacity()) + ", in use " +
          std::to_string(alloc->used()) + ", of which " + std::to_string(PinnedBytesLocked(tier)) +
          " cannot be evicted (in use, or the only copy); largest free range " + std::to_string(alloc->largest_free()));
    }
  }
}

bool Store::Impl::EvictOneLocked(Tier tier, const std::string& model, uint32_t block,
                                 std::unique_lock<std::mutex>& lock) {
  struct Candidate {
    bool fresh;  // still within its keep-alive
    double last_use;
    std::string model;
    uint32_t block;
  };
  const double now = Now();
  std::vector<Candidate> candidates;
  for (auto& [name, ms] : models) {
    for (uint32_t b = 0; b < ms.blocks.size(); ++b) {
      if (name == model && b == block) continue;
      const BlockState& bs = ms.blocks[b];
      const Copy& c = bs.copy[int(tier)];
      if (!c.allocated || c.pins > 0 || c.busy > 0 || bs.write_queued) continue;
      if (tier == Tier::kHost && HostOnly(bs)) continue;
      candidates.push_back({bs.last_use + ms.keep_alive >= now, bs.last_use, name, b});
    }
  }
  std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    return std::tie(a.fresh, a.last_use, a.model, a.block) < std::tie(b.fresh, b.last_use, b.model, b.block);
  });
  for (const auto& v : candidates) {
    ModelState& ms = models.at(v.model);
    if (tier == Tier::kGpu) {
      // Demote rather than drop: the block stays warm in host memory.
      Status st = DemoteGpuLocked(v.model, v.block, lock);
      if (!st.ok()) {
        VLOG(1) << "eviction: " << st.message();
        continue;
      }
    } else {
      FreeLocked(tier, ms, v.block);
    }
    counters.evictions[int(tier)]++;
    VLOG(1) << "evicted " << BlockName(v.model, v.block) << " from " << TierName(tier);
    return true;
  }
  return false;
}

Status Store::Impl::DemoteGpuLocked(const std::string& model, uint32_t block, std::unique_lock<std::mutex>& lock) {
  ModelState& ms = models.at(model);
  BlockState& bs = ms.blocks[block];
  Copy& g = bs.copy[int(Tier::kGpu)];
  if (!g.allocated) return Status::Ok();
  if (g.pins > 0 || g.busy > 0) return FailedPrecondition(BlockName(model, block) + " is in use on the GPU");
  Copy& h = bs.copy[int(Tier::kHost)];
  if (!h.complete() && g.count > 0) {
    Status st = AllocateLocked(Tier::kHost, model, block, lock);
    if (st.ok()) {
      g.busy++;
      h.busy++;
      const auto& be = ms.manifest->blocks[block];
      st = gpu::CopySync(opt.gpu_device, gpu::Direction::kDeviceToHost, Address(Tier::kHost, h.offset),
                         Address(Tier::kGpu, g.offset), be.bytes);
      g.busy--;
      h.busy--;
      if (st.ok()) {
        for (size_t i = 0; i < g.slices.size(); ++i) {
          if (g.slices[i] && !h.slices[i]) {
            h.slices[i] = true;
            h.count++;
          }
        }
        counters.demotions++;
      }
    }
    if (!st.ok() && !bs.on_ssd) {
      return st.WithContext("cannot demote " + BlockName(model, block) + " to host memory, and SSD has no copy");
    }
    if (!st.ok())
      LOG(WARNING) << "dropping the GPU copy of " << BlockName(model, block) << " (SSD has it): " << st.message();
  }
  FreeLocked(Tier::kGpu, ms, block);
  return Status::Ok();
}

// ---- Promote ----

namespace {

void FinishJob(const std::shared_ptr<Job>& job) {
  {
    std::lock_guard lock(job->impl->mu);
    auto it = job->impl->models.find(job->model);
    if (it != job->impl->models.end() && it->second.manifest == job->manifest) {
      BlockState& bs = it->second.blocks[job->block];
      bs.copy[int(job->to)].busy--;
      if (job->holds_host) bs.copy[int(Tier::kHost)].busy--;
      bs.last_use = job->impl->Now();
    }
  }
  job->req->BlockFinished();
}

void SliceFailed(const std::shared_ptr<Job>& job, const Status& status) {
  job->req->Fail(status);
  if (--job->left == 0) FinishJob(job);
}

void SliceArrived(const std::shared_ptr<Job>& job, uint32_t slice) {
  const auto& se = job->manifest->slices[slice];
  const uint32_t i = slice - job->manifest->blocks[job->block].first_slice;
  {
    std::lock_guard lock(job->impl->mu);
    Copy& c = job->impl->models.at(job->model).blocks[job->block].copy[int(job->to)];
    if (!c.slices[i]) {
      c.slices[i] = true;
      c.count++;
    }
    if (job->to == Tier::kGpu) job->impl->counters.bytes_to_gpu += se.length;
  }
  SliceEvent ev{job->model, slice, job->source, se.length, job->started[i], Since(job->req->start_time())};
  job->req->SliceDone(ev);
  if (--job->left == 0) FinishJob(job);
}

// A slice is in host memory (read and verified, or already there): on to the GPU if that is the target.
void HostSliceReady(const std::shared_ptr<Job>& job, uint32_t slice) {
  if (job->to == Tier::kHost) return SliceArrived(job, slice);
  const auto& se = job->manifest->slices[slice];
  job->impl->copier->Copy(gpu::Direction::kHostToDevice, job->impl->Address(Tier::kGpu, job->gpu_offset + se.offset),
                          job->impl->Address(Tier::kHost, job->host_offset + se.offset), se.length,
                          [job, slice](Status st) {
                            if (st.ok()) {
                              SliceArrived(job, slice);
                            } else {
                              SliceFailed(job, st.WithContext("copying slice " + std::to_string(slice) + " of model '" +
                                                              job->model + "' to the GPU"));
                            }
                          });
}

void SliceRead(const std::shared_ptr<Job>& job, uint32_t slice, Status status) {
  const auto& se = job->manifest->slices[slice];
  const auto& be = job->manifest->blocks[job->block];
  if (status.ok()) {
    const uint64_t got = Xxh3(job->impl->Address(Tier::kHost, job->host_offset + se.offset), se.length);
    if (got != se.xxh3) {
      status = Corruption(
          model::DescribeSlice(*job->manifest, slice, job->files->path, model::ChecksumMismatch(se.xxh3, got)));
      std::lock_guard lock(job->impl->mu);
      job->impl->counters.corrupt_slices++;
    }
  }
  if (!status.ok()) return SliceFailed(job, status);
  {
    std::lock_guard lock(job->impl->mu);
    job->impl->counters.bytes_read_ssd += se.length;
    Copy& h = job->impl->models.at(job->model).blocks[job->block].copy[int(Tier::kHost)];
    const uint32_t i = slice - be.first_slice;
    if (!h.slices[i]) {
      h.slices[i] = true;
      h.count++;
    }
  }
  HostSliceReady(job, slice);
}

}  // namespace

Result<std::shared_ptr<Request>> Store::Promote(const std::string& model, std::vector<uint32_t> blocks, Tier to,
                                                MoveOptions options) {
  if (to != Tier::kHost && to != Tier::kGpu) {
    return InvalidArgument("promote moves blocks up to host or GPU memory, not to " + std::string(TierName(to)) +
                           " (to write to SSD, demote)");
  }
  auto req = std::make_shared<Request>();
  req->on_slice = std::move(options.on_slice);
  struct Action {
    std::shared_ptr<Job> job;
    std::vector<uint32_t> reads, ready, from_gpu;
  };
  std::vector<Action> actions;
  {
    std::unique_lock lock(impl_->mu);
    if (to == Tier::kGpu && !impl_->HasGpu()) {
      return FailedPrecondition("this node has no GPU tier (no device, or gpu_capacity 0)");
    }
    MC_ASSIGN_OR_RETURN(ModelState * ms, impl_->FindModel(model));
    const auto manifest = ms->manifest;
    if (blocks.empty()) {
      for (uint32_t b = 0; b < ms->blocks.size(); ++b) blocks.push_back(b);
    }
    for (uint32_t b : blocks) {
      if (b >= ms->blocks.size()) {
        return OutOfRange("model '" + model + "' has no block " + std::to_string(b) + " (it has " +
                          std::to_string(ms->blocks.size()) + ")");
      }
    }
    for (uint32_t b : blocks) req->slices_total_ += manifest->blocks[b].num_slices;
    req->blocks_left_ = 1;  // held until every block's work is started
    const double now = impl_->Now();
    for (uint32_t b : blocks) {
      BlockState& bs = ms->blocks[b];
      const auto& be = manifest->blocks[b];
      Copy& target = bs.copy[int(to)];
      bs.last_use = now;
      if (target.complete()) {
        req->slices_done_ += be.num_slices;
        continue;
      }
      Copy& host = bs.copy[int(Tier::kHost)];
      const bool from_gpu = to == Tier::kHost && bs.copy[int(Tier::kGpu)].complete();
      const bool host_has_all = to == Tier::kGpu && host.complete();
      if (!from_gpu && !host_has_all && !bs.on_ssd) {
        // Whatever slices host memory has (received) can still go up; the rest is nowhere.
        bool all_in_host = true;
        for (uint32_t i = 0; i < be.num_slices; ++i) {
          all_in_host &= (host.allocated && host.slices[i]) || (target.allocated && target.slices[i]);
        }
        if (!all_in_host) {
          req->Fail(NotFound(BlockName(model, b) + " is on no tier of this node that can supply it"));
          break;
        }
      }
      Status st = impl_->AllocateLocked(to, model, b, lock);
      if (st.ok() && to == Tier::kGpu) st = impl_->AllocateLocked(Tier::kHost, model, b, lock);
      if (!st.ok()) {
        req->Fail(st);
        break;
      }
      auto job = std::make_shared<Job>();
      job->impl = impl_.get();
      job->req = req;
      job->manifest = manifest;
      job->model = model;
      job->block = b;
      job->to = to;
      job->host_offset = host.offset;
      job->gpu_offset = bs.copy[int(Tier::kGpu)].offset;
      job->started.assign(be.num_slices, 0);
      job->source = from_gpu ? "gpu" : host_has_all ? "host" : "ssd";
      target.busy++;
      if (to == Tier::kGpu) {
        host.busy++;
        job->holds_host = true;
      }
      Action a;
      a.job = job;
      for (uint32_t i = 0; i < be.num_slices; ++i) {
        if (target.slices[i]) {
          req->slices_done_++;
          continue;
        }
        const uint32_t s = be.first_slice + i;
        if (from_gpu) {
          a.from_gpu.push_back(s);
        } else if (host.slices[i]) {
          a.ready.push_back(s);
        } else {
          a.reads.push_back(s);
        }
      }
      job->left = static_cast<uint32_t>(a.from_gpu.size() + a.ready.size() + a.reads.size());
      req->blocks_left_++;
      actions.push_back(std::move(a));
    }
  }
  std::vector<ReadOp> reads;  // of every block, in order
  for (auto& a : actions) {
    auto& job = a.job;
    const double t0 = Since(req->start_time());
    for (uint32_t s : a.ready) {
      job->started[s - job->manifest->blocks[job->block].first_slice] = t0;
      HostSliceReady(job, s);
    }
    for (uint32_t s : a.from_gpu) {
      const auto& se = job->manifest->slices[s];
      job->started[s - job->manifest->blocks[job->block].first_slice] = t0;
      impl_->copier->Copy(gpu::Direction::kDeviceToHost, impl_->Address(Tier::kHost, job->host_offset + se.offset),
                          impl_->Address(Tier::kGpu, job->gpu_offset + se.offset), se.length, [job, s](Status st) {
                            if (st.ok()) {
                              SliceArrived(job, s);
                            } else {
                              SliceFailed(job, st);
                            }
                          });
    }
    if (a.reads.empty()) continue;
    auto files = impl_->ssd->OpenBlock(model, job->block);
    if (!files.ok()) {
      for (size_t i = 0; i < a.reads.size(); ++i) SliceFailed(job, files.status());
      continue;
    }
    job->files = *files;
    std::vector<ReadOp> ops;
    for (uint32_t s : a.reads) {
      const auto& se = job->manifest->slices[s];
      job->started[s - job->manifest->blocks[job->block].first_slice] = Since(req->start_time());
      ReadOp op;
      op.fd = job->files->read_fd();
      op.buffered_fd = job->files->buffered.fd();
      op.path = job->files->path;
      op.offset = se.offset;
      op.length = AlignUp(se.length, 4096);  // inside the block file, which is padded to 4 KiB
      op.dst = impl_->Address(Tier::kHost, job->host_offset + se.offset);
      op.done = [job, s, workers = impl_->workers.get()](Status st) {
        workers->Post([job, s, st = std::move(st)]() mutable { SliceRead(job, s, std::move(st)); });
      };
      ops.push_back(std::move(op));
    }
    reads.insert(reads.end(), std::make_move_iterator(ops.begin()), std::make_move_iterator(ops.end()));
  }
  // The first slice is read alone, the rest once it is in: with the whole request in flight at
  // once, every read shares the device and the first slice lands only after most of the queue
  // (a cold source's first byte waits for it; bench/control_bench --cold-reps).
  if (reads.size() > 1) {
    auto rest = std::make_shared<std::vector<ReadOp>>(std::make_move_iterator(reads.begin() + 1),
                                                      std::make_move_iterator(reads.end()));
    reads.resize(1);
    reads[0].done = [done = std::move(reads[0].done), rest, io = impl_->io.get()](Status st) {
      io->Submit(std::move(*rest));  // only queues them (safe on an engine thread)
      done(std::move(st));
    };
  }
  if (!reads.empty()) impl_->io->Submit(std::move(reads));
  req->BlockFinished();  // the planning guard
  return req;
}

// ---- Demote ----

Result<std::shared_ptr<Request>> Store::Demote(const std::string& model, std::vector<uint32_t> blocks, Tier to) {
  if (to != Tier::kHost && to != Tier::kSsd)
    return InvalidArgument("demote moves blocks down to host memory or SSD, not to " + std::string(TierName(to)));
  auto req = std::make_shared<Request>();
  {
    std::lock_guard lock(impl_->mu);
    MC_ASSIGN_OR_RETURN(ModelState * ms, impl_->FindModel(model));
    if (blocks.empty()) {
      for (uint32_t b = 0; b < ms->blocks.size(); ++b) blocks.push_back(b);
    }
    for (uint32_t b : blocks) {
      if (b >= ms->blocks.size()) return OutOfRange("model '" + model + "' has no block " + std::to_string(b));
      req->slices_total_ += ms->manifest->blocks[b].num_slices;
    }
    req->blocks_left_ = 1;
  }
  impl_->workers->Post([this, model, blocks, to, req] {
    for (uint32_t b : blocks) {
      Status st = [&]() -> Status {
        std::unique_lock lock(impl_->mu);
        MC_ASSIGN_OR_RETURN(ModelState * ms, impl_->FindModel(model));
        BlockState& bs = ms->blocks[b];
        MC_RETURN_IF_ERROR(impl_->DemoteGpuLocked(model, b, lock));
        if (to == Tier::kHost) return Status::Ok();
        Copy& h = bs.copy[int(Tier::kHost)];
        if (!h.allocated) return Status::Ok();
        if (h.pins > 0 || h.busy > 0 || bs.write_queued) {
          return FailedPrecondition(BlockName(model, b) + " is in use in host memory");
        }
        if (!bs.on_ssd) {
          if (!h.complete()) {
            return FailedPrecondition(BlockName(model, b) + " is incomplete in host memory and not on SSD");
          }
          impl_->QueueWriteBehindLocked(model, b);
          impl_->writes_cv.wait(lock, [&] { return !bs.write_queued; });
          if (!bs.on_ssd) return ms->write_error.ok() ? Internal("write-behind did not finish") : ms->write_error;
        }
        if (h.pins == 0 && h.busy == 0) impl_->FreeLocked(Tier::kHost, *ms, b);
        return Status::Ok();
      }();
      if (!st.ok()) {
        req->Fail(st);
        break;
      }
      const auto manifest = FindModel(model);
      if (manifest) {
        const auto& be = manifest->blocks[b];
        for (uint32_t i = 0; i < be.num_slices; ++i) {
          req->SliceDone(SliceEvent{model, be.first_slice + i, "demote", manifest->slices[be.first_slice + i].length, 0,
                                    Since(req->start_time())});
        }
      }
    }
    req->BlockFinished();
  });
  return req;
}

// ---- Receiving and write-behind ----

Result<Lease> Store::ReserveForReceive(const std::string& model, uint32_t block) {
  std::unique_lock lock(impl_->mu);
  MC_ASSIGN_OR_RETURN(BlockState * bs, impl_->FindBlock(model, block));
  MC_RETURN_IF_ERROR(impl_->AllocateLocked(Tier::kHost, model, block, lock));
  Copy& h = bs->copy[int(Tier::kHost)];
  h.pins++;
  bs->last_use = impl_->Now();
  return MakeLease(model, block, Tier::kHost, h.offset, impl_->models.at(model).manifest->blocks[block].file_bytes);
}

Status Store::Landed(const std::string& model, uint32_t slice) {
  std::lock_guard lock(impl_->mu);
  MC_ASSIGN_OR_RETURN(ModelState * ms, impl_->FindModel(model));
  if (slice >= ms->manifest->slices.size())
    return OutOfRange("model '" + model + "' has no slice " + std::to_string(slice));
  const uint32_t b = ms->manifest->slices[slice].block;
  BlockState& bs = ms->blocks[b];
  Copy& h = bs.copy[int(Tier::kHost)];
  if (!h.allocated) {
    return FailedPrecondition("slice " + std::to_string(slice) + " of model '" + model +
                              "' landed in a block with no host buffer (ReserveForReceive first)");
  }
  const uint32_t i = slice - ms->manifest->blocks[b].first_slice;
  if (!h.slices[i]) {
    h.slices[i] = true;
    h.count++;
  }
  if (h.complete() && !bs.on_ssd && !bs.write_queued) impl_->QueueWriteBehindLocked(model, b);
  return Status::Ok();
}

Status Store::FlushWriteBehind(const std::string& model, std::chrono::milliseconds timeout) {
  std::unique_lock lock(impl_->mu);
  MC_ASSIGN_OR_RETURN(ModelState * ms, impl_->FindModel(model));
  if (!impl_->writes_cv.wait_for(lock, timeout, [&] { return ms->writes_pending == 0; })) {
    return DeadlineExceeded("write-behind of model '" + model + "' not done after " + std::to_string(timeout.count()) +
                            " ms (" + std::to_string(ms->writes_pending) + " block(s) left)");
  }
  return ms->write_error;
}

void Store::Impl::QueueWriteBehindLocked(const std::string& model, uint32_t block) {
  ModelState& ms = models.at(model);
  ms.blocks[block].write_queued = true;
  ms.writes_pending++;
  writer->Post([this, model, block] { WriteBehind(model, block); });
}

void Store::Impl::WriteBehind(const std::string& model, uint32_t block) {
  std::shared_ptr<const model::Manifest> manifest;
  std::shared_ptr<const std::map<std::string, std::string>> text_files;
  const uint8_t* data = nullptr;
  {
    std::lock_guard lock(mu);
    ModelState& ms = models.at(model);
    Copy& h = ms.blocks[block].copy[int(Tier::kHost)];
    h.busy++;
    manifest = ms.manifest;
    text_files = ms.text_files;
    data = Address(Tier::kHost, h.offset);
  }
  const uint64_t file_bytes = manifest->blocks[block].file_bytes;
  Status st = ssd->BeginWrite(manifest);
  if (st.ok()) st = ssd->WriteBlock(model, block, {data, file_bytes});
  bool commit = false;
  {
    std::lock_guard lock(mu);
    ModelState& ms = models.at(model);
    BlockState& bs = ms.blocks[block];
    bs.copy[int(Tier::kHost)].busy--;
    if (st.ok()) {
      bs.on_ssd = true;
      counters.bytes_written_ssd += file_bytes;
      commit = std::all_of(ms.blocks.begin(), ms.blocks.end(), [](const BlockState& x) { return x.on_ssd; }) &&
               !ms.ssd_committed;
    }
  }
  if (st.ok() && commit) st = ssd->Commit(model, text_files ? *text_files : std::map<std::string, std::string>());
  std::unique_lock lock(mu);
  ModelState& ms = models.at(model);
  if (st.ok()) {
    if (commit) ms.ssd_committed = true;
    // Files that came while it was being committed (PutTextFiles saw it uncommitted).
    if (commit && ms.text_files && ms.text_files != text_files) {
      auto late = ms.text_files;
      lock.unlock();
      if (Status w = ssd->WriteTextFiles(model, *late); !w.ok()) LOG(ERROR) << w.message();
      lock.lock();
    }
  } else {
    LOG(ERROR) << "write-behind of " << BlockName(model, block) << " failed: " << st.message();
    if (ms.write_error.ok()) ms.write_error = st;
    // The staged copy is dropped whole: blocks written so far are again only in host memory.
    ssd->AbortWrite(model);
    if (!ms.ssd_committed) {
      for (auto& b : ms.blocks) b.on_ssd = false;
    }
  }
  ms.blocks[block].write_queued = false;
  ms.writes_pending--;
  writes_cv.notify_all();
}

}  // namespace modelcast::tiers
