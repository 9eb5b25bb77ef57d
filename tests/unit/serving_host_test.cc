// An agent's serving host building a stage ahead of its blocks (serving.lookahead): the stage is
// asked for while its blocks are still landing in a real store, a step sent through it then is
// held, and the stage is built, and the step answered with the unsplit model's logits, the
// moment the last slice lands; blocks that never land fail the held step, naming why.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "modelcast/pipeline/remote.h"
#include "serving.h"
#include "support/pipeline_models.h"
#include "support/store_fixture.h"
#include "support/transports.h"
#include "support/wait.h"

namespace modelcast::agent {
namespace {

using namespace std::chrono_literals;

class ServingHostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MODELCAST_SKIP_WITHOUT_BACKEND();
    model_ = testing::PrepareModel(testing::Tiny(DType::kBF16, 7), 2);
    auto store = tiers::Store::Open(testing::SmallStore(dir_ / "ssd", 64 << 20));
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
    ASSERT_TRUE(store_->AddModel(manifest()).ok());
    serving_transport_ = fabric::testing::Make("node-1");
    auto host = ServingHost::Create(*store_, *serving_transport_, "node-1");
    ASSERT_TRUE(host.ok());
    host_ = std::move(*host);
    driver_transport_ = fabric::testing::Make("router");
    auto d = pipeline::PipelineNode::Create(*driver_transport_);
    ASSERT_TRUE(d.ok());
    driver_ = std::move(*d);
  }
  void TearDown() override {
    driver_.reset();
    host_.reset();
  }
  const model::Manifest& manifest() const { return model_->package->manifest(); }
  rpc::ServeRequest Serve(double wait_s) {
    rpc::ServeRequest r;
    r.model = manifest().name;
    r.__set_pipeline_id("p1");
    r.first_block = 0;
    r.end_block = static_cast<int32_t>(manifest().blocks.size());
    if (wait_s > 0) r.__set_wait_for_blocks_s(wait_s);
    return r;
  }
  // Lands every slice of the model in the store, as the fabric would, telling the host.
  void LandAll() {
    for (const auto& b : manifest().blocks) {
      auto lease = store_->ReserveForReceive(manifest().name, b.index);
      ASSERT_TRUE(lease.ok()) << lease.status().ToString();
      for (uint32_t s = b.first_slice; s < b.first_slice + b.num_slices; ++s) {
        const auto& se = manifest().slices[s];
        ASSERT_TRUE(model_->package->ReadSlice(s, {lease->data() + se.offset, se.length}).ok());
        ASSERT_TRUE(store_->Landed(manifest().name, s).ok());
        host_->Landed(manifest().name);
      }
    }
  }
  Status StepThrough(pipeline::StepOutput* out, pipeline::StepInput in = {{{1, 0, 4}}, {1, 17, 300, 42}}) {
    const std::string key = pipeline::StageKey(manifest().name, 0, static_cast<int>(manifest().blocks.size()));
    auto p = driver_->Connect({{"node-1", serving_transport_->address(), key}}, manifest().config, 20);
    if (!p.ok()) return p.status();
    return (*p)->Step(in, out);
  }
  rpc::ServeRequest Local() {
    rpc::ServeRequest r = Serve(0);
    r.__isset.pipeline_id = false;
    r.pipeline_id.clear();
    return r;
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::PreparedModel> model_;
  std::unique_ptr<tiers::Store> store_;
  std::unique_ptr<fabric::Transport> serving_transport_, driver_transport_;
  std::unique_ptr<ServingHost> host_;
  std::unique_ptr<pipeline::PipelineNode> driver_;
};

TEST_F(ServingHostTest, AStageAskedForBeforeItsBlocksIsBuiltTheMomentTheyLand) {
  // Without a wait, blocks the store lacks are an error at once.
  EXPECT_FALSE(host_->Start(Serve(0)).ok());
  ASSERT_TRUE(host_->Start(Serve(10)).ok());
  auto listed = host_->List();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].state, rpc::InstanceState::PIPELINE);
  EXPECT_EQ(host_->Start(Serve(10)).code(), StatusCode::kAlreadyExists);
  pipeline::StepOutput got;
  Status stepped;
  std::thread step([&] { stepped = StepThrough(&got); });
  // The step reaches the stage before its blocks, and waits there.
  const std::string key = pipeline::StageKey(manifest().name, 0, static_cast<int>(manifest().blocks.size()));
  EXPECT_TRUE(testing::WaitUntil([&] { return host_->HeldSteps(key) == 1; }, 10s));
  LandAll();
  step.join();
  ASSERT_TRUE(stepped.ok()) << stepped.ToString();
  auto local = testing::SplitPipeline(*model_->package, 1);
  pipeline::StepInput in;
  in.items = {{1, 0, 4}};
  in.tokens = {1, 17, 300, 42};
  pipeline::StepOutput want;
  ASSERT_TRUE(local->Step(in, &want).ok());
  EXPECT_EQ(got.logits, want.logits);
  // Built, it pins its blocks as any stage does, and stops like one.
  EXPECT_TRUE(host_->Stop(Serve(0)).ok());
  EXPECT_TRUE(host_->List().empty());
}

TEST_F(ServingHostTest, BlocksThatDoNotLandInTimeFailTheHeldStepNamingWhy) {
  ASSERT_TRUE(host_->Start(Serve(1)).ok());
  pipeline::StepOutput got;
  const auto t0 = std::chrono::steady_clock::now();
  Status stepped = StepThrough(&got);
  EXPECT_FALSE(stepped.ok());
  EXPECT_NE(stepped.message().find("did not land within"), std::string::npos) << stepped.ToString();
  EXPECT_NE(stepped.message().find("node-1"), std::string::npos) << stepped.ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s) << "failed by the wait, not the step timeout";
  // Given up on, it is no longer served, and may be asked for again.
  EXPECT_TRUE(testing::WaitUntil([&] { return host_->List().empty(); }, 5s));
  ASSERT_TRUE(host_->Start(Serve(5)).ok());
  // Stopped while it waits: the waiter gives up at once.
  EXPECT_TRUE(host_->Stop(Serve(0)).ok());
  EXPECT_TRUE(host_->List().empty());
  // A wait out of range is refused, naming it.
  Status bad = host_->Start(Serve(1e9));
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("wait_for_blocks_s"), std::string::npos) << bad.ToString();
}

// A pipeline whose member became the node's local instance: the local instance shares the
// pipeline's stage of the same blocks instead of building another, the pipeline's requests keep
// their KV caches while it drains, and the stage stops with its last owner. A stage still
// waiting for its blocks is not shared; stopping it for an engine that does not own it is
// NotFound, naming who does.
TEST_F(ServingHostTest, AStageSharedByTwoEnginesStaysUntilTheLastLetsGoAndKeepsItsRequests) {
  ASSERT_TRUE(host_->Start(Serve(10)).ok());
  Status waiting = host_->Start(Local());
  EXPECT_EQ(waiting.code(), StatusCode::kUnavailable) << waiting.ToString();
  EXPECT_NE(waiting.message().find("still waiting for the blocks"), std::string::npos) << waiting.ToString();
  EXPECT_NE(waiting.message().find("pipeline p1"), std::string::npos) << waiting.ToString();
  LandAll();
  EXPECT_TRUE(testing::WaitUntil([&] { return host_->Start(Local()).ok(); }, 10s)) << "built, it is shared";
  auto listed = host_->List();
  ASSERT_EQ(listed.size(), 1u) << "one stage for both";
  EXPECT_EQ(listed[0].state, rpc::InstanceState::LOCAL);
  EXPECT_FALSE(listed[0].__isset.pipeline_id);
  EXPECT_EQ(host_->Start(Local()).code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(host_->Start(Serve(0)).code(), StatusCode::kAlreadyExists);

  // Request 1's prefill through the stage, as the pipeline's.
  pipeline::StepOutput out;
  ASSERT_TRUE(StepThrough(&out).ok());
  rpc::ServeRequest other = Serve(0);
  other.__set_pipeline_id("p2");
  Status st = host_->Stop(other);
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_NE(st.message().find("not for pipeline p2"), std::string::npos) << st.ToString();
  // The pipeline lets go; the stage stays for the local instance, request 1's cache with it.
  ASSERT_TRUE(host_->Stop(Serve(0)).ok());
  listed = host_->List();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].state, rpc::InstanceState::LOCAL);
  Status decode = StepThrough(&out, {{{1, 4, 1}}, {7}});
  EXPECT_TRUE(decode.ok()) << decode.ToString();
  ASSERT_TRUE(host_->Stop(Local()).ok());
  EXPECT_TRUE(host_->List().empty());
  EXPECT_EQ(host_->Stop(Local()).code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace modelcast::agent
