#include "serving.h"

#include <glog/logging.h>

#include <chrono>

namespace modelcast::agent {
namespace {

double UnixNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
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

Status ServingHost::Start(const rpc::ServeRequest& req) {
  auto manifest = store_->FindModel(req.model);
  if (manifest == nullptr) return NotFound("startServing: model '" + req.model + "' is not known on " + node_);
  const int nblocks = static_cast<int>(manifest->blocks.size());
  if (req.first_block < 0 || req.first_block >= req.end_block || req.end_block > nblocks) {
    return InvalidArgument("startServing: blocks [" + std::to_string(req.first_block) + ", " +
                           std::to_string(req.end_block) + ") are not a non-empty range of model '" + req.model +
                           "''s " + std::to_string(nblocks) + " blocks");
  }
  const std::string key = pipeline::StageKey(req.model, req.first_block, req.end_block);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (serving_.count(key)) return AlreadyExists("startServing: " + node_ + " already serves " + key);
  }
  std::vector<uint32_t> blocks;
  for (int b = req.first_block; b < req.end_block; ++b) blocks.push_back(static_cast<uint32_t>(b));
  // A tied LM head reads the embedding, which block 0 holds.
  if (req.end_block == nblocks && manifest->config.tie_word_embeddings && req.first_block > 0) blocks.push_back(0);
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
  const bool whole = req.first_block == 0 && req.end_block == nblocks;
  s.instance.state = whole && !req.__isset.pipeline_id ? rpc::InstanceState::LOCAL : rpc::InstanceState::PIPELINE;
  if (req.__isset.pipeline_id) s.instance.__set_pipeline_id(req.pipeline_id);
  s.instance.since_unix = UnixNow();
  LOG(INFO) << "agent " << node_ << ": serving " << key << " (" << layers.ToString() << ")"
            << (req.__isset.pipeline_id ? " in pipeline " + req.pipeline_id : std::string()) << " on the "
            << (gpu ? "GPU" : "CPU") << ": blocks resident in "
            << resident_ms << " ms, stage built in " << ms() - resident_ms << " ms";
  std::lock_guard<std::mutex> lock(mu_);
  serving_[key] = std::move(s);
  return Status::Ok();
}

Status ServingHost::Stop(const rpc::ServeRequest& req) {
  const std::string key = pipeline::StageKey(req.model, req.first_block, req.end_block);
  std::lock_guard<std::mutex> lock(mu_);
  if (!serving_.count(key)) return NotFound("stopServing: " + node_ + " does not serve " + key);
  MC_RETURN_IF_ERROR(pipelines_->RemoveStage(key));
  serving_.erase(key);  // the stage goes, and with it its leases: the blocks may be evicted again
  LOG(INFO) << "agent " << node_ << ": stopped serving " << key;
  return Status::Ok();
}

std::vector<rpc::Instance> ServingHost::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<rpc::Instance> out;
  for (const auto& [key, s] : serving_) out.push_back(s.instance);
  return out;
}

}  // namespace modelcast::agent
