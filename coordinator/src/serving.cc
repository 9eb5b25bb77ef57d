#include "modelcast/coordinator/serving.h"

#include <glog/logging.h>
#include <httplib.h>

#include <chrono>
#include <thread>

#include <nlohmann/json.hpp>

#include "Agent.h"
#include "cluster_state.h"
#include "inventory.h"
#include "modelcast/planner/pipelines.h"

namespace modelcast::coordinator {

using planner::FormPipelines;
using planner::ModelShape;
using planner::NodeBlocks;
using planner::SliceSet;
namespace {

double SteadyNow() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The blocks whose every slice `slices` holds.
SliceSet CompleteBlocks(const ModelShape& shape, const std::set<int32_t>& slices) {
  SliceSet blocks(shape.num_blocks());
  for (uint32_t b = 0; b < shape.num_blocks(); ++b) {
    bool all = true;
    for (uint32_t s = shape.block_first_slice[b]; s < shape.block_first_slice[b + 1] && all; ++s) {
      all = slices.count(static_cast<int32_t>(s)) > 0;
    }
    if (all) blocks.Set(b);
  }
  return blocks;
}

}  // namespace

Result<std::unique_ptr<ServingPlane>> ServingPlane::Start(const ServingConfig& config,
                                                          const rpc::SecurityConfig& security, ClusterState* state) {
  auto p = std::unique_ptr<ServingPlane>(new ServingPlane());
  p->config_ = config;
  p->security_ = security;
  p->state_ = state;
  MC_ASSIGN_OR_RETURN(p->transport_, fabric::MakeUcxTransport(config.fabric));
  MC_RETURN_IF_ERROR(p->transport_->Start());
  MC_ASSIGN_OR_RETURN(p->node_, pipeline::PipelineNode::Create(*p->transport_));
  pipeline::RouterOptions ro;
  ro.max_batch = config.max_batch;
  ro.queue_timeout = config.queue_timeout;
  ro.emulated_step = config.emulated_step;
  ro.emulated_token = config.emulated_token;
  p->router_ = std::make_unique<pipeline::Router>(ro);
  if (config.http_port >= 0) MC_RETURN_IF_ERROR(p->StartHttp(config.http_address, config.http_port));
  state->SetServingWatcher([raw = p.get()] {
    std::lock_guard<std::mutex> lock(raw->mu_);
    raw->poked_ = true;
    raw->cv_.notify_all();
  });
  p->thread_ = std::thread([raw = p.get()] { raw->Loop(); });
  LOG(INFO) << "serving: router on fabric " << p->transport_->address()
            << (config.http_port >= 0 ? ", HTTP on " + config.http_address + ":" + std::to_string(p->http_port_)
                                      : std::string());
  return p;
}

ServingPlane::~ServingPlane() {
  state_->SetServingWatcher(nullptr);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (http_) http_->stop();
  if (http_thread_.joinable()) http_thread_.join();
  router_.reset();  // its engines stop before anything they use goes
  node_.reset();
  if (transport_) transport_->Stop();
}

void ServingPlane::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, std::chrono::milliseconds(200), [&] { return poked_ || stopping_; });
    if (stopping_) break;
    poked_ = false;
    lock.unlock();
    Reconcile();
    lock.lock();
  }
}

Result<model::LlamaConfig> ServingPlane::ModelConfig(const std::string& model) const {
  auto manifest = state_->FindManifest(model);
  if (manifest == nullptr) return NotFound("model '" + model + "' is not registered");
  return manifest->config;
}

Result<std::shared_ptr<const text::Tokenizer>> ServingPlane::ModelTokenizer(const std::string& model) const {
  auto files = state_->FindTextFiles(model);
  if (files == nullptr) {
    if (state_->FindManifest(model) == nullptr) return NotFound("model '" + model + "' is not registered");
    return std::shared_ptr<const text::Tokenizer>();
  }
  std::lock_guard<std::mutex> lock(tokenizers_mu_);
  auto it = tokenizers_.find(model);
  if (it != tokenizers_.end()) return it->second;
  auto t = text::TokenizerFromFiles(*files, "model '" + model + "'");
  // No tokenizer of its own: text goes through the byte-level fallback.
  if (t.status().code() == StatusCode::kNotFound) return std::shared_ptr<const text::Tokenizer>();
  if (!t.ok()) return FailedPrecondition(t.status().message() + ": send token ids");
  std::shared_ptr<const text::Tokenizer> shared = std::move(*t);
  tokenizers_[model] = shared;
  return shared;
}

Result<std::shared_ptr<const text::ChatSetup>> ServingPlane::ModelChat(const std::string& model) const {
  auto files = state_->FindTextFiles(model);
  if (files == nullptr || !files->count("tokenizer_config.json")) {
    if (state_->FindManifest(model) == nullptr) return NotFound("model '" + model + "' is not registered");
    return FailedPrecondition("model '" + model + "' has no chat template (its package carries no tokenizer_config.json)");
  }
  std::lock_guard<std::mutex> lock(tokenizers_mu_);
  if (auto it = chats_.find(model); it != chats_.end()) return it->second;
  MC_ASSIGN_OR_RETURN(std::shared_ptr<const text::ChatSetup> chat,
                      text::ChatSetupFromTokenizerConfig(files->at("tokenizer_config.json"),
                                                         "model '" + model + "''s tokenizer_config.json"));
  chats_[model] = chat;
  return chat;
}

Result<std::vector<int32_t>> ServingPlane::ModelEosIds(const std::string& model) const {
  auto manifest = state_->FindManifest(model);
  if (manifest == nullptr) return NotFound("model '" + model + "' is not registered");
  std::lock_guard<std::mutex> lock(tokenizers_mu_);  // worked out once per model, not per request
  if (auto it = eos_ids_.find(model); it != eos_ids_.end()) return it->second;
  nlohmann::json eos = manifest->hf_config.value("eos_token_id", nlohmann::json());
  if (auto files = state_->FindTextFiles(model); files != nullptr && files->count("generation_config.json")) {
    const auto g = nlohmann::json::parse(files->at("generation_config.json"), nullptr, false);
    if (g.is_object() && g.contains("eos_token_id")) eos = g["eos_token_id"];
  }
  std::vector<int32_t> ids;
  for (const auto& id : eos.is_array() ? eos : nlohmann::json::array({eos})) {
    if (id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < manifest->config.vocab_size) {
      ids.push_back(id.get<int32_t>());
    }
  }
  eos_ids_[model] = ids;
  return ids;
}

Status ServingPlane::Launch(const std::string& id, Engine engine, const ServingView& view) {
  const double t0 = SteadyNow();
  const auto& mv = view.models.at(engine.model);
  // Every stage's agent builds its stage at the same time.
  std::vector<pipeline::Hop> hops;
  std::vector<Status> started(engine.stages.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < engine.stages.size(); ++i) {
    const auto& [node, stage] = engine.stages[i];
    const auto& nv = view.nodes.at(node);
    rpc::ServeRequest req;
    req.header = rpc::MakeHeader(security_, "coordinator");
    req.model = engine.model;
    if (!engine.local) req.__set_pipeline_id(id);
    req.first_block = static_cast<int32_t>(stage.first_block);
    req.end_block = static_cast<int32_t>(stage.end_block);
    hops.push_back({node, nv.serving_address, pipeline::StageKey(engine.model, req.first_block, req.end_block)});
    threads.emplace_back([this, &started, i, req, addr = nv.rpc_address, node = node] {
      Status s = state_->CallAgent(addr, 60000, [&](rpc::AgentClient& a) { a.startServing(req); });
      if (s.code() == StatusCode::kAlreadyExists) s = Status::Ok();  // a stage of an earlier round
      if (!s.ok()) {
        s = s.WithContext("serving: " + node + " cannot serve " +
                          pipeline::StageKey(req.model, req.first_block, req.end_block));
      }
      started[i] = s;
    });
  }
  for (auto& t : threads) t.join();
  Status st;
  for (const auto& s : started) {
    if (!s.ok() && st.ok()) st = s;
  }
  std::unique_ptr<pipeline::Pipeline> p;
  if (st.ok()) {
    auto connected = node_->Connect(hops, mv.manifest->config, config_.step_timeout);
    if (connected.ok()) {
      p = std::move(*connected);
    } else {
      st = connected.status();
    }
  }
  if (st.ok()) {
    st = router_->AddEngine(id, engine.model, engine.local ? pipeline::EngineKind::kLocal : pipeline::EngineKind::kPipeline,
                            std::move(p), [this, id](const Status& s) {
                              std::lock_guard<std::mutex> lock(mu_);
                              gone_[id] = s.ok();
                              poked_ = true;
                              cv_.notify_all();
                            });
  }
  if (!st.ok()) {
    Release(id, engine, view);  // stops what did start (NotFound from the others is ignored)
    return st;
  }
  std::vector<std::string> nodes;
  for (const auto& [node, stage] : engine.stages) nodes.push_back(node);
  if (!engine.local) state_->SetPipeline(engine.model, nodes, id);
  std::string route;
  for (const auto& [node, stage] : engine.stages) {
    route += (route.empty() ? "" : " -> ") + node + "[" + std::to_string(stage.first_block) + "," +
             std::to_string(stage.end_block) + ")";
  }
  LOG(INFO) << "serving: " << id << " serves " << engine.model << " on " << route << " (ready in "
            << static_cast<int>((SteadyNow() - t0) * 1000) << " ms)";
  std::lock_guard<std::mutex> lock(mu_);
  engines_[id] = std::move(engine);
  return Status::Ok();
}

void ServingPlane::Release(const std::string& id, const Engine& engine, const ServingView& view) {
  std::vector<std::string> nodes;
  for (const auto& [node, stage] : engine.stages) {
    nodes.push_back(node);
    auto nv = view.nodes.find(node);
    if (nv == view.nodes.end() || !nv->second.alive) continue;
    rpc::ServeRequest req;
    req.header = rpc::MakeHeader(security_, "coordinator");
    req.model = engine.model;
    req.first_block = static_cast<int32_t>(stage.first_block);
    req.end_block = static_cast<int32_t>(stage.end_block);
    Status st = state_->CallAgent(nv->second.rpc_address, 5000, [&](rpc::AgentClient& a) { a.stopServing(req); });
    if (!st.ok() && st.code() != StatusCode::kNotFound) {
      LOG(WARNING) << "serving: " << id << ": stopping its stage on " << node << ": " << st.message();
    }
  }
  if (!engine.local) state_->SetPipeline(engine.model, nodes, "");
}

void ServingPlane::Reconcile() {
  const ServingView view = state_->ServingSnapshot();
  // Engines that left the router (drained, or failed with a stage's node): stop their stages.
  std::map<std::string, bool> gone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    gone.swap(gone_);
  }
  for (const auto& [id, ok] : gone) {
    Engine e;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = engines_.find(id);
      if (it == engines_.end()) continue;
      e = it->second;
      engines_.erase(it);
    }
    LOG(INFO) << "serving: " << id << (ok ? " dissolved" : " failed") << "; stopping its stages";
    Release(id, e, view);
  }
  std::map<std::string, Engine> engines;
  {
    std::lock_guard<std::mutex> lock(mu_);
    engines = engines_;
  }
  auto alive = [&](const std::string& node) {
    auto it = view.nodes.find(node);
    return it != view.nodes.end() && it->second.alive;
  };
  const double now = SteadyNow();
  std::vector<std::pair<std::string, Engine>> launches;
  for (const auto& [model, mv] : view.models) {
    auto state_of = [&](const std::string& node) {
      auto it = mv.instances.find(node);
      return it == mv.instances.end() ? InstanceState::kDraining : it->second;
    };
    const uint32_t nblocks = static_cast<uint32_t>(mv.manifest->blocks.size());
    // Every full local instance is served.
    for (const auto& [node, st] : mv.instances) {
      const std::string id = model + "@" + node;
      if (st != InstanceState::kLocal || !alive(node) || engines.count(id)) continue;
      if (retry_after_.count(id) && retry_after_[id] > now) continue;
      Engine e;
      e.model = model;
      e.local = true;
      e.stages = {{node, planner::Stage{0, 0, nblocks}}};
      launches.emplace_back(id, e);
    }
    // Engines whose nodes are gone, released or all local now drain.
    std::set<std::string> busy;  // nodes in a pipeline that stays
    for (auto& [id, e] : engines) {
      if (e.model != model || e.draining) continue;
      bool all_local = true, broken = false;
      for (const auto& [node, stage] : e.stages) {
        const auto st = state_of(node);
        all_local = all_local && st == InstanceState::kLocal;
        broken = broken || !alive(node) || st == InstanceState::kDraining;
      }
      const bool drain = e.local ? broken || !all_local : broken || all_local;
      if (drain) {
        LOG(INFO) << "serving: " << id << (e.local ? " released" : all_local ? ": every member is local now" : ": a member is gone")
                  << "; draining it";
        if (router_->DrainEngine(id).ok()) {
          std::lock_guard<std::mutex> lock(mu_);
          if (engines_.count(id)) engines_[id].draining = true;
        }
        e.draining = true;
      } else if (!e.local) {
        for (const auto& [node, stage] : e.stages) busy.insert(node);
      }
    }
    // Execute-while-load: receivers not in a pipeline yet, grouped by what they hold.
    if (!config_.pipelines || mv.loading.empty()) continue;
    const ModelShape shape = ModelShape::FromManifest(*mv.manifest);
    std::vector<NodeBlocks> candidates;
    std::vector<std::string> names;
    for (const auto& [node, slices] : mv.loading) {
      if (busy.count(node) || !alive(node) || state_of(node) == InstanceState::kLocal) continue;
      SliceSet blocks = CompleteBlocks(shape, slices);
      // A tied LM head reads the embedding: the last block serves only beside block 0.
      if (mv.manifest->config.tie_word_embeddings && !blocks.Has(0)) blocks.Clear(nblocks - 1);
      if (blocks.Count() == 0) continue;
      candidates.push_back({static_cast<int32_t>(names.size()), blocks});
      names.push_back(node);
    }
    if (candidates.empty()) continue;
    for (const auto& p : FormPipelines(shape, candidates, config_.max_stages)) {
      Engine e;
      e.model = model;
      for (const auto& s : p.stages) e.stages.push_back({names[s.node], s});
      std::string id;
      {
        std::lock_guard<std::mutex> lock(mu_);
        id = model + "/p" + std::to_string(next_pipeline_++);
      }
      launches.emplace_back(id, e);
    }
  }
  // Engines start at once, not one after another: each waits on its agents building stages.
  std::vector<Status> results(launches.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < launches.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = Launch(launches[i].first, launches[i].second, view); });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < launches.size(); ++i) {
    if (results[i].ok()) continue;
    const std::string& id = launches[i].first;
    LOG(WARNING) << "serving: " << id << ": " << results[i].message() << " (retrying in 1 s)";
    if (launches[i].second.local) retry_after_[id] = now + 1;
  }
}

}  // namespace modelcast::coordinator
