#include "serving.h"

#include <glog/logging.h>

#include <chrono>
#include <cstdio>
#include <set>

namespace modelcast::agent {
namespace {

double UnixNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

Status Stale(const char* call, int64_t asked, int64_t leads) {
  return FailedPrecondition(std::string(call) + ": asked by the coordinator of epoch " + std::to_string(asked) +
                            ", but one of epoch " + std::to_string(leads) + " leads now");
}

}  // namespace

Result<std::unique_ptr<ServingHost>> ServingHost::Create(tiers::Store& store, fabric::Transport& channel,
                                                         std::string node) {
  auto h = std::unique_ptr<ServingHost>(new ServingHost());
  h->store_ = &store;
  h->node_ = std::move(node);
  MC_ASSIGN_OR_RETURN(h->pipelines_, pipeline::PipelineNode::Create(channel));
  return h;
}

ServingHost::~ServingHost() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  landed_.notify_all();
  for (auto& w : waiters_) w.thread.join();
}

Status ServingHost::Start(const rpc::ServeRequest& asked) {
  rpc::ServeRequest req = asked;
  if (req.__isset.epoch && req.epoch <= 0) {
    return InvalidArgument("startServing: epoch must be positive, not " + std::to_string(req.epoch));
  }
  auto manifest = store_->FindModel(req.model);
  if (manifest == nullptr) return NotFound("startServing: model '" + req.model + "' is not known on " + node_);
  const int nblocks = static_cast<int>(manifest->blocks.size());
  if (req.first_block < 0 || req.first_block >= req.end_block || req.end_block > nblocks) {
    return InvalidArgument("startServing: blocks [" + std::to_string(req.first_block) + ", " +
                           std::to_string(req.end_block) + ") are not a non-empty range of model '" + req.model +
                           "''s " + std::to_string(nblocks) + " blocks");
  }
  if (req.__isset.wait_for_blocks_s && !(req.wait_for_blocks_s >= 0 && req.wait_for_blocks_s <= 3600)) {
    char secs[32];
    std::snprintf(secs, sizeof secs, "%g", req.wait_for_blocks_s);
    return InvalidArgument(std::string("startServing: wait_for_blocks_s must be 0 to 3600 seconds, not ") + secs);
  }
  const std::string key = pipeline::StageKey(req.model, req.first_block, req.end_block);
  std::vector<uint32_t> blocks;
  for (int b = req.first_block; b < req.end_block; ++b) blocks.push_back(static_cast<uint32_t>(b));
  // A tied LM head reads the embedding, which block 0 holds.
  if (req.end_block == nblocks && manifest->config.tie_word_embeddings && req.first_block > 0) blocks.push_back(0);
  if (req.__isset.next_stage && req.__isset.next_stage_address && !req.next_stage.empty()) {
    pipelines_->Warm(req.next_stage, req.next_stage_address);
  }
  const bool wait = req.__isset.wait_for_blocks_s && req.wait_for_blocks_s > 0 && !Resident(req.model, blocks);
  const std::string owner = OwnerOf(req);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!req.__isset.epoch) {
      req.__set_epoch(epoch_);  // the coordinator joined last
    } else if (req.epoch < epoch_) {
      return Stale("startServing", req.epoch, epoch_);
    } else {
      EpochLocked(req.epoch, /*joined=*/false);  // a later one asks: earlier pipelines end first
    }
    if (auto it = serving_.find(key); it != serving_.end()) {
      Serving& s = it->second;
      if (s.owners.count(owner)) {
        return AlreadyExists("startServing: " + node_ + " already serves " + key + " for " + Owners({owner}));
      }
      if (!s.built) {
        return Unavailable("startServing: " + node_ + " is still waiting for the blocks of " + key + " for " +
                           Owners(s.owners) + "; ask again once it is built");
      }
      s.owners.insert(owner);
      s.epochs[owner] = req.epoch;
      Describe(s);
      LOG(INFO) << "agent " << node_ << ": serves " << key << " for " << Owners({owner}) << " too (now for "
                << Owners(s.owners) << ")";
      return Status::Ok();
    }
    if (stopping_) return Unavailable("startServing: " + node_ + " is stopping");
    if (wait) {
      MC_RETURN_IF_ERROR(pipelines_->ExpectStage(key).WithContext("startServing"));
      Serving& s = serving_[key];
      s.instance.model = req.model;
      s.instance.node = node_;
      s.whole = req.first_block == 0 && req.end_block == nblocks;
      s.owners = {owner};
      s.epochs = {{owner, req.epoch}};
      s.generation = ++generations_;
      Describe(s);
      s.instance.since_unix = UnixNow();
      // Waiters that have ended are joined here, so that finished ones hold no thread.
      for (auto w = waiters_.begin(); w != waiters_.end();) {
        if (!*w->done) {
          ++w;
          continue;
        }
        w->thread.join();
        w = waiters_.erase(w);
      }
      auto done = std::make_shared<std::atomic<bool>>(false);
      waiters_.push_back({std::thread([this, req, key, blocks, done, generation = s.generation] {
                            Await(req, key, blocks, generation);
                            *done = true;
                          }),
                          done});
      LOG(INFO) << "agent " << node_ << ": " << key
                << (req.__isset.pipeline_id ? " in pipeline " + req.pipeline_id : std::string())
                << " is built when its blocks land (held steps wait up to " << req.wait_for_blocks_s << " s)";
      return Status::Ok();
    }
  }
  return Build(req, key, blocks, /*expected=*/0);
}

bool ServingHost::Resident(const std::string& model, const std::vector<uint32_t>& blocks) const {
  for (uint32_t b : blocks) {
    if (!store_->Acquire(model, b, Tier::kHost).ok() && !store_->Acquire(model, b, Tier::kGpu).ok()) return false;
  }
  return true;
}

void ServingHost::Landed(const std::string& model) {
  (void)model;  // every waiter looks; there are few (one per stage of a forming pipeline)
  landed_.notify_all();
}

void ServingHost::Await(rpc::ServeRequest req, std::string key, std::vector<uint32_t> blocks, uint64_t generation) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto until = t0 + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(req.wait_for_blocks_s));
  Status st;
  // On a GPU, each block goes up as soon as it has landed, not all of them after the last.
  const bool gpu = store_->has_gpu();
  std::set<uint32_t> promoting;
  std::vector<std::shared_ptr<tiers::Request>> promotions;
  while (true) {
    if (gpu) {
      for (uint32_t b : blocks) {
        if (promoting.count(b) || !store_->Acquire(req.model, b, Tier::kHost).ok()) continue;
        auto up = store_->Promote(req.model, {b}, Tier::kGpu);
        if (!up.ok()) break;  // Build promotes what is left, and names what fails
        promoting.insert(b);
        promotions.push_back(*up);
      }
    }
    if (Resident(req.model, blocks)) break;
    std::unique_lock<std::mutex> lock(mu_);
    auto it = serving_.find(key);
    if (stopping_ || it == serving_.end() || it->second.cancelled || it->second.generation != generation) {
      st = Cancelled("stopped before its blocks landed");
      break;
    }
    if (std::chrono::steady_clock::now() >= until) {
      char secs[32];
      std::snprintf(secs, sizeof secs, "%g", req.wait_for_blocks_s);
      st = DeadlineExceeded(std::string("its blocks did not land within ") + secs + " s");
      break;
    }
    // Woken by a landed slice; the bound only covers a store that filled its blocks otherwise.
    landed_.wait_for(lock, std::chrono::milliseconds(50));
  }
  const double waited_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  for (const auto& up : promotions) {
    if (Status w = up->Wait(std::chrono::minutes(10)); !w.ok() && st.ok()) st = w.WithContext("moving a block to the GPU");
  }
  if (st.ok()) {
    st = Build(req, key, blocks, generation);
    if (st.ok()) {
      LOG(INFO) << "agent " << node_ << ": " << key << ": its blocks landed " << static_cast<int>(waited_ms)
                << " ms after the stage was asked for";
      return;
    }
  }
  LOG(WARNING) << "agent " << node_ << ": " << key << ": gave up serving it: " << st.message();
  std::lock_guard<std::mutex> lock(mu_);
  auto it = serving_.find(key);
  // Stopped (or swept) already, and perhaps asked for again since: what is there is not this
  // waiter's to fail. Its own held steps were failed when it was stopped.
  if (it == serving_.end() || it->second.generation != generation) return;
  pipelines_->FailExpected(key, st.WithContext("startServing " + key));
  if (!it->second.built) serving_.erase(it);
}

Status ServingHost::Build(const rpc::ServeRequest& req, const std::string& key, const std::vector<uint32_t>& blocks,
                          uint64_t expected) {
  auto manifest = store_->FindModel(req.model);
  if (manifest == nullptr) return NotFound("startServing: model '" + req.model + "' is not known on " + node_);
  const int nblocks = static_cast<int>(manifest->blocks.size());
  const auto t0 = std::chrono::steady_clock::now();
  auto ms = [&t0] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  };
  // A node whose store has a GPU tier serves on its GPU, from the blocks in its arena; others on
  // the CPU, from the blocks in host memory.
  const bool gpu = store_->has_gpu();
  const Tier tier = gpu ? Tier::kGpu : Tier::kHost;
  MC_ASSIGN_OR_RETURN(auto load, store_->Promote(req.model, blocks, tier));
  MC_RETURN_IF_ERROR(load->Wait(std::chrono::minutes(10)).WithContext("startServing: loading " + key));
  Serving s;
  // The stage reads its weights in the blocks' buffers, as they are: it holds the leases (they
  // pin the blocks against eviction) for as long as it lives.
  auto leases = std::make_shared<std::vector<tiers::Lease>>();
  std::map<uint32_t, const uint8_t*> data;
  for (uint32_t b : blocks) {
    MC_ASSIGN_OR_RETURN(tiers::Lease lease, store_->Acquire(req.model, b, tier));
    data[b] = lease.data();
    leases->push_back(std::move(lease));
  }
  const pipeline::LayerRange layers{manifest->blocks[req.first_block].first_layer,
                                    manifest->blocks[req.end_block - 1].end_layer};
  auto lookup = pipeline::LookupInBlocks(manifest, [&data](uint32_t b) -> const uint8_t* {
    auto it = data.find(b);
    return it == data.end() ? nullptr : it->second;
  });
  const auto resident_ms = ms();
  pipeline::StageOptions options;
  options.weights_owner = leases;
  if (gpu) {
    options.device = pipeline::Device::kCuda;
    options.gpu_device = store_->gpu_device();
    options.weights_on_device = true;
  }
  auto stage = pipeline::Stage::Create(manifest->config, layers, lookup, options);
  if (!stage.ok()) return stage.status().WithContext("startServing: " + key + " on " + node_);
  MC_RETURN_IF_ERROR(pipelines_->AddStage(key, std::move(*stage)));
  s.instance.model = req.model;
  s.instance.node = node_;
  s.whole = req.first_block == 0 && req.end_block == nblocks;
  s.owners = {OwnerOf(req)};
  s.epochs = {{OwnerOf(req), req.epoch}};
  Describe(s);
  s.instance.since_unix = UnixNow();
  s.built = true;
  LOG(INFO) << "agent " << node_ << ": serving " << key << " (" << layers.ToString() << ")"
            << (req.__isset.pipeline_id ? " in pipeline " + req.pipeline_id : std::string()) << " on the "
            << (gpu ? "GPU" : "CPU") << ": blocks resident in "
            << resident_ms << " ms, stage built in " << ms() - resident_ms << " ms";
  std::lock_guard<std::mutex> lock(mu_);
  if (expected != 0) {
    auto it = serving_.find(key);
    if (it == serving_.end() || it->second.cancelled || it->second.generation != expected) {
      (void)pipelines_->RemoveStage(key);  // stopped while it was being built
      return Cancelled("stopped while it was being built");
    }
    s.generation = expected;
  } else if (!OwnerOf(req).empty() && req.epoch < epoch_) {
    (void)pipelines_->RemoveStage(key);  // its coordinator was succeeded while it was being built
    return Stale("startServing", req.epoch, epoch_);
  }
  serving_[key] = std::move(s);
  return Status::Ok();
}

Status ServingHost::Stop(const rpc::ServeRequest& req) {
  const std::string key = pipeline::StageKey(req.model, req.first_block, req.end_block);
  const std::string owner = OwnerOf(req);
  std::lock_guard<std::mutex> lock(mu_);
  if (req.__isset.epoch) {
    if (req.epoch < epoch_) return Stale("stopServing", req.epoch, epoch_);
    EpochLocked(req.epoch, /*joined=*/false);
  }
  auto it = serving_.find(key);
  if (it == serving_.end()) return NotFound("stopServing: " + node_ + " does not serve " + key);
  if (!it->second.owners.count(owner)) {
    return NotFound("stopServing: " + node_ + " serves " + key + " for " + Owners(it->second.owners) + ", not for " +
                    Owners({owner}));
  }
  if (it->second.owners.size() > 1) {
    // Another engine shares it: the stage, and the requests it holds, stay.
    it->second.owners.erase(owner);
    Describe(it->second);
    LOG(INFO) << "agent " << node_ << ": " << key << " no longer serves " << Owners({owner}) << "; it stays for "
              << Owners(it->second.owners);
    return Status::Ok();
  }
  return EndLocked(it, "stopServing " + key + " before its blocks landed");
}

Status ServingHost::EndLocked(std::map<std::string, Serving>::iterator it, const std::string& why) {
  const std::string key = it->first;
  if (!it->second.built) {
    // Still waiting for its blocks: the waiter gives up (and fails the held steps) now.
    it->second.cancelled = true;
    landed_.notify_all();
    pipelines_->FailExpected(key, Cancelled(why));
    serving_.erase(it);
    LOG(INFO) << "agent " << node_ << ": stopped waiting to serve " << key;
    return Status::Ok();
  }
  MC_RETURN_IF_ERROR(pipelines_->RemoveStage(key));
  serving_.erase(it);  // the stage goes, and with it its leases: the blocks may be evicted again
  LOG(INFO) << "agent " << node_ << ": stopped serving " << key;
  return Status::Ok();
}

void ServingHost::Joined(int64_t epoch) {
  std::lock_guard<std::mutex> lock(mu_);
  EpochLocked(epoch, /*joined=*/true);
}

void ServingHost::EpochLocked(int64_t epoch, bool joined) {
  // A coordinator that asks is later if its epoch is higher. The one the agent joined leads,
  // even with a lower epoch (its state started over): every other epoch's pipelines are dead.
  if (joined ? epoch == epoch_ : epoch <= epoch_) return;
  const int64_t before = epoch_;
  epoch_ = epoch;
  if (before == 0) return;  // the first coordinator heard from: nothing earlier can be here
  for (auto it = serving_.begin(); it != serving_.end();) {
    Serving& s = it->second;
    std::set<std::string> left;
    for (auto o = s.owners.begin(); o != s.owners.end();) {
      auto e = s.epochs.find(*o);
      if (o->empty() || (e != s.epochs.end() && (joined ? e->second == epoch : e->second >= epoch))) {
        ++o;
        continue;
      }
      left.insert(*o);
      s.epochs.erase(*o);
      o = s.owners.erase(o);
    }
    if (left.empty()) {
      ++it;
      continue;
    }
    LOG(INFO) << "agent " << node_ << ": the coordinator of epoch " << epoch << " leads: " << it->first
              << " no longer serves " << Owners(left) << " (asked for by another)"
              << (s.owners.empty() ? std::string() : "; it stays for " + Owners(s.owners));
    if (!s.owners.empty()) {
      Describe(s);
      ++it;
      continue;
    }
    auto gone = it++;
    if (Status st = EndLocked(gone, "the pipeline's coordinator no longer leads (epoch " + std::to_string(epoch) + " does)");
        !st.ok()) {
      // Nobody serves through it any more: it is not kept, whatever the node says of it.
      LOG(WARNING) << "agent " << node_ << ": stopping " << gone->first << ": " << st.message();
      serving_.erase(gone);
    }
  }
}

std::string ServingHost::OwnerOf(const rpc::ServeRequest& req) {
  return req.__isset.pipeline_id ? req.pipeline_id : "";
}

void ServingHost::Describe(Serving& s) {
  if (s.owners.count("")) {
    s.instance.state = s.whole ? rpc::InstanceState::LOCAL : rpc::InstanceState::PIPELINE;
    s.instance.__isset.pipeline_id = false;
    s.instance.pipeline_id.clear();
    return;
  }
  s.instance.state = rpc::InstanceState::PIPELINE;
  if (!s.owners.empty()) s.instance.__set_pipeline_id(*s.owners.begin());
}

std::string ServingHost::Owners(const std::set<std::string>& owners) {
  std::string out;
  for (const auto& o : owners) out += (out.empty() ? "" : ", ") + (o.empty() ? "the local instance" : "pipeline " + o);
  return out.empty() ? "nobody" : out;
}

std::vector<rpc::Instance> ServingHost::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<rpc::Instance> out;
  for (const auto& [key, s] : serving_) out.push_back(s.instance);
  return out;
}

}  // namespace modelcast::agent
