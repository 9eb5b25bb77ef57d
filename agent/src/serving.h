// What an agent serves: pipeline stages (and full local instances, a stage of every block)
// built from blocks resident in its store's host memory, hosted by a PipelineNode on the
// agent's serving channel. A serving stage pins its blocks: they are not evicted under it.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "modelcast/fabric/transport.h"
#include "modelcast/pipeline/remote.h"
#include "modelcast/tiers/store.h"
#include "modelcast_types.h"

namespace modelcast::agent {

class ServingHost {
 public:
  static Result<std::unique_ptr<ServingHost>> Create(tiers::Store& store, fabric::Transport& channel,
                                                      std::string node);
  // Loads blocks [first_block, end_block) into host memory (from wherever the store has them),
  // builds the stage and hosts it under pipeline::StageKey(model, first_block, end_block).
  Status Start(const rpc::ServeRequest& req);
  Status Stop(const rpc::ServeRequest& req);
  std::vector<rpc::Instance> List() const;

 private:
  struct Serving {
    rpc::Instance instance;
  };
  ServingHost() = default;
  tiers::Store* store_ = nullptr;
  std::string node_;
  std::unique_ptr<pipeline::PipelineNode> pipelines_;
  mutable std::mutex mu_;
  std::map<std::string, Serving> serving_;
};

}  // namespace modelcast::agent
