#include "modelcast/tiers/store.h"

#include <algorithm>
#include <thread>

#include <glog/logging.h>

#include "modelcast/common/checksum.h"
#include "store_impl.h"

namespace modelcast::tiers {

std::string BlockName(const std::string& model, uint32_t block) {
  return "block " + std::to_string(block) + " of model '" + model + "'";
}

Result<StoreOptions> StoreOptions::FromConfig(const ConfigNode& node) {
  MC_RETURN_IF_ERROR(node.CheckKeys({"ssd_dir", "ssd_capacity", "host_capacity", "gpu_capacity", "gpu_device",
                                     "keep_alive", "queue_depth", "io_chunk", "io_uring", "copy_streams",
                                     "ssd_read_rate"}));
  StoreOptions o;
  MC_ASSIGN_OR_RETURN(std::string dir, node.GetString("ssd_dir"));
  o.ssd_dir = dir;
  MC_ASSIGN_OR_RETURN(o.ssd_capacity, node.GetBytes("ssd_capacity"));
  MC_ASSIGN_OR_RETURN(o.host_capacity, node.GetBytes("host_capacity"));
  MC_ASSIGN_OR_RETURN(o.gpu_capacity, node.GetBytes("gpu_capacity", 0));
  MC_ASSIGN_OR_RETURN(int64_t device, node.GetInt("gpu_device", 0));
  MC_ASSIGN_OR_RETURN(o.keep_alive, node.GetDuration("keep_alive", 300));
  MC_ASSIGN_OR_RETURN(int64_t qd, node.GetInt("queue_depth", 32));
  MC_ASSIGN_OR_RETURN(o.io_chunk, node.GetBytes("io_chunk", 1ull << 20));
  MC_ASSIGN_OR_RETURN(o.io_uring, node.GetBool("io_uring", true));
  MC_ASSIGN_OR_RETURN(int64_t streams, node.GetInt("copy_streams", 4));
  if (node.Has("ssd_read_rate")) {
    MC_ASSIGN_OR_RETURN(ConfigNode rate, node.Child("ssd_read_rate"));
    MC_ASSIGN_OR_RETURN(o.ssd_read_rate, rate.AsByteRate());
    if (!(o.ssd_read_rate > 0)) return rate.Error("must be more than 0 bytes/s");
  }
  auto check = [&](bool ok, std::string_view key, std::string_view what) -> Status {
    if (ok) return Status::Ok();
    MC_ASSIGN_OR_RETURN(ConfigNode child, node.Child(key));
    return child.Error(what);
  };
  MC_RETURN_IF_ERROR(check(o.ssd_capacity > 0, "ssd_capacity", "must be more than 0 bytes"));
  MC_RETURN_IF_ERROR(check(o.host_capacity > 0, "host_capacity", "must be more than 0 bytes"));
  if (node.Has("gpu_device")) MC_RETURN_IF_ERROR(check(device >= 0, "gpu_device", "must be 0 or more"));
  if (node.Has("keep_alive")) MC_RETURN_IF_ERROR(check(o.keep_alive >= 0, "keep_alive", "must not be negative"));
  if (node.Has("queue_depth")) MC_RETURN_IF_ERROR(check(qd >= 1 && qd <= 4096, "queue_depth", "must be 1 to 4096"));
  if (node.Has("io_chunk")) {
    MC_RETURN_IF_ERROR(
        check(o.io_chunk > 0 && o.io_chunk % 4096 == 0, "io_chunk", "must be a positive multiple of 4KiB"));
  }
  if (node.Has("copy_streams"))
    MC_RETURN_IF_ERROR(check(streams >= 1 && streams <= 64, "copy_streams", "must be 1 to 64"));
  o.gpu_device = static_cast<int>(device);
  o.queue_depth = static_cast<unsigned>(qd);
  o.copy_streams = static_cast<int>(streams);
  return o;
}

const ModelHoldings* Inventory::Find(const std::string& model) const {
  for (const auto& m : models) {
    if (m.model == model) return &m;
  }
  return nullptr;
}

const TierUsage* Inventory::Usage(Tier tier) const {
  for (const auto& t : tiers) {
    if (t.tier == tier) return &t;
  }
  return nullptr;
}

// ---- Lease and Request ----

Lease::~Lease() { Release(); }
Lease::Lease(Lease&& other) noexcept { *this = std::move(other); }
Lease& Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    Release();
    store_ = std::exchange(other.store_, nullptr);
    model_ = std::move(other.model_);
    block_ = other.block_;
    tier_ = other.tier_;
    data_ = other.data_;
    size_ = other.size_;
    pool_offset_ = other.pool_offset_;
  }
  return *this;
}
void Lease::Release() {
  if (store_ != nullptr) std::exchange(store_, nullptr)->ReleaseLease(model_, block_, tier_);
}

Status Request::Wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return blocks_left_ == 0; })) {
    return DeadlineExceeded("tier move not done after " + std::to_string(timeout.count()) + " ms (" +
                            std::to_string(slices_done_.load()) + " of " + std::to_string(slices_total_) + " slices)");
  }
  return status_;
}
bool Request::done() const {
  std::lock_guard lock(mu_);
  return blocks_left_ == 0;
}
void Request::SliceDone(const SliceEvent& event) {
  slices_done_++;
  if (on_slice) on_slice(event);
}
void Request::Fail(const Status& status) {
  std::lock_guard lock(mu_);
  if (status_.ok()) status_ = status;
}
void Request::BlockFinished() {
  std::lock_guard lock(mu_);
  if (--blocks_left_ == 0) cv_.notify_all();
}

// ---- Opening and closing ----

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<Store>> Store::Open(const StoreOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->opt = options;
  if (!impl->opt.clock) {
    impl->opt.clock = [] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    };
  }
  if (options.ssd_dir.empty()) return InvalidArgument("store: ssd_dir is not set");
  if (options.host_capacity == 0) return InvalidArgument("store: host_capacity must be more than 0 bytes");
  if (options.keep_alive < 0) return InvalidArgument("store: keep_alive must not be negative");

  std::string why;
  const auto devices = gpu::Probe(&why);
  const bool gpu_present = std::any_of(devices.begin(), devices.end(),
                                       [&](const gpu::DeviceInfo& d) { return d.index == options.gpu_device; });
  if (!gpu_present) {
    LOG(INFO) << "store: no GPU tier (" << (devices.empty() ? why : "no device " + std::to_string(options.gpu_device))
              << "); host memory is not pinned";
  }

  SsdTier::OpenReport report;
  MC_ASSIGN_OR_RETURN(impl->ssd, SsdTier::Open(options.ssd_dir, options.ssd_capacity, &report));
  MC_ASSIGN_OR_RETURN(impl->host, HostPool::Create(options.host_capacity, gpu_present, options.populate_host));
  impl->host_alloc = std::make_unique<RangeAllocator>(impl->host->capacity());
  if (gpu_present && options.gpu_capacity > 0) {
    MC_ASSIGN_OR_RETURN(impl->gpu_mem, gpu::DeviceMemory::Allocate(options.gpu_device, options.gpu_capacity));
    impl->gpu_alloc = std::make_unique<RangeAllocator>(options.gpu_capacity);
    MC_ASSIGN_OR_RETURN(impl->copier, gpu::CopyEngine::Create(options.gpu_device, options.copy_streams));
  }
  IoEngineOptions io;
  io.queue_depth = options.queue_depth;
  io.chunk_bytes = options.io_chunk;
  io.read_rate = options.ssd_read_rate;
  io.io_uring = options.io_uring;
  MC_ASSIGN_OR_RETURN(impl->io, IoEngine::Create(io, impl->host->span()));
  unsigned workers = options.workers;
  if (workers == 0) workers = std::clamp(std::thread::hardware_concurrency(), 1u, 4u);
  impl->workers = std::make_unique<TaskPool>(workers);
  impl->writer = std::make_unique<TaskPool>(1);

  for (auto& [name, found] : report.models) {
    ModelState ms;
    ms.manifest = found.manifest;
    ms.keep_alive = options.keep_alive;
    ms.blocks.resize(found.manifest->blocks.size());
    ms.ssd_committed = true;
    for (uint32_t b = 0; b < ms.blocks.size(); ++b) {
      ms.blocks[b].on_ssd = found.blocks[b];
      for (Tier t : {Tier::kHost, Tier::kGpu})
        ms.blocks[b].copy[int(t)].slices.assign(found.manifest->blocks[b].num_slices, false);
    }
    impl->models.emplace(name, std::move(ms));
  }
  LOG(INFO) << "store: " << impl->models.size() << " model(s) on SSD in " << options.ssd_dir << " ("
            << report.blocks_verified << " block(s) re-verified, " << report.leftovers_removed
            << " leftover(s) of interrupted writes removed); host pool " << impl->host->capacity() << " bytes"
            << (impl->host->pinned() ? " (pinned)" : "") << "; GPU arena "
            << (impl->gpu_mem ? std::to_string(options.gpu_capacity) + " bytes" : std::string("none"));
  Impl* raw = impl.get();
  std::unique_ptr<Store> store(new Store(std::move(impl)));
  if (options.maintain_interval > 0) {
    raw->maintainer = std::thread([s = store.get(), raw] {
      std::unique_lock lock(raw->maintain_mu);
      while (!raw->maintain_cv.wait_for(lock, std::chrono::duration<double>(raw->opt.maintain_interval),
                                        [&] { return raw->stopping; })) {
        lock.unlock();
        s->Maintain();
        lock.lock();
      }
    });
  }
  return store;
}

Store::~Store() {
  {
    std::lock_guard lock(impl_->maintain_mu);
    impl_->stopping = true;
  }
  impl_->maintain_cv.notify_all();
  if (impl_->maintainer.joinable()) impl_->maintainer.join();
  // Order matters: reads complete into the workers, workers queue GPU copies and writes.
  impl_->io.reset();
  impl_->workers.reset();
  impl_->copier.reset();
  impl_->writer.reset();
}

bool Store::has_gpu() const { return impl_->HasGpu(); }
int Store::gpu_device() const { return impl_->opt.gpu_device; }
uint8_t* Store::host_pool_base() const { return impl_->host->base(); }
uint64_t Store::host_pool_size() const { return impl_->host->capacity(); }

StoreCounters Store::counters() const {
  std::lock_guard lock(impl_->mu);
  StoreCounters c = impl_->counters;
  c.uring_refused = impl_->io->counters().uring_refused.load();
  c.direct_refused = impl_->io->counters().direct_refused.load() + impl_->ssd->direct_refused();
  return c;
}

std::shared_ptr<const model::Manifest> Store::FindModel(const std::string& model) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->models.find(model);
  return it == impl_->models.end() ? nullptr : it->second.manifest;
}

Inventory Store::GetInventory() const {
  Inventory inv;
  std::lock_guard lock(impl_->mu);
  inv.tiers.push_back({Tier::kSsd, impl_->ssd->capacity(), impl_->ssd->used(), 0});
  inv.tiers.push_back(
      {Tier::kHost, impl_->host_alloc->capacity(), impl_->host_alloc->used(), impl_->PinnedBytesLocked(Tier::kHost)});
  if (impl_->HasGpu()) {
    inv.tiers.push_back(
        {Tier::kGpu, impl_->gpu_alloc->capacity(), impl_->gpu_alloc->used(), impl_->PinnedBytesLocked(Tier::kGpu)});
  }
  for (const auto& [name, ms] : impl_->models) {
    ModelHoldings h;
    h.model = name;
    h.bytes = ms.manifest->TotalBytes();
    h.num_slices = static_cast<uint32_t>(ms.manifest->slices.size());
    h.ssd_complete = ms.ssd_committed;
    if (!ms.write_error.ok() && !ms.ssd_committed) h.ssd_error = ms.write_error.message();
    for (uint32_t b = 0; b < ms.blocks.size(); ++b) {
      const auto& be = ms.manifest->blocks[b];
      const auto& bs = ms.blocks[b];
      for (uint32_t i = 0; i < be.num_slices; ++i) {
        if (bs.on_ssd) h.slices[int(Tier::kSsd)].push_back(be.first_slice + i);
        for (Tier t : {Tier::kHost, Tier::kGpu}) {
          const Copy& c = bs.copy[int(t)];
          if (c.allocated && c.slices[i]) h.slices[int(t)].push_back(be.first_slice + i);
        }
      }
    }
    inv.models.push_back(std::move(h));
  }
  return inv;
}

// ---- Models ----

Result<ModelState*> Store::Impl::FindModel(const std::string& model) {
  auto it = models.find(model);
  if (it == models.end()) return NotFound("the store has no model '" + model + "'");
  return &it->second;
}

Result<BlockState*> Store::Impl::FindBlock(const std::string& model, uint32_t block) {
  MC_ASSIGN_OR_RETURN(ModelState * ms, FindModel(model));
  if (block >= ms->blocks.size()) {
    return OutOfRange("model '" + model + "' has no block " + std::to_string(block) + " (it has " +
                      std::to_string(ms->blocks.size()) + ")");
  }
  return &ms->blocks[block];
}

Status Store::PutTextFiles(const std::string& model, std::map<std::string, std::string> files) {
  std::shared_ptr<const model::Manifest> manifest;
  {
    std::lock_guard lock(impl_->mu);
    auto it = impl_->models.find(model);
    if (it == impl_->models.end()) return NotFound("model '" + model + "' is not in the store");
    manifest = it->second.manifest;
  }
  for (const auto& [name, bytes] : files) {
    auto e = std::find_if(manifest->text_files.begin(), manifest->text_files.end(),
                          [&](const model::TextFileEntry& f) { return f.name == name; });
    if (e == manifest->text_files.end()) {
      return InvalidArgument("model '" + model + "': its manifest lists no file '" + name + "'");
    }
    if (bytes.size() != e->bytes || Xxh3(bytes.data(), bytes.size()) != e->xxh3) {
      return Corruption("model '" + model + "': " + name + " is not the file its manifest lists (" +
                        std::to_string(bytes.size()) + " bytes, the manifest says " + std::to_string(e->bytes) +
                        ", or another checksum)");
    }
  }
  for (const auto& f : manifest->text_files) {
    if (!files.count(f.name)) return InvalidArgument("model '" + model + "': " + f.name + " is missing");
  }
  auto shared = std::make_shared<const std::map<std::string, std::string>>(std::move(files));
  bool committed = false;
  {
    std::lock_guard lock(impl_->mu);
    auto it = impl_->models.find(model);
    if (it == impl_->models.end() || it->second.manifest != manifest) {
      return FailedPrecondition("model '" + model + "' was replaced while its files were checked");
    }
    it->second.text_files = shared;
    committed = it->second.ssd_committed;
  }
  // Already on SSD (committed before the files came, or an earlier copy): written beside it now.
  if (committed) return impl_->ssd->WriteTextFiles(model, *shared);
  return Status::Ok();
}

Status Store::AddModel(const model::Manifest& manifest, bool replace) {
  MC_RETURN_IF_ERROR(manifest.Validate("model '" + manifest.name + "'"));
  if (manifest.name.empty() || manifest.name[0] == '.' || manifest.name.find('/') != std::string::npos) {
    return InvalidArgument("model name '" + manifest.name + "' cannot name a directory in the SSD tier");
  }
  auto shared = std::make_shared<const model::Manifest>(manifest);
  std::lock_guard lock(impl_->mu);
  auto it = impl_->models.find(manifest.name);
  if (it != impl_->models.end()) {
    if (it->second.manifest->Serialize() == shared->Serialize()) return Status::Ok();
    if (!replace) {
      return AlreadyExists("model '" + manifest.name + "' is already in the store with a different manifest " +
                           "(another version); replace it explicitly");
    }
    for (uint32_t b = 0; b < it->second.blocks.size(); ++b) {
      for (Tier t : {Tier::kHost, Tier::kGpu}) {
        const Copy& c = it->second.blocks[b].copy[int(t)];
        if (c.pins > 0 || c.busy > 0) {
          return FailedPrecondition("cannot replace model '" + manifest.name + "': " + BlockName(manifest.name, b) +
                                    " is in use in " + std::string(TierName(t)));
        }
      }
      if (it->second.blocks[b].write_queued) {
        return FailedPrecondition("cannot replace model '" + manifest.name + "': a write-behind is in progress");
      }
    }
    for (uint32_t b = 0; b < it->second.blocks.size(); ++b) {
      for (Tier t : {Tier::kHost, Tier::kGpu}) impl_->FreeLocked(t, it->second, b);
    }
    impl_->models.erase(it);
  }
  ModelState ms;
  ms.manifest = shared;
  ms.keep_alive = impl_->opt.keep_alive;
  ms.blocks.resize(shared->blocks.size());
  for (uint32_t b = 0; b < ms.blocks.size(); ++b) {
    for (Tier t : {Tier::kHost, Tier::kGpu})
      ms.blocks[b].copy[int(t)].slices.assign(shared->blocks[b].num_slices, false);
  }
  impl_->models.emplace(manifest.name, std::move(ms));
  return Status::Ok();
}

void Store::SetKeepAlive(const std::string& model, double seconds) {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->models.find(model);
  if (it != impl_->models.end()) it->second.keep_alive = std::max(0.0, seconds);
}

Status Store::RemoveModel(const std::string& model) {
  std::lock_guard lock(impl_->mu);
  MC_ASSIGN_OR_RETURN(ModelState * ms, impl_->FindModel(model));
  for (uint32_t b = 0; b < ms->blocks.size(); ++b) {
    for (Tier t : {Tier::kHost, Tier::kGpu}) {
      const Copy& c = ms->blocks[b].copy[int(t)];
      if (c.pins > 0 || c.busy > 0 || ms->blocks[b].write_queued) {
        return FailedPrecondition("cannot remove model '" + model + "': " + BlockName(model, b) + " is in use");
      }
    }
  }
  for (uint32_t b = 0; b < ms->blocks.size(); ++b) {
    for (Tier t : {Tier::kHost, Tier::kGpu}) impl_->FreeLocked(t, *ms, b);
  }
  bool on_ssd = false;
  for (const auto& b : ms->blocks) on_ssd |= b.on_ssd;
  impl_->models.erase(model);
  if (on_ssd) return impl_->ssd->Remove(model);
  return Status::Ok();
}

// ---- Leases ----

Result<Lease> Store::Acquire(const std::string& model, uint32_t block, Tier tier) {
  if (tier != Tier::kHost && tier != Tier::kGpu)
    return InvalidArgument("blocks are acquired in host or GPU memory, not in " + std::string(TierName(tier)));
  std::lock_guard lock(impl_->mu);
  MC_ASSIGN_OR_RETURN(BlockState * bs, impl_->FindBlock(model, block));
  Copy& c = bs->copy[int(tier)];
  if (!c.complete()) {
    return FailedPrecondition(BlockName(model, block) + " is not resident in " + std::string(TierName(tier)) + " (" +
                              std::to_string(c.allocated ? c.count : 0) + " of " + std::to_string(c.slices.size()) +
                              " slices)");
  }
  c.pins++;
  bs->last_use = impl_->Now();
  return MakeLease(model, block, tier, c.offset, impl_->models[model].manifest->blocks[block].file_bytes);
}

Lease Store::MakeLease(const std::string& model, uint32_t block, Tier tier, uint64_t offset, uint64_t size) {
  Lease lease;
  lease.store_ = this;
  lease.model_ = model;
  lease.block_ = block;
  lease.tier_ = tier;
  lease.pool_offset_ = offset;
  lease.data_ = impl_->Address(tier, offset);
  lease.size_ = size;
  return lease;
}

void Store::ReleaseLease(const std::string& model, uint32_t block, Tier tier) {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->models.find(model);
  if (it == impl_->models.end() || block >= it->second.blocks.size()) return;
  Copy& c = it->second.blocks[block].copy[int(tier)];
  CHECK_GT(c.pins, 0) << "lease released twice for " << BlockName(model, block);
  c.pins--;
  it->second.blocks[block].last_use = impl_->Now();
}

// ---- Keep-alive ----

void Store::Maintain() {
  std::unique_lock lock(impl_->mu);
  if (!impl_->HasGpu()) return;
  const double now = impl_->Now();
  std::vector<std::pair<std::string, uint32_t>> expired;
  for (auto& [name, ms] : impl_->models) {
    for (uint32_t b = 0; b < ms.blocks.size(); ++b) {
      const Copy& g = ms.blocks[b].copy[int(Tier::kGpu)];
      if (g.allocated && g.pins == 0 && g.busy == 0 && ms.blocks[b].last_use + ms.keep_alive < now) {
        expired.emplace_back(name, b);
      }
    }
  }
  for (const auto& [name, b] : expired) {
    Status st = impl_->DemoteGpuLocked(name, b, lock);
    if (!st.ok()) LOG(WARNING) << "keep-alive: " << st.message();
  }
}

}  // namespace modelcast::tiers
