#include "modelcast/coordinator/serving.h"

#include <glog/logging.h>
#include <httplib.h>

#include <chrono>
#include <thread>

#include <nlohmann/json.hpp>

#include "Agent.h"
#include "cluster_state.h"
#include "etcd_client.h"
#include "etcd_log.h"
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

// The blocks whose every slice `slices` (or `more`) holds.
SliceSet CompleteBlocks(const ModelShape& shape, const std::set<int32_t>& slices, const std::set<int32_t>* more = nullptr) {
  SliceSet blocks(shape.num_blocks());
  for (uint32_t b = 0; b < shape.num_blocks(); ++b) {
    bool all = true;
    for (uint32_t s = shape.block_first_slice[b]; s < shape.block_first_slice[b + 1] && all; ++s) {
      all = slices.count(static_cast<int32_t>(s)) > 0 || (more && more->count(static_cast<int32_t>(s)) > 0);
    }
    if (all) blocks.Set(b);
  }
  return blocks;
}

}  // namespace

Status ServingPlane::Init(const ServingConfig& config, const rpc::SecurityConfig& security) {
  config_ = config;
  security_ = security;
  MC_ASSIGN_OR_RETURN(transport_, fabric::MakeUcxTransport(config.fabric));
  MC_RETURN_IF_ERROR(transport_->Start());
  MC_ASSIGN_OR_RETURN(node_, pipeline::PipelineNode::Create(*transport_));
  pipeline::RouterOptions ro;
  ro.max_batch = config.max_batch;
  ro.queue_timeout = config.queue_timeout;
  ro.emulated_step = config.emulated_step;
  ro.emulated_token = config.emulated_token;
  router_ = std::make_unique<pipeline::Router>(ro);
  if (config.http_port >= 0) MC_RETURN_IF_ERROR(StartHttp(config.http_address, config.http_port));
  return Status::Ok();
}

Result<std::unique_ptr<ServingPlane>> ServingPlane::Start(const ServingConfig& config,
                                                          const rpc::SecurityConfig& security, ClusterState* state,
                                                          const ServingShare& share, const EtcdFence* fence) {
  auto p = std::unique_ptr<ServingPlane>(new ServingPlane());
  p->share_ = share;
  MC_RETURN_IF_ERROR(p->Init(config, security));
  MC_RETURN_IF_ERROR(p->Lead(state, fence ? *fence : EtcdFence{}));
  p->thread_ = std::thread([raw = p.get()] { raw->Loop(); });
  LOG(INFO) << "serving: router on fabric " << p->transport_->address()
            << (config.http_port >= 0 ? ", HTTP on " + config.http_address + ":" + std::to_string(p->http_port_)
                                      : std::string());
  return p;
}

Result<std::unique_ptr<ServingPlane>> ServingPlane::Follow(const ServingConfig& config,
                                                           const rpc::SecurityConfig& security,
                                                           const ServingShare& share) {
  if (share.etcd == nullptr) return InvalidArgument("serving: a standby's plane follows routes in etcd, and has none");
  auto p = std::unique_ptr<ServingPlane>(new ServingPlane());
  p->share_ = share;
  MC_RETURN_IF_ERROR(p->Init(config, security));
  p->thread_ = std::thread([raw = p.get()] { raw->Loop(); });
  LOG(INFO) << "serving: standing by, routing through the leader's engines; router on fabric "
            << p->transport_->address()
            << (config.http_port >= 0 ? ", HTTP on " + config.http_address + ":" + std::to_string(p->http_port_)
                                      : std::string());
  return p;
}

Status ServingPlane::Lead(ClusterState* state, const EtcdFence& fence) {
  if (share_.etcd) {
    // What an earlier leader published: replaced by this one's engines, or deleted, at its first
    // publication.
    const std::string routes = share_.prefix + "/routes/";
    MC_ASSIGN_OR_RETURN(auto kvs, share_.etcd->Range(routes, EtcdClient::PrefixEnd(routes)));
    std::lock_guard<std::mutex> lock(mu_);
    published_.clear();
    for (const auto& kv : kvs) published_[kv.key.substr(routes.size())] = kv.value;
    fence_key_ = fence.key;
    fence_revision_ = fence.create_revision;
  }
  state->SetServingWatcher([this] {
    std::lock_guard<std::mutex> lock(mu_);
    poked_ = true;
    cv_.notify_all();
  });
  {
    std::lock_guard<std::mutex> lock(mu_);
    led_ = true;
    state_ = state;
    poked_ = true;
  }
  cv_.notify_all();
  return Status::Ok();
}

ServingPlane::~ServingPlane() {
  if (ClusterState* state = state_.load()) state->SetServingWatcher(nullptr);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (http_) http_->stop();
  if (http_thread_.joinable()) http_thread_.join();
  router_.reset();  // its engines stop before anything they use goes
  prepared_.clear();
  node_.reset();
  if (transport_) transport_->Stop();
}

void ServingPlane::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, std::chrono::milliseconds(200), [&] { return poked_ || stopping_; });
    if (stopping_) break;
    poked_ = false;
    const bool leading = state_.load() != nullptr;
    const bool drain_followed = leading && led_;
    led_ = false;
    lock.unlock();
    if (drain_followed) retry_after_.clear();  // the routes' retries, not the leader's launches
    if (!leading) {
      Follow();
    } else {
      Reconcile();
      if (drain_followed) {
        // Elected: its own engines are in the router now; those it followed drain (their
        // requests finish), and their stages are the leader's to keep or stop.
        std::map<std::string, std::pair<std::string, std::string>> followed;
        {
          std::lock_guard<std::mutex> l(mu_);
          followed.swap(followed_);
        }
        for (const auto& [route, f] : followed) (void)router_->DrainEngine(f.second);  // NotFound: gone already
      }
      PublishRoutes();
    }
    lock.lock();
  }
}

namespace {

nlohmann::json RouteJson(const std::string& model, bool local, const std::vector<pipeline::Hop>& hops) {
  nlohmann::json h = nlohmann::json::array();
  for (const auto& hop : hops) h.push_back({hop.node, hop.address, hop.stage});
  return {{"model", model}, {"local", local}, {"hops", h}};
}

}  // namespace

void ServingPlane::PublishRoutes() {
  if (share_.etcd == nullptr) return;
  std::map<std::string, std::string> want, published;
  std::string fence_key;
  int64_t fence_revision = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, e] : engines_) {
      if (!e.draining) want[id] = RouteJson(e.model, e.local, e.hops).dump();
    }
    published = published_;
    fence_key = fence_key_;
    fence_revision = fence_revision_;
  }
  const std::string routes = share_.prefix + "/routes/";
  std::vector<EtcdOp> ops;
  for (const auto& [id, text] : want) {
    auto it = published.find(id);
    if (it == published.end() || it->second != text) ops.push_back(EtcdOp::Put(routes + id, text));
  }
  for (const auto& [id, text] : published) {
    if (!want.count(id)) ops.push_back(EtcdOp::Delete(routes + id));
  }
  if (ops.empty()) return;
  std::vector<EtcdCompare> fence;
  if (!fence_key.empty()) fence.push_back({fence_key, EtcdCompare::Target::kCreate, EtcdCompare::Op::kEqual, fence_revision, ""});
  auto t = share_.etcd->Txn(fence, ops);
  if (!t.ok() || !t->succeeded) {
    // Tried again at the next pass (every 200 ms); a leader fenced out exits on its own.
    LOG(WARNING) << "serving: publishing the routes: "
                 << (t.ok() ? "this coordinator no longer leads" : t.status().message());
    std::lock_guard<std::mutex> lock(mu_);
    poked_ = true;
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  published_ = std::move(want);
}

void ServingPlane::Follow() {
  const std::string prefix = share_.prefix + "/routes/";
  auto kvs = share_.etcd->Range(prefix, EtcdClient::PrefixEnd(prefix));
  if (!kvs.ok()) {
    // etcd out of reach: the engines followed so far go on serving.
    LOG_EVERY_N(WARNING, 25) << "serving: reading the routes: " << kvs.status().message();
    return;
  }
  std::map<std::string, std::string> routes;
  for (const auto& kv : *kvs) routes[kv.key.substr(prefix.size())] = kv.value;
  // Engines that left the router (a stage failed): followed again once the route is retried.
  std::map<std::string, bool> gone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    gone.swap(gone_);
  }
  const double now = SteadyNow();
  for (auto it = followed_.begin(); it != followed_.end();) {
    const auto r = routes.find(it->first);
    const bool failed = gone.count(it->second.second) > 0;
    if (r != routes.end() && r->second == it->second.first && !failed) {
      ++it;
      continue;
    }
    if (failed) {
      retry_after_[it->first] = now + 1;
    } else {
      LOG(INFO) << "serving: " << it->first << (r == routes.end() ? " is no longer routed" : " moved")
                << "; draining it here";
      (void)router_->DrainEngine(it->second.second);  // NotFound: it failed meanwhile
    }
    it = followed_.erase(it);
  }
  for (const auto& [id, text] : routes) {
    if (followed_.count(id) || (retry_after_.count(id) && retry_after_[id] > now)) continue;
    const auto j = nlohmann::json::parse(text, nullptr, false);
    std::vector<pipeline::Hop> hops;
    std::string model;
    bool local = false;
    try {
      model = j.at("model").get<std::string>();
      local = j.at("local").get<bool>();
      for (const auto& h : j.at("hops")) hops.push_back({h.at(0), h.at(1), h.at(2)});
    } catch (const std::exception& e) {
      LOG_EVERY_N(WARNING, 25) << "serving: route " << id << " is malformed (" << text << "): " << e.what();
      continue;
    }
    retry_after_[id] = now + 1;  // unless it joins the router below
    auto manifest = FindManifest(model);
    if (manifest == nullptr || hops.empty()) continue;
    auto p = node_->Connect(hops, manifest->config, config_.step_timeout);
    if (!p.ok()) {
      LOG(WARNING) << "serving: following " << id << ": " << p.status().message() << " (retrying in 1 s)";
      continue;
    }
    const std::string engine = id + "~" + std::to_string(next_followed_++);
    Status st = router_->AddEngine(engine, model, local ? pipeline::EngineKind::kLocal : pipeline::EngineKind::kPipeline,
                                   std::move(*p), [this, engine](const Status& s) {
                                     if (s.ok()) return;  // drained
                                     std::lock_guard<std::mutex> lock(mu_);
                                     gone_[engine] = false;
                                     poked_ = true;
                                     cv_.notify_all();
                                   });
    if (!st.ok()) {
      LOG(WARNING) << "serving: following " << id << ": " << st.message();
      continue;
    }
    retry_after_.erase(id);
    followed_[id] = {text, engine};
    LOG(INFO) << "serving: following " << id << " (" << model << " on " << hops.size() << " stage(s))";
  }
}

std::shared_ptr<const model::Manifest> ServingPlane::FindManifest(const std::string& model) const {
  if (ClusterState* state = state_.load()) return state->FindManifest(model);
  {
    std::lock_guard<std::mutex> lock(models_mu_);
    if (auto it = models_.find(model); it != models_.end()) return it->second.first;
  }
  ReadModels(model);
  std::lock_guard<std::mutex> lock(models_mu_);
  auto it = models_.find(model);
  return it == models_.end() ? nullptr : it->second.first;
}

std::shared_ptr<const ServingPlane::TextFiles> ServingPlane::FindTextFiles(const std::string& model) const {
  if (ClusterState* state = state_.load()) return state->FindTextFiles(model);
  if (FindManifest(model) == nullptr) return nullptr;
  std::lock_guard<std::mutex> lock(models_mu_);
  return models_.at(model).second;
}

std::vector<std::string> ServingPlane::ModelNames() const {
  std::vector<std::string> names;
  if (ClusterState* state = state_.load()) {
    for (const auto& m : state->ListModels()) names.push_back(m.name);
    return names;
  }
  ReadModels();
  std::lock_guard<std::mutex> lock(models_mu_);
  for (const auto& [name, m] : models_) names.push_back(name);
  return names;
}

void ServingPlane::ReadModels(const std::string& wanted) const {
  // One read at a time: a caller that missed while another read waits for it, then reads again
  // itself only if that read did not bring the model.
  std::lock_guard<std::mutex> reading(read_mu_);
  {
    std::lock_guard<std::mutex> lock(models_mu_);
    if (!wanted.empty() && models_.count(wanted)) return;
    if (models_read_ >= 0 && SteadyNow() - models_read_ < 0.25) return;
    models_read_ = SteadyNow();
  }
  decltype(models_) read;  // read without models_mu_: lookups of the models known go on meanwhile
  Status st = EtcdLog::Read(share_.etcd, share_.prefix, [&](const nlohmann::json& r) -> Status {
    if (r.value("op", "") != "register_model") return Status::Ok();
    MC_ASSIGN_OR_RETURN(ClusterState::Registration reg, ClusterState::ParseRegistration(r));
    read[reg.name] = {std::make_shared<const model::Manifest>(std::move(reg.manifest)), reg.text_files};
    return Status::Ok();
  });
  if (!st.ok()) {
    LOG(WARNING) << "serving: reading the models from etcd: " << st.message();
    return;
  }
  std::lock_guard<std::mutex> lock(models_mu_);
  models_ = std::move(read);
}

Result<model::LlamaConfig> ServingPlane::ModelConfig(const std::string& model) const {
  auto manifest = FindManifest(model);
  if (manifest == nullptr) return NotFound("model '" + model + "' is not registered");
  return manifest->config;
}

Result<std::shared_ptr<const text::Tokenizer>> ServingPlane::ModelTokenizer(const std::string& model) const {
  auto files = FindTextFiles(model);
  if (files == nullptr) {
    if (FindManifest(model) == nullptr) return NotFound("model '" + model + "' is not registered");
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
  auto files = FindTextFiles(model);
  if (files == nullptr || !files->count("tokenizer_config.json")) {
    if (FindManifest(model) == nullptr) return NotFound("model '" + model + "' is not registered");
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
  auto manifest = FindManifest(model);
  if (manifest == nullptr) return NotFound("model '" + model + "' is not registered");
  std::lock_guard<std::mutex> lock(tokenizers_mu_);  // worked out once per model, not per request
  if (auto it = eos_ids_.find(model); it != eos_ids_.end()) return it->second;
  nlohmann::json eos = manifest->hf_config.value("eos_token_id", nlohmann::json());
  if (auto files = FindTextFiles(model); files != nullptr && files->count("generation_config.json")) {
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
    req.__set_epoch(state_.load()->epoch());  // a later leader's agents stop this one's pipelines
    req.first_block = static_cast<int32_t>(stage.first_block);
    req.end_block = static_cast<int32_t>(stage.end_block);
    if (engine.waiting.count(node)) req.__set_wait_for_blocks_s(WaitForBlocks());
    if (i + 1 < engine.stages.size()) {
      // Its agent connects to the next stage's now, so that the first step does not wait for it.
      const std::string& next = engine.stages[i + 1].first;
      req.__set_next_stage(next);
      req.__set_next_stage_address(view.nodes.at(next).serving_address);
    }
    hops.push_back({node, nv.serving_address, pipeline::StageKey(engine.model, req.first_block, req.end_block)});
    threads.emplace_back([this, &started, i, req, addr = nv.rpc_address, node = node] {
      Status s = state_.load()->CallAgent(addr, 60000, [&](rpc::AgentClient& a) { a.startServing(req); });
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
  if (!st.ok()) {
    Release(id, engine, view);  // stops what did start (NotFound from the others is ignored)
    return st;
  }
  engine.hops = hops;
  if (!engine.waiting.empty()) {
    // Prepared ahead of its blocks: its agents build their stages as the blocks land. It joins
    // the router at once, warming: it takes only the requests no ready engine has room for,
    // whose first step then waits in its stages and runs the moment the last block lands. It is
    // made ready once the agents report every block landed (Admit).
    if (Status added = AddToRouter(id, engine, std::move(p), /*warming=*/true); !added.ok()) {
      Release(id, engine, view);
      return added;
    }
    std::lock_guard<std::mutex> lock(mu_);
    prepared_[id] = {std::move(engine), t0};
    return Status::Ok();
  }
  return Admit(id, std::move(engine), std::move(p), t0);
}

Status ServingPlane::AddToRouter(const std::string& id, const Engine& engine, std::unique_ptr<pipeline::Pipeline> p,
                                 bool warming) {
  return router_->AddEngine(
      id, engine.model, engine.local ? pipeline::EngineKind::kLocal : pipeline::EngineKind::kPipeline, std::move(p),
      [this, id](const Status& s) {
        std::lock_guard<std::mutex> lock(mu_);
        gone_[id] = s.ok();
        poked_ = true;
        cv_.notify_all();
      },
      warming);
}

Status ServingPlane::Admit(const std::string& id, Engine engine, std::unique_ptr<pipeline::Pipeline> p, double t0) {
  // A prepared engine is in the router already (warming, without `p`): it is made ready.
  Status st = p != nullptr ? AddToRouter(id, engine, std::move(p), /*warming=*/false) : router_->ReadyEngine(id);
  if (!st.ok()) return st;
  std::vector<std::string> nodes;
  std::vector<std::tuple<std::string, uint32_t, uint32_t>> stages;
  for (const auto& [node, stage] : engine.stages) {
    nodes.push_back(node);
    stages.emplace_back(node, stage.first_block, stage.end_block);
  }
  if (!engine.local) state_.load()->SetPipeline(engine.model, nodes, id, stages);
  std::string route;
  for (const auto& [node, stage] : engine.stages) {
    route += (route.empty() ? "" : " -> ") + node + "[" + std::to_string(stage.first_block) + "," +
             std::to_string(stage.end_block) + ")";
  }
  LOG(INFO) << "serving: " << id << " serves " << engine.model << " on " << route << " ("
            << (engine.waiting.empty() ? "ready in " : "prepared ahead of its blocks; in the router ")
            << static_cast<int>((SteadyNow() - t0) * 1000) << " ms after it formed)";
  std::lock_guard<std::mutex> lock(mu_);
  engines_[id] = std::move(engine);
  return Status::Ok();
}

void ServingPlane::LetGo(const std::string& id, const Engine& engine, const ServingView& view) {
  bool ready = false;  // a step has gone through it: its stages hold its requests' KV caches
  for (const auto& e : router_->Engines(engine.model)) ready = ready || (e.id == id && !e.warming);
  // It takes nothing more. NotFound: it has left already.
  if (!router_->DrainEngine(id).ok() || !ready) {
    // Warming: the steps its stages hold fail once they stop (its requests go back to the
    // queue, no attempt counted).
    Release(id, engine, view);
    return;
  }
  // Serving: it finishes its requests first, as an admitted engine that drains does, and its
  // stages are stopped once it has left (Reconcile). An engine started meanwhile on a node of
  // it with the same blocks (the local instance its member became) shares the stage.
  std::lock_guard<std::mutex> lock(mu_);
  Engine& kept = engines_[id];
  kept = engine;
  kept.draining = true;
}

void ServingPlane::Release(const std::string& id, const Engine& engine, const ServingView& view) {
  // Every stage at once: a pipeline formed in the same pass starts only after this.
  std::vector<std::string> nodes;
  std::vector<std::thread> threads;
  for (const auto& [node, stage] : engine.stages) {
    nodes.push_back(node);
    auto nv = view.nodes.find(node);
    if (nv == view.nodes.end() || !nv->second.alive) continue;
    rpc::ServeRequest req;
    req.header = rpc::MakeHeader(security_, "coordinator");
    req.model = engine.model;
    if (!engine.local) req.__set_pipeline_id(id);  // the owner whose share of the stage ends
    req.__set_epoch(state_.load()->epoch());
    req.first_block = static_cast<int32_t>(stage.first_block);
    req.end_block = static_cast<int32_t>(stage.end_block);
    threads.emplace_back([this, &id, req, addr = nv->second.rpc_address, node = node] {
      Status st = state_.load()->CallAgent(addr, 5000, [&](rpc::AgentClient& a) { a.stopServing(req); });
      if (!st.ok() && st.code() != StatusCode::kNotFound) {
        LOG(WARNING) << "serving: " << id << ": stopping its stage on " << node << ": " << st.message();
      }
    });
  }
  for (auto& t : threads) t.join();
  if (!engine.local) state_.load()->SetPipeline(engine.model, nodes, "");
}

void ServingPlane::Reconcile() {
  const ServingView view = state_.load()->ServingSnapshot(config_.pipelines ? config_.lookahead : 0);
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
    const ModelShape shape = ModelShape::FromManifest(*mv.manifest);
    // Pipelines prepared ahead of their blocks: admitted once every stage's blocks have landed,
    // let go when a member is gone, local, or its blocks are later than its agents wait.
    std::map<std::string, Prepared> prepared;
    std::map<std::string, std::string> waiting_in;  // member -> the prepared pipeline still waiting
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = prepared_.begin(); it != prepared_.end();) {
        if (it->second.engine.model != model) {
          ++it;
          continue;
        }
        prepared.insert(prepared_.extract(it++));
      }
    }
    for (auto& [id, pr] : prepared) {
      bool landed = true, gone = false;
      for (const auto& [node, stage] : pr.engine.stages) {
        gone = gone || !alive(node) || state_of(node) == InstanceState::kLocal || !mv.loading.count(node);
        if (gone) break;
        const SliceSet have = CompleteBlocks(shape, mv.loading.at(node));
        for (uint32_t b = stage.first_block; b < stage.end_block && landed; ++b) landed = have.Has(b);
      }
      if (!gone && !landed && now - pr.formed < WaitForBlocks()) {
        for (const auto& [node, stage] : pr.engine.stages) waiting_in[node] = id;
        std::lock_guard<std::mutex> lock(mu_);
        prepared_.insert({id, std::move(pr)});
        continue;
      }
      if (!gone && landed) {
        if (Status st = Admit(id, pr.engine, nullptr, pr.formed); st.ok()) {
          for (const auto& [node, stage] : pr.engine.stages) busy.insert(node);
          continue;
        } else {
          LOG(WARNING) << "serving: " << id << ": " << st.message();
        }
      } else {
        LOG(INFO) << "serving: " << id << (gone ? ": a member is gone or local before it served"
                                                : ": its blocks are later than predicted")
                  << "; letting it go";
      }
      LetGo(id, pr.engine, view);
    }
    // Execute-while-load: receivers not in a pipeline yet, grouped by what they hold.
    if (!config_.pipelines || mv.loading.empty()) continue;
    // Pipelines of the receivers not in `exclude`: from the blocks that have landed, or (`ahead`)
    // from those and the blocks the plan sends them next (their agents build each stage as its
    // last block lands; stages still waiting name their nodes in Engine::waiting).
    auto form = [&](bool ahead, const std::set<std::string>& exclude) {
      std::vector<NodeBlocks> candidates;
      std::vector<std::string> names;
      std::map<std::string, SliceSet> landed;
      for (const auto& [node, slices] : mv.loading) {
        if (exclude.count(node) || !alive(node) || state_of(node) == InstanceState::kLocal) continue;
        const SliceSet& have = landed.emplace(node, CompleteBlocks(shape, slices)).first->second;
        auto e = mv.expected.find(node);
        SliceSet blocks = ahead && e != mv.expected.end() ? CompleteBlocks(shape, slices, &e->second) : have;
        // A tied LM head reads the embedding: the last block serves only beside block 0.
        if (mv.manifest->config.tie_word_embeddings && !blocks.Has(0)) blocks.Clear(nblocks - 1);
        if (blocks.Count() == 0) continue;
        candidates.push_back({static_cast<int32_t>(names.size()), blocks});
        names.push_back(node);
      }
      std::vector<Engine> formed;
      if (candidates.empty()) return formed;
      for (const auto& p : FormPipelines(shape, candidates, config_.max_stages)) {
        Engine e;
        e.model = model;
        for (const auto& s : p.stages) {
          e.stages.push_back({names[s.node], s});
          const SliceSet& have = landed.at(names[s.node]);
          bool all = true;
          for (uint32_t b = s.first_block; b < s.end_block && all; ++b) all = have.Has(b);
          if (!all) e.waiting.insert(names[s.node]);
        }
        formed.push_back(std::move(e));
      }
      return formed;
    };
    auto launch = [&](Engine e) {
      std::lock_guard<std::mutex> lock(mu_);
      // Named by this coordinator's epoch too: no pipeline of an earlier leader has its name.
      launches.emplace_back(model + "/p" + std::to_string(state_.load()->epoch()) + "-" + std::to_string(next_pipeline_++),
                            std::move(e));
    };
    // First what the landed blocks allow now, members of prepared pipelines included: serving
    // now beats serving soon, so a prepared pipeline that shares a node with one is let go.
    std::set<std::string> used = busy;
    std::set<std::string> let_go;
    for (auto& e : form(false, busy)) {
      for (const auto& [node, stage] : e.stages) {
        used.insert(node);
        if (auto w = waiting_in.find(node); w != waiting_in.end()) let_go.insert(w->second);
      }
      launch(std::move(e));
    }
    // All at once: the pipelines formed above start only once these have let their nodes go.
    std::vector<std::thread> letting_go;
    for (const auto& id : let_go) {
      Prepared pr;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = prepared_.find(id);
        if (it == prepared_.end()) continue;
        pr = std::move(it->second);
        prepared_.erase(it);
      }
      LOG(INFO) << "serving: " << id << ": its members can serve in a pipeline now; letting it go";
      letting_go.emplace_back([this, &view, id, engine = std::move(pr.engine)] { LetGo(id, engine, view); });
    }
    for (auto& t : letting_go) t.join();
    // Then, with a lookahead, what the rest will hold soon.
    if (config_.lookahead > 0) {
      for (const auto& [node, id] : waiting_in) {
        if (!let_go.count(id)) used.insert(node);
      }
      for (auto& e : form(true, used)) launch(std::move(e));
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
