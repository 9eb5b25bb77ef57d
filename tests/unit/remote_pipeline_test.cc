// Pipelines whose stages sit on different nodes, joined by real UCX transports on loopback:
// the same logits and tokens as the unsplit model, batched steps, and a stage's node failing.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "modelcast/pipeline/remote.h"
#include "support/pipeline_models.h"
#include "support/transports.h"
#include "support/wait.h"

namespace modelcast::pipeline {
namespace {

// A node's transport and the pipeline node on it (stopped before the transport it uses).
struct Node {
  Node() = default;
  Node(Node&&) = default;
  Node& operator=(Node&&) = delete;
  ~Node() { node.reset(); }
  std::unique_ptr<fabric::Transport> transport;
  std::unique_ptr<PipelineNode> node;
};

Node MakeNode(const std::string& name) {
  Node n;
  n.transport = fabric::testing::Make(name);
  auto p = PipelineNode::Create(*n.transport);
  EXPECT_TRUE(p.ok());
  n.node = std::move(*p);
  return n;
}

const std::vector<int32_t> kPrompt = {1, 17, 300, 42, 9, 511, 3, 77};

class RemotePipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MODELCAST_SKIP_WITHOUT_BACKEND();
    model_ = testing::PrepareModel(testing::Tiny(DType::kBF16, 21), 4);
    for (int i = 0; i < 4; ++i) nodes_.push_back(MakeNode("node-" + std::to_string(i)));
    driver_.transport = fabric::testing::Make("router");
    auto d = PipelineNode::Create(*driver_.transport);
    ASSERT_TRUE(d.ok());
    driver_.node = std::move(*d);
  }
  void TearDown() override {
    driver_.node.reset();
    nodes_.clear();
  }

  // Stages of a `stages`-way split hosted on nodes 0.., the route through them.
  std::vector<Hop> Host(int stages, const std::string& prefix = "tiny") {
    auto ranges = SplitLayers(model_->package->manifest().config.num_hidden_layers, stages);
    EXPECT_TRUE(ranges.ok());
    std::vector<Hop> hops;
    for (int s = 0; s < stages; ++s) {
      const std::string key = prefix + ":" + std::to_string(stages) + ":" + (*ranges)[s].ToString();
      EXPECT_TRUE(nodes_[s].node->AddStage(key, testing::StageFromBlocks(*model_->package, (*ranges)[s])).ok());
      hops.push_back({nodes_[s].transport->name(), nodes_[s].transport->address(), key});
    }
    return hops;
  }

  const model::LlamaConfig& config() const { return model_->package->manifest().config; }

  std::unique_ptr<testing::PreparedModel> model_;
  std::vector<Node> nodes_;
  Node driver_;
};

TEST_F(RemotePipelineTest, SplitAcrossNodesGivesTheSameLogitsAndTokens) {
  auto local = testing::SplitPipeline(*model_->package, 1);
  auto want = Generate(*local, 1, kPrompt, 10, SamplingParams{});
  ASSERT_TRUE(want.ok());
  auto sampled_want = Generate(*local, 2, kPrompt, 10, SamplingParams{0.8, 0.9, 99});
  ASSERT_TRUE(sampled_want.ok());
  for (int stages = 1; stages <= 4; ++stages) {
    const auto hops = Host(stages);
    auto remote = driver_.node->Connect(hops, config(), 10);
    ASSERT_TRUE(remote.ok()) << remote.status().ToString();
    auto got = Generate(**remote, 10 + stages, kPrompt, 10, SamplingParams{});
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(got->tokens, want->tokens) << stages << " stages";
    EXPECT_EQ(got->logits, want->logits) << stages << " stages";
    auto sampled = Generate(**remote, 20 + stages, kPrompt, 10, SamplingParams{0.8, 0.9, 99});
    ASSERT_TRUE(sampled.ok());
    EXPECT_EQ(sampled->tokens, sampled_want->tokens) << stages << " stages";
    // The driver can be the first stage's node itself.
    auto from_first = nodes_[0].node->Connect(hops, config(), 10);
    ASSERT_TRUE(from_first.ok());
    auto again = Generate(**from_first, 30 + stages, kPrompt, 10, SamplingParams{});
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    EXPECT_EQ(again->logits, want->logits) << stages << " stages, driven from node-0";
  }
  // Generate dropped every request's caches along the route (drops travel as messages).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  size_t held = 1;
  while (held != 0 && std::chrono::steady_clock::now() < deadline) {
    held = 0;
    for (auto& n : nodes_) {
      for (const auto& k : n.node->stage_keys()) held += n.node->FindStage(k)->active_requests();
    }
    if (held) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(held, 0u);
}

// The other families' layouts and rope scalings across nodes: the same logits as in one process
// (which families_test checks against the float64 reference).
TEST_F(RemotePipelineTest, EveryFamilyAcrossNodesGivesTheSameLogits) {
  struct Case {
    const char* family;
    const char* rope;
    bool tie;
  };
  const Case cases[] = {
      {"qwen3", R"({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64})", false},
      {"qwen2", "", true},
      {"llama", R"({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64})", true},
      {"mistral", R"({"type": "dynamic", "factor": 2.0})", false},
  };
  int n = 0;
  for (const auto& c : cases) {
    auto o = testing::Tiny(DType::kBF16, 40 + n);
    o.family = c.family;
    o.rope_scaling = c.rope;
    o.tie_word_embeddings = c.tie;
    model_ = testing::PrepareModel(o, 4);
    auto local = testing::SplitPipeline(*model_->package, 1);
    auto want = Generate(*local, 1, kPrompt, 6, SamplingParams{});
    ASSERT_TRUE(want.ok()) << c.family;
    const auto hops = Host(4, std::string(c.family) + std::to_string(n++));
    auto remote = driver_.node->Connect(hops, config(), 10);
    ASSERT_TRUE(remote.ok()) << remote.status().ToString();
    auto got = Generate(**remote, 2, kPrompt, 6, SamplingParams{});
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(got->tokens, want->tokens) << c.family;
    EXPECT_EQ(got->logits, want->logits) << c.family;
  }
}

TEST_F(RemotePipelineTest, BatchedStepsCarryEveryRequest) {
  auto remote = driver_.node->Connect(Host(3), config(), 10);
  ASSERT_TRUE(remote.ok());
  auto local = testing::SplitPipeline(*model_->package, 1);
  StepInput in;
  in.items = {{1, 0, 3}, {2, 0, 1}, {3, 0, 5}};
  in.tokens = {4, 5, 6, 7, 8, 9, 10, 11, 12};
  StepOutput a, b;
  ASSERT_TRUE((*remote)->Step(in, &a).ok());
  ASSERT_TRUE(local->Step(in, &b).ok());
  EXPECT_EQ(a.logits, b.logits);
  // A repeated step is refused by the first stage, and the error names the node and stage.
  Status again = (*remote)->Step(in, &a);
  EXPECT_EQ(again.code(), StatusCode::kFailedPrecondition) << again.ToString();
  EXPECT_NE(again.message().find("node-0"), std::string::npos) << again.ToString();
}

TEST_F(RemotePipelineTest, AStageNodeThatDiesFailsTheStepNamingIt) {
  auto remote = driver_.node->Connect(Host(3), config(), 20);
  ASSERT_TRUE(remote.ok());
  StepInput in;
  in.items = {{1, 0, 2}};
  in.tokens = {4, 5};
  StepOutput out;
  ASSERT_TRUE((*remote)->Step(in, &out).ok());
  nodes_[1].node.reset();
  nodes_[1].transport->Stop();
  in.items = {{1, 2, 1}};
  in.tokens = {6};
  const auto t0 = std::chrono::steady_clock::now();
  Status s = (*remote)->Step(in, &out);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("node-1"), std::string::npos) << s.ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(15)) << "failed by the peer, not the timeout";
}

TEST_F(RemotePipelineTest, AnUnknownStageIsNamed) {
  Host(2);
  std::vector<Hop> bad = {{nodes_[0].transport->name(), nodes_[0].transport->address(), "nope"}};
  auto remote = driver_.node->Connect(bad, config(), 10);
  ASSERT_TRUE(remote.ok());
  StepInput in;
  in.items = {{1, 0, 1}};
  in.tokens = {4};
  StepOutput out;
  Status s = (*remote)->Step(in, &out);
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s.ToString();
  EXPECT_NE(s.message().find("node-0"), std::string::npos);
  EXPECT_NE(s.message().find("'nope'"), std::string::npos);
  EXPECT_EQ(nodes_[0].node->AddStage(nodes_[0].node->stage_keys().front(), nullptr).code(),
            StatusCode::kAlreadyExists);
  EXPECT_EQ(nodes_[0].node->RemoveStage("nope").code(), StatusCode::kNotFound);
}

// A stage expected before it is built (its weights still landing): a step that reaches it is
// held, not refused, and goes on with the same logits the moment the stage is added.
TEST_F(RemotePipelineTest, AStepForAnExpectedStageWaitsUntilItIsBuilt) {
  auto ranges = SplitLayers(config().num_hidden_layers, 2);
  ASSERT_TRUE(ranges.ok());
  const std::string first = "late:0", second = "late:1";
  ASSERT_TRUE(nodes_[0].node->AddStage(first, testing::StageFromBlocks(*model_->package, (*ranges)[0])).ok());
  ASSERT_TRUE(nodes_[1].node->ExpectStage(second).ok());
  EXPECT_EQ(nodes_[1].node->ExpectStage(second).code(), StatusCode::kAlreadyExists);
  EXPECT_TRUE(nodes_[1].node->stage_keys().empty()) << "an expected stage is not served yet";
  // Node 0 hands its activations to node 1: connected to ahead of the first step.
  nodes_[0].node->Warm(nodes_[1].transport->name(), nodes_[1].transport->address());
  const std::vector<Hop> hops = {{nodes_[0].transport->name(), nodes_[0].transport->address(), first},
                                 {nodes_[1].transport->name(), nodes_[1].transport->address(), second}};
  auto remote = driver_.node->Connect(hops, config(), 20);
  ASSERT_TRUE(remote.ok()) << remote.status().ToString();
  StepInput in;
  in.items = {{1, 0, 3}};
  in.tokens = {4, 5, 6};
  StepOutput got;
  Status stepped;
  std::thread step([&] { stepped = (*remote)->Step(in, &got); });
  // The step reaches node 1 before its stage exists, and waits there.
  EXPECT_TRUE(testing::WaitUntil([&] { return nodes_[1].node->HeldSteps(second) == 1; }, std::chrono::seconds(10)));
  ASSERT_TRUE(nodes_[1].node->AddStage(second, testing::StageFromBlocks(*model_->package, (*ranges)[1])).ok());
  step.join();
  ASSERT_TRUE(stepped.ok()) << stepped.ToString();
  EXPECT_EQ(nodes_[1].node->HeldSteps(second), 0u);
  auto local = testing::SplitPipeline(*model_->package, 1);
  StepOutput want;
  ASSERT_TRUE(local->Step(in, &want).ok());
  EXPECT_EQ(got.logits, want.logits);
}

// An expected stage given up on (its blocks never landed, or it was stopped) fails the steps it
// held with the cause, naming the node and the stage, at once rather than at the step timeout.
TEST_F(RemotePipelineTest, AStageGivenUpOnFailsItsHeldStepsWithTheCause) {
  for (const bool stop : {false, true}) {
    const std::string key = stop ? "stopped" : "never";
    ASSERT_TRUE(nodes_[0].node->ExpectStage(key).ok());
    auto remote = driver_.node->Connect({{nodes_[0].transport->name(), nodes_[0].transport->address(), key}},
                                        config(), 20);
    ASSERT_TRUE(remote.ok());
    StepInput in;
    in.items = {{1, 0, 1}};
    in.tokens = {4};
    StepOutput out;
    Status stepped;
    const auto t0 = std::chrono::steady_clock::now();
    std::thread step([&] { stepped = (*remote)->Step(in, &out); });
    EXPECT_TRUE(testing::WaitUntil([&] { return nodes_[0].node->HeldSteps(key) == 1; }, std::chrono::seconds(10)));
    if (stop) {
      EXPECT_TRUE(nodes_[0].node->RemoveStage(key).ok());
    } else {
      nodes_[0].node->FailExpected(key, DeadlineExceeded("its blocks did not land within 2 s"));
    }
    step.join();
    EXPECT_FALSE(stepped.ok());
    EXPECT_NE(stepped.message().find(stop ? "stopped before it was built" : "did not land"), std::string::npos)
        << stepped.ToString();
    EXPECT_NE(stepped.message().find("node-0"), std::string::npos) << stepped.ToString();
    EXPECT_NE(stepped.message().find("'" + key + "'"), std::string::npos) << stepped.ToString();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10)) << "failed at once, not by the timeout";
    EXPECT_EQ(nodes_[0].node->RemoveStage(key).code(), StatusCode::kNotFound) << "no longer expected";
  }
}

}  // namespace
}  // namespace modelcast::pipeline
