// The coordinator's serving plane: the request router, and what feeds it. It keeps the router's
// engines in step with the cluster (level-triggered, woken whenever holdings or instances
// change): every full local instance is served (its agent hosts a stage of every block);
// during a scale-out the receivers whose complete blocks together cover the model are formed
// into pipelines (planner::FormPipelines on what the agents report, and, `serving.lookahead`
// ahead, on what each target's plan sends it next at the rate it has been receiving), their
// agents host the stages (a stage whose blocks are still landing is built by its agent the
// moment its last block lands, holding the steps that reach it before) and the router sends
// requests through them; a pipeline
// dissolves (drains: requests in flight finish) once its members are all full local instances,
// and a released instance's engine drains before its agent stops serving.
#pragma once

#include <algorithm>
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

class ServingPlane {
 public:
  static Result<std::unique_ptr<ServingPlane>> Start(const ServingConfig& config, const rpc::SecurityConfig& security,
                                                     ClusterState* state);
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
    bool local = false;
    bool draining = false;
    std::set<std::string> waiting;  // nodes whose stage's blocks were still landing when it formed
  };
  ServingPlane() = default;
  void Loop();
  void Reconcile();
  // Starts the stages on their agents and adds the engine (or, when some of its blocks are
  // still landing, keeps it prepared); stops what it started on failure.
  Status Launch(const std::string& id, Engine engine, const ServingView& view);
  // Adds a started engine to the router; `formed`: when it was formed (SteadyNow).
  Status Admit(const std::string& id, Engine engine, std::unique_ptr<pipeline::Pipeline> p, double formed);
  // How long an agent holds a stage formed ahead of its blocks, and a prepared engine waits.
  double WaitForBlocks() const { return std::max(2.0, 4 * config_.lookahead); }
  void Release(const std::string& id, const Engine& engine, const ServingView& view);
  Status StartHttp(const std::string& address, int port);

  ServingConfig config_;
  rpc::SecurityConfig security_;
  ClusterState* state_ = nullptr;
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
    std::unique_ptr<pipeline::Pipeline> pipeline;
    double formed = 0;  // SteadyNow()
  };
  std::map<std::string, Prepared> prepared_;     // formed ahead of their blocks, not in the router yet
  std::map<std::string, bool> gone_;             // engines that left the router (id -> drained ok)
  std::map<std::string, double> retry_after_;    // engine id -> when a failed launch may be retried
  uint64_t next_pipeline_ = 1;
  std::thread thread_;
};

}  // namespace modelcast::coordinator
