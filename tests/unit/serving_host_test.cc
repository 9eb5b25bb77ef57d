// An agent's serving host building a stage ahead of its blocks (serving.lookahead): the stage is
// asked for while its blocks are still landing in a real store, a step sent through it then is
// held, and the stage is built, and the step answered with the unsplit model's logits, the
// moment the last slice lands; blocks that never land fail the held step, naming why.
#include <gtest/gtest.h>

#include <atomic>
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

// A coordinator that dies takes its router, and the pipelines in it, along: the stages it asked
// for on this node serve nobody. Once a later coordinator speaks (the agent joins it, or it asks
// for a stage), the earlier ones' pipelines lose their share of every stage: a stage left with
// no owner stops (one still waiting for its blocks too, and is not built when they land), while
// the node's local instance stays, with the requests it holds. What an earlier coordinator asks
// afterwards is refused, naming both epochs.
TEST_F(ServingHostTest, PipelinesOfACoordinatorThatNoLongerLeadsStopWhenALaterOneSpeaks) {
  const int32_t n = static_cast<int32_t>(manifest().blocks.size());
  ASSERT_GE(n, 2);
  auto ask = [&](const std::string& pipeline, int64_t epoch, int32_t first, int32_t end, double wait_s = 0) {
    rpc::ServeRequest r = pipeline.empty() ? Local() : Serve(wait_s);
    if (!pipeline.empty()) r.__set_pipeline_id(pipeline);
    if (epoch != 0) r.__set_epoch(epoch);  // 0: none given
    r.first_block = first;
    r.end_block = end;
    return r;
  };
  auto keys = [&] { return host_->List().size(); };  // stages served
  host_->Joined(1);  // joined the first coordinator
  // Epoch 1 asks for a stage ahead of its blocks; epoch 2 leads before they land.
  ASSERT_TRUE(host_->Start(ask("m/p1-0", 1, 1, n, 10)).ok());
  ASSERT_EQ(keys(), 1u);
  host_->Joined(2);
  EXPECT_EQ(keys(), 0u) << "the waiting stage of epoch 1's pipeline stops";
  LandAll();
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(keys(), 0u) << "and is not built when its blocks land";

  // Epoch 2: the local instance (asked without an epoch: the one joined), a pipeline sharing its
  // stage, and a pipeline's stage of block 0 alone.
  ASSERT_TRUE(host_->Start(ask("", 0, 0, n)).ok());
  ASSERT_TRUE(host_->Start(ask("m/p2-0", 2, 0, n)).ok());
  ASSERT_TRUE(host_->Start(ask("m/p2-1", 2, 0, 1)).ok());
  ASSERT_EQ(keys(), 2u);
  pipeline::StepOutput out;
  ASSERT_TRUE(StepThrough(&out).ok());  // request 1's prefill, held in the whole stage

  // Epoch 3 asks for a stage: before it is served, epoch 2's pipelines end.
  ASSERT_TRUE(host_->Start(ask("m/p3-0", 3, 1, n)).ok());
  auto listed = host_->List();
  ASSERT_EQ(listed.size(), 2u) << "block 0's stage is gone, the local instance and epoch 3's stay";
  for (const auto& i : listed) {
    if (i.state == rpc::InstanceState::LOCAL) {
      EXPECT_FALSE(i.__isset.pipeline_id) << "epoch 2's pipeline no longer shares it";
    } else {
      EXPECT_EQ(i.pipeline_id, "m/p3-0");
    }
  }
  Status decode = StepThrough(&out, {{{1, 4, 1}}, {7}});
  EXPECT_TRUE(decode.ok()) << "the local instance kept request 1's cache: " << decode.ToString();

  // Epoch 2 again (a leader that does not know it was succeeded): refused, naming both.
  for (Status st : {host_->Start(ask("m/p2-9", 2, 0, 1)), host_->Stop(ask("m/p2-0", 2, 0, n))}) {
    EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.ToString();
    EXPECT_NE(st.message().find("epoch 2"), std::string::npos) << st.ToString();
    EXPECT_NE(st.message().find("epoch 3 leads"), std::string::npos) << st.ToString();
  }
  EXPECT_EQ(host_->Start(ask("m/p3-1", -1, 0, 1)).code(), StatusCode::kInvalidArgument);
  // Joining the same coordinator again changes nothing: epoch 3's pipeline stays.
  host_->Joined(3);
  EXPECT_EQ(keys(), 2u);
  host_->Joined(4);
  listed = host_->List();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].state, rpc::InstanceState::LOCAL);
  // Epoch 4 forms a pipeline; then the agent joins a coordinator whose state started over
  // (epoch 1): it leads, so it is heard, and epoch 4's pipeline ends.
  ASSERT_TRUE(host_->Start(ask("m/p4-0", 4, 0, 1)).ok());
  host_->Joined(1);
  ASSERT_EQ(keys(), 1u);
  ASSERT_TRUE(host_->Start(ask("m/p1-0", 1, 0, 1)).ok());
  ASSERT_EQ(keys(), 2u);
  ASSERT_TRUE(host_->Stop(ask("m/p1-0", 1, 0, 1)).ok());
  ASSERT_TRUE(host_->Stop(ask("", 1, 0, n)).ok());
  EXPECT_TRUE(host_->List().empty());
}

// Epochs rising (the agent joining coordinator after coordinator) while stages are asked for,
// built and stopped on three other threads: once the last epoch is heard and its
// requests are done, no stage is left for a pipeline of an earlier one, whatever the
// interleaving. (Run under TSan by hand: `sanitize tsan` runs the fabric's and store's tests.)
TEST_F(ServingHostTest, EpochsRisingWhileStagesComeAndGoLeaveNoEarlierPipeline) {
  const int32_t n = static_cast<int32_t>(manifest().blocks.size());
  LandAll();
  std::atomic<int64_t> epoch{1};
  host_->Joined(1);
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; !stop; ++i) {
        rpc::ServeRequest r = Serve(0);
        r.__set_pipeline_id("m/p" + std::to_string(t) + "-" + std::to_string(i));
        r.__set_epoch(epoch.load());
        r.first_block = (t + i) % n;
        r.end_block = r.first_block + 1;
        (void)host_->Start(r);
        if (i % 2) (void)host_->Stop(r);
      }
    });
  }
  for (int e = 2; e <= 40; ++e) {
    std::this_thread::sleep_for(5ms);
    epoch = e;
    host_->Joined(e);
  }
  stop = true;
  for (auto& t : threads) t.join();
  host_->Joined(41);
  EXPECT_TRUE(testing::WaitUntil([&] { return host_->List().empty(); }, 5s));
  for (const auto& i : host_->List()) ADD_FAILURE() << "left: " << i.pipeline_id;
}

}  // namespace
}  // namespace modelcast::agent
