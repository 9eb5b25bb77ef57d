// The coordinator's serving plane: the request router, and what feeds it. It keeps the router's
// engines in step with the cluster (level-triggered, woken whenever holdings or instances
// change): every full local instance is served (its agent hosts a stage of every block);
// during a scale-out the receivers whose complete blocks together cover the model are formed
// into pipelines (planner::FormPipelines on what the agents report, and, `serving.lookahead`
// ahead, on what each target's plan sends it next at the rate it has been receiving), their
// agents host the stages (a stage whose blocks are still landing is built by its agent the
// moment its last block lands, holding the steps that reach it before: such a pipeline is in
// the router at once, warming, and takes the requests no ready engine has room for) and the
// router sends requests through them; a pipeline
// dissolves (drains: requests in flight finish) once its members are all full local instances,
// and a released instance's engine drains before its agent stops serving.
//
// With the state in etcd (a replicated head), every coordinator serves. The leader's plane does
// all of the above and publishes its engines' routes under <prefix>/routes/<engine> (fenced
// writes, as the state's). A standby's plane follows them (Follow): it connects a pipeline of
// its own over each route's stages and routes the requests it is sent through them; the models'
// configs and text files it reads from the state's log in etcd. Stages serve the steps of every
// router (each names its origin, and the KV cache ids of different routers do not meet). So a
// request sent to any coordinator is served by the agents directly, and the standbys go on
// serving while the leader is gone. A standby elected leader keeps its plane (Lead): it starts
// reconciling, its HTTP endpoint and requests in flight are untouched, and the engines it
// followed drain once it runs its own.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "modelcast/coordinator/daemon.h"
#include "modelcast/fabric/transport.h"
#include "modelcast/pipeline/remote.h"
#include "modelcast/pipeline/router.h"
#include "modelcast/text/chat_template.h"
#include "modelcast/text/tokenizer.h"

namespace httplib {
class Server;
}

namespace modelcast::coordinator {

class EtcdClient;
struct EtcdFence;

// Where a replicated head's serving planes share their routes: etcd, under the state's prefix.
struct ServingShare {
  std::shared_ptr<EtcdClient> etcd;
  std::string prefix;
};

class ServingPlane {
 public:
  // The leader's plane (or a single head's, with no `share`).
  static Result<std::unique_ptr<ServingPlane>> Start(const ServingConfig& config, const rpc::SecurityConfig& security,
                                                     ClusterState* state, const ServingShare& share = {},
                                                     const EtcdFence* fence = nullptr);
  // A standby's plane: routes through the engines the leader publishes.
  static Result<std::unique_ptr<ServingPlane>> Follow(const ServingConfig& config, const rpc::SecurityConfig& security,
                                                      const ServingShare& share);
  // The standby's plane leads from now on (this coordinator was elected): it reconciles
  // `state`, publishes its own routes under `fence`, and drains the engines it followed.
  Status Lead(ClusterState* state, const EtcdFence& fence);
  ~ServingPlane();

  pipeline::Router& router() { return *router_; }
  // The model's config; NotFound naming the model when it is not registered.
  Result<model::LlamaConfig> ModelConfig(const std::string& model) const;
  // The model's own tokenizer (its registered tokenizer.json, parsed once); null when it has
  // none (its text goes through the byte-level fallback); an error naming why when its
  // tokenizer.json cannot be used.
  Result<std::shared_ptr<const text::Tokenizer>> ModelTokenizer(const std::string& model) const;
  // The ids that end a generation: generation_config.json's eos_token_id (one or a list) where
  // the model came with one, else config.json's.
  Result<std::vector<int32_t>> ModelEosIds(const std::string& model) const;
  // The model's chat template (tokenizer_config.json's, parsed once) and the special tokens it
  // is rendered with; FailedPrecondition when the model has none.
  Result<std::shared_ptr<const text::ChatSetup>> ModelChat(const std::string& model) const;
  std::string fabric_address() const { return transport_->address(); }
  int http_port() const { return http_port_; }
  const rpc::SecurityConfig& security() const { return security_; }

 private:
  struct Engine {
    std::string model;
    std::vector<std::pair<std::string, planner::Stage>> stages;  // node, blocks
    std::vector<pipeline::Hop> hops;  // where its stages are hosted, once launched
    bool local = false;
    bool draining = false;
    std::set<std::string> waiting;  // nodes whose stage's blocks were still landing when it formed
  };
  using TextFiles = std::map<std::string, std::string>;
  ServingPlane() = default;
  Status Init(const ServingConfig& config, const rpc::SecurityConfig& security);
  void Loop();
  void Reconcile();
  // The leader's engines, as routes in etcd: what changed since the last publication written
  // (fenced), the engines gone or draining deleted.
  void PublishRoutes();
  // A standby's router in step with the routes in etcd: new ones connected and added, those
  // gone or changed drained.
  void Follow();
  // The registered models: the cluster's state when leading, else what the log in etcd holds
  // (read again when a model is asked for that it lacks, or the list, at most every 0.25 s).
  std::shared_ptr<const model::Manifest> FindManifest(const std::string& model) const;
  std::shared_ptr<const TextFiles> FindTextFiles(const std::string& model) const;
  std::vector<std::string> ModelNames() const;
  void ReadModels(const std::string& wanted = "") const;
  // Starts the stages on their agents and adds the engine (or, when some of its blocks are
  // still landing, adds it warming and keeps it prepared); stops what it started on failure.
  Status Launch(const std::string& id, Engine engine, const ServingView& view);
  Status AddToRouter(const std::string& id, const Engine& engine, std::unique_ptr<pipeline::Pipeline> p, bool warming);
  // Adds a started engine to the router, or (`p` null) makes a prepared one ready; `formed`:
  // when it was formed (SteadyNow).
  Status Admit(const std::string& id, Engine engine, std::unique_ptr<pipeline::Pipeline> p, double formed);
  // A prepared engine given up: drained from the router, its stages stopped.
  void LetGo(const std::string& id, const Engine& engine, const ServingView& view);
  // How long an agent holds a stage formed ahead of its blocks, and a prepared engine waits.
  double WaitForBlocks() const { return std::max(2.0, 4 * config_.lookahead); }
  void Release(const std::string& id, const Engine& engine, const ServingView& view);
  Status StartHttp(const std::string& address, int port);

  ServingConfig config_;
  rpc::SecurityConfig security_;
  std::atomic<ClusterState*> state_{nullptr};  // null while following
  ServingShare share_;
  std::string fence_key_;      // what the leader's writes require: this key, with this create revision
  int64_t fence_revision_ = 0;
  std::map<std::string, std::string> published_;  // engine id -> its route as written in etcd
  bool led_ = false;  // Lead() was called: the followed engines drain after the first reconcile

  // Following: route id -> (its route's text, the id of its engine in the router).
  std::map<std::string, std::pair<std::string, std::string>> followed_;
  uint64_t next_followed_ = 1;
  mutable std::mutex read_mu_;  // one read of the models at a time
  mutable std::mutex models_mu_;
  mutable std::map<std::string, std::pair<std::shared_ptr<const model::Manifest>, std::shared_ptr<const TextFiles>>>
      models_;
  mutable double models_read_ = -1;  // SteadyNow() of the last read
  std::unique_ptr<fabric::Transport> transport_;
  std::unique_ptr<pipeline::PipelineNode> node_;
  std::unique_ptr<pipeline::Router> router_;
  std::unique_ptr<httplib::Server> http_;
  std::thread http_thread_;
  int http_port_ = 0;

  mutable std::mutex tokenizers_mu_;
  mutable std::map<std::string, std::shared_ptr<const text::Tokenizer>> tokenizers_;
  mutable std::map<std::string, std::shared_ptr<const text::ChatSetup>> chats_;
  mutable std::map<std::string, std::vector<int32_t>> eos_ids_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool poked_ = false, stopping_ = false;
  std::map<std::string, Engine> engines_;        // id -> what it runs on
  struct Prepared {
    Engine engine;
    double formed = 0;  // SteadyNow()
  };
  std::map<std::string, Prepared> prepared_;     // formed ahead of their blocks, warming in the router
  std::map<std::string, bool> gone_;             // engines that left the router (id -> drained ok)
  std::map<std::string, double> retry_after_;    // engine id -> when a failed launch may be retried
  uint64_t next_pipeline_ = 1;
  std::thread thread_;
};

}  // namespace modelcast::coordinator
