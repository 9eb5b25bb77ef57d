// Pipelines across nodes. Every node that serves runs a PipelineNode on a fabric transport (the
// agent's serving channel): it hosts the node's stages, and it drives pipelines whose stages
// are hosted anywhere. A step travels the route: the driver sends the token ids to the first
// stage, each stage runs its layers and sends the activations straight to the next, and the
// last sends each request's logits back to the driver. Every request's KV cache stays on the
// stages that computed it. A stage's node failing fails the steps in flight through it with an
// error naming the node, never a hang.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "modelcast/common/status.h"
#include "modelcast/fabric/transport.h"
#include "modelcast/pipeline/pipeline.h"
#include "modelcast/pipeline/stage.h"

namespace modelcast::pipeline {

// One stop of a route: the node (its fabric name and address) and the key of the stage it hosts.
struct Hop {
  std::string node;
  std::string address;
  std::string stage;
};

// The key under which an agent hosts the stage of `model`'s blocks [first_block, end_block):
// "MODEL/blocks/FIRST-END".
std::string StageKey(const std::string& model, int first_block, int end_block);

class PipelineNode {
 public:
  // Takes over the transport's message and peer-failure handlers; the transport must outlive
  // the node.
  static Result<std::unique_ptr<PipelineNode>> Create(fabric::Transport& transport);
  ~PipelineNode();

  // Hosts a stage under `key` (AlreadyExists when the key is taken). Steps for a key this node
  // does not host fail with NotFound naming the node and the key.
  Status AddStage(const std::string& key, std::shared_ptr<Stage> stage);
  // A stage that will be hosted under `key` once built (its weights are still arriving): steps
  // for it are held, not refused, and the node its activations go to next is connected to
  // meanwhile. AddStage(key) runs the held steps; FailExpected(key, cause) fails them with the
  // cause (and the key is no longer expected). AlreadyExists when the key is hosted or expected.
  Status ExpectStage(const std::string& key);
  void FailExpected(const std::string& key, const Status& cause);
  // Steps held for the expected stage `key` (0 when it is not expected).
  size_t HeldSteps(const std::string& key) const;
  // Starts connecting to `node` at `address` (where a stage of this node hands its activations
  // on), unless connected or connecting: the first step through it then finds it connected.
  void Warm(const std::string& node, const std::string& address);
  // Stops hosting (or expecting: the held steps fail); steps already running on it finish.
  // NotFound when absent.
  Status RemoveStage(const std::string& key);
  std::shared_ptr<Stage> FindStage(const std::string& key) const;
  std::vector<std::string> stage_keys() const;

  // A pipeline of `config`'s model over `hops`, in layer order (stages of this node may be among
  // them). Connects to every hop first. Each step waits at most `step_timeout` seconds.
  Result<std::unique_ptr<Pipeline>> Connect(std::vector<Hop> hops, const model::LlamaConfig& config,
                                            double step_timeout = 30);

  const std::string& name() const;
  struct State;

 private:
  PipelineNode() = default;
  std::shared_ptr<State> state_;
};

}  // namespace modelcast::pipeline
