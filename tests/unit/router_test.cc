// The router: iteration-level batching, full instances before pipelines, draining without
// dropping a request, and requests going on elsewhere when an engine fails.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <thread>
#include <map>
#include <mutex>

#include "modelcast/pipeline/router.h"
#include "support/pipeline_models.h"
#include "support/wait.h"

namespace modelcast::pipeline {
namespace {

using namespace std::chrono_literals;

// A fault-injecting wrapper: forwards to the real pipeline, fails every step from the
// `fail_after`-th on with Unavailable, and can slow each step.
class FaultyPipeline final : public Pipeline {
 public:
  FaultyPipeline(std::unique_ptr<Pipeline> inner, int fail_after, std::chrono::milliseconds delay = 0ms)
      : inner_(std::move(inner)), fail_after_(fail_after), delay_(delay) {}
  Status Step(const StepInput& in, StepOutput* out) override {
    std::this_thread::sleep_for(delay_);
    if (fail_after_ >= 0 && steps_++ >= fail_after_) return Unavailable("pipeline stage on node 'node-9' failed: killed");
    return inner_->Step(in, out);
  }
  void Drop(uint64_t r) override { inner_->Drop(r); }
  int64_t vocab_size() const override { return inner_->vocab_size(); }
  int64_t max_positions() const override { return inner_->max_positions(); }

 private:
  std::unique_ptr<Pipeline> inner_;
  int fail_after_;
  std::chrono::milliseconds delay_;
  std::atomic<int> steps_{0};
};

// Stages still being built: each step waits at the gate until it opens (the blocks landed) and
// then runs, or fails with what `Fail` gave (the pipeline was let go).
class GatedPipeline final : public Pipeline {
 public:
  explicit GatedPipeline(std::unique_ptr<Pipeline> inner) : inner_(std::move(inner)) {}
  Status Step(const StepInput& in, StepOutput* out) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      ++held_;
      cv_.notify_all();
      const int interrupts = interrupts_;
      cv_.wait(lock, [&] { return open_ || interrupts_ != interrupts; });
      if (!open_) return Cancelled("interrupted");
      if (!failure_.ok()) return failure_;
    }
    return inner_->Step(in, out);
  }
  void Drop(uint64_t r) override { inner_->Drop(r); }
  void Interrupt() override {
    std::lock_guard<std::mutex> lock(mu_);
    ++interrupts_;
    cv_.notify_all();
  }
  int64_t vocab_size() const override { return inner_->vocab_size(); }
  int64_t max_positions() const override { return inner_->max_positions(); }
  void Open(Status failure = Status::Ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    failure_ = std::move(failure);
    cv_.notify_all();
  }
  bool WaitHeld(std::chrono::seconds limit = 10s) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, limit, [&] { return held_ > 0; });
  }

 private:
  std::unique_ptr<Pipeline> inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
  int held_ = 0, interrupts_ = 0;
  Status failure_;
};

struct Outcome {
  std::vector<int32_t> tokens;
  Status status;
  RequestTiming timing;
  bool done = false;
};

// Collects every request's tokens and end.
class Collector {
 public:
  GenerateRequest Make(int key, std::vector<int32_t> prompt, int max_tokens, SamplingParams sp = {}) {
    GenerateRequest r;
    r.model = "tiny";
    r.prompt = std::move(prompt);
    r.max_tokens = max_tokens;
    r.sampling = sp;
    r.on_token = [this, key](int32_t t) {
      std::lock_guard<std::mutex> lock(mu_);
      out_[key].tokens.push_back(t);
      return static_cast<int>(out_[key].tokens.size()) != stop_after_[key];
    };
    r.on_done = [this, key](const Status& s, const RequestTiming& t) {
      std::lock_guard<std::mutex> lock(mu_);
      EXPECT_FALSE(out_[key].done) << "request " << key << " ended twice";
      out_[key].status = s;
      out_[key].timing = t;
      out_[key].done = true;
      cv_.notify_all();
    };
    return r;
  }
  bool WaitAll(size_t n, std::chrono::seconds limit = 60s) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, limit, [&] {
      size_t done = 0;
      for (auto& [k, o] : out_) done += o.done;
      return done == n;
    });
  }
  // on_token says to end request `key` after its n-th token (as a stop string found in its text).
  void StopAfter(int key, int n) {
    std::lock_guard<std::mutex> lock(mu_);
    stop_after_[key] = n;
  }
  Outcome Get(int key) {
    std::lock_guard<std::mutex> lock(mu_);
    return out_[key];
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int, Outcome> out_;
  std::map<int, int> stop_after_;
};

class RouterTest : public ::testing::Test {
 protected:
  void SetUp() override { model_ = testing::PrepareModel(testing::Tiny(DType::kBF16, 31), 4); }
  std::unique_ptr<Pipeline> Local(int stages = 1) { return testing::SplitPipeline(*model_->package, stages); }
  std::vector<int32_t> Prompt(int i) { return {1, 10 + i, 200 + 3 * i, 7, 40 + i}; }
  // What the request gives alone on an unshared pipeline.
  std::vector<int32_t> Alone(int i, int max_tokens, SamplingParams sp = {}) {
    auto p = Local();
    auto g = Generate(*p, 1, Prompt(i), max_tokens, sp);
    EXPECT_TRUE(g.ok());
    return g->tokens;
  }
  std::unique_ptr<testing::PreparedModel> model_;
};

TEST_F(RouterTest, ConcurrentRequestsAreBatchedAndEachGetsItsOwnAnswer) {
  Router router(RouterOptions{.max_batch = 8});
  ASSERT_TRUE(router.AddEngine("local-a", "tiny", EngineKind::kLocal, Local()).ok());
  ASSERT_TRUE(router.AddEngine("pipe-b", "tiny", EngineKind::kPipeline, Local(3)).ok());
  Collector c;
  const int n = 20;
  for (int i = 0; i < n; ++i) {
    SamplingParams sp = i % 2 ? SamplingParams{0.8, 0.9, static_cast<uint64_t>(i)} : SamplingParams{};
    ASSERT_TRUE(router.Submit(c.Make(i, Prompt(i), 6 + i % 5, sp)).ok());
  }
  ASSERT_TRUE(c.WaitAll(n));
  std::map<std::string, int> by_engine;
  for (int i = 0; i < n; ++i) {
    const Outcome o = c.Get(i);
    ASSERT_TRUE(o.status.ok()) << o.status.ToString();
    SamplingParams sp = i % 2 ? SamplingParams{0.8, 0.9, static_cast<uint64_t>(i)} : SamplingParams{};
    EXPECT_EQ(o.tokens, Alone(i, 6 + i % 5, sp)) << "request " << i;
    EXPECT_GT(o.timing.ttft_s, 0);
    EXPECT_GE(o.timing.tpot_s, 0);
    by_engine[o.timing.served_by]++;
  }
  // 20 requests at once overflow the local instance's batch of 8: the pipeline takes some.
  EXPECT_GT(by_engine["local-a"], 0);
  EXPECT_GT(by_engine["pipe-b"], 0);
}

// A request whose on_token says stop ends after that token, its answer a prefix of what it would
// have been; the requests batched with it go on, and the engine serves the next ones.
TEST_F(RouterTest, ARequestEndsWhenItsOnTokenSaysStop) {
  Router router(RouterOptions{.max_batch = 4});
  ASSERT_TRUE(router.AddEngine("local-a", "tiny", EngineKind::kLocal, Local(2)).ok());
  Collector c;
  for (int i = 0; i < 4; ++i) {
    if (i % 2 == 0) c.StopAfter(i, 2 + i);
    ASSERT_TRUE(router.Submit(c.Make(i, Prompt(i), 10)).ok());
  }
  ASSERT_TRUE(c.WaitAll(4));
  for (int i = 0; i < 4; ++i) {
    const Outcome o = c.Get(i);
    ASSERT_TRUE(o.status.ok()) << o.status.ToString();
    std::vector<int32_t> want = Alone(i, 10);
    if (i % 2 == 0) want.resize(2 + i);
    EXPECT_EQ(o.tokens, want) << "request " << i;
  }
  ASSERT_TRUE(router.Submit(c.Make(9, Prompt(1), 3)).ok());
  ASSERT_TRUE(c.WaitAll(5));
  EXPECT_EQ(c.Get(9).tokens, Alone(1, 3));
  // The engine lets go of finished requests just after their on_done.
  EXPECT_TRUE(testing::WaitUntil(
      [&] {
        for (const auto& e : router.Engines()) {
          if (e.running != 0) return false;
        }
        return true;
      },
      10s, 5ms));
}

// The emulated accelerator: every step lasts at least step + token x its tokens, and the
// answer is the same.
TEST_F(RouterTest, AnEmulatedStepTimeHoldsEachStepAtLeastThatLong) {
  Router router(RouterOptions{.emulated_step = 0.05, .emulated_token = 0.01});
  ASSERT_TRUE(router.AddEngine("local", "tiny", EngineKind::kLocal, Local()).ok());
  Collector c;
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(router.Submit(c.Make(0, Prompt(0), 4)).ok());
  ASSERT_TRUE(c.WaitAll(1));
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // A prefill of 5 tokens (0.05 + 0.05 s), then 3 decode steps of one token (0.06 s each).
  EXPECT_GE(took, 0.1 + 3 * 0.06 - 0.005);
  EXPECT_GE(c.Get(0).timing.ttft_s, 0.1 - 0.005);
  EXPECT_EQ(c.Get(0).tokens, Alone(0, 4));
}

TEST_F(RouterTest, FullInstancesComeFirst) {
  Router router;
  ASSERT_TRUE(router.AddEngine("pipe", "tiny", EngineKind::kPipeline, Local(2)).ok());
  ASSERT_TRUE(router.AddEngine("local", "tiny", EngineKind::kLocal, Local()).ok());
  Collector c;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(router.Submit(c.Make(i, Prompt(i), 3)).ok());
    ASSERT_TRUE(c.WaitAll(i + 1));
    EXPECT_EQ(c.Get(i).timing.served_by, "local") << "one request at a time: the local instance is never full";
  }
}

TEST_F(RouterTest, ADrainedEngineFinishesItsRequestsAndLeaves) {
  Router router(RouterOptions{.max_batch = 4});
  std::promise<Status> gone;
  ASSERT_TRUE(router
                  .AddEngine("pipe", "tiny", EngineKind::kPipeline,
                             std::make_unique<FaultyPipeline>(Local(2), -1, 20ms),
                             [&](const Status& s) { gone.set_value(s); })
                  .ok());
  Collector c;
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(router.Submit(c.Make(i, Prompt(i), 12)).ok());
  // Wait until the pipeline is running them, then dissolve it under them and bring a local
  // instance for what comes next.
  testing::WaitUntil([&] { return c.Get(0).tokens.size() >= 2; }, 10s, 5ms);
  ASSERT_TRUE(router.DrainEngine("pipe").ok());
  ASSERT_TRUE(router.AddEngine("local", "tiny", EngineKind::kLocal, Local()).ok());
  for (int i = 4; i < 8; ++i) ASSERT_TRUE(router.Submit(c.Make(i, Prompt(i), 12)).ok());
  ASSERT_TRUE(c.WaitAll(8));
  for (int i = 0; i < 8; ++i) {
    const Outcome o = c.Get(i);
    ASSERT_TRUE(o.status.ok()) << o.status.ToString();
    EXPECT_EQ(o.tokens, Alone(i, 12)) << "request " << i << ": a token lost or repeated";
    EXPECT_EQ(o.timing.served_by, i < 4 ? "pipe" : "local") << "request " << i;
  }
  auto f = gone.get_future();
  ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
  EXPECT_TRUE(f.get().ok());
  EXPECT_EQ(router.Engines().size(), 1u);
  EXPECT_EQ(router.DrainEngine("pipe").code(), StatusCode::kNotFound);
}

TEST_F(RouterTest, RequestsOfAFailedEngineGoOnElsewhereWithoutRepeatingATokenOrDroppingOne) {
  Router router(RouterOptions{.max_batch = 4});
  std::promise<Status> gone;
  // The requests queue first, so that the dispatcher hands all three to the engine at once
  // (submitted one by one to a running engine, a loaded machine may start stepping the first
  // alone and fail it before the others arrive).
  Collector c;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(router.Submit(c.Make(i, Prompt(i), 10, SamplingParams{0.9, 0.95, 77})).ok());
  }
  ASSERT_TRUE(router
                  .AddEngine("pipe", "tiny", EngineKind::kLocal, std::make_unique<FaultyPipeline>(Local(2), 5),
                             [&](const Status& s) { gone.set_value(s); })
                  .ok());
  auto f = gone.get_future();
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(f.get().code(), StatusCode::kUnavailable);
  ASSERT_TRUE(router.AddEngine("local", "tiny", EngineKind::kLocal, Local()).ok());
  ASSERT_TRUE(c.WaitAll(3));
  for (int i = 0; i < 3; ++i) {
    const Outcome o = c.Get(i);
    ASSERT_TRUE(o.status.ok()) << o.status.ToString();
    EXPECT_EQ(o.tokens, Alone(i, 10, SamplingParams{0.9, 0.95, 77})) << "request " << i;
    EXPECT_EQ(o.timing.attempts, 2);
    EXPECT_EQ(o.timing.served_by, "local");
  }
}

// A pipeline prepared ahead of its blocks is in the router warming: it takes only what the
// ready engines have no room for, those requests' first step waits in its stages and runs as
// soon as they are built; ReadyEngine makes it an engine like any other.
TEST_F(RouterTest, AWarmingEngineTakesOnlyWhatReadyEnginesHaveNoRoomFor) {
  Router router(RouterOptions{.max_batch = 2});
  ASSERT_TRUE(
      router.AddEngine("local", "tiny", EngineKind::kLocal, std::make_unique<FaultyPipeline>(Local(), -1, 30ms)).ok());
  auto gated = std::make_unique<GatedPipeline>(Local(2));
  GatedPipeline* gate = gated.get();
  ASSERT_TRUE(router.AddEngine("warm", "tiny", EngineKind::kPipeline, std::move(gated), nullptr, /*warming=*/true).ok());
  ASSERT_EQ(router.Engines().size(), 2u);
  for (const auto& e : router.Engines()) EXPECT_EQ(e.warming, e.id == "warm") << e.id;
  Collector c;
  // Two fit the local instance's batch: the warming pipeline gets none of them.
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(router.Submit(c.Make(i, Prompt(i), 3)).ok());
  ASSERT_TRUE(c.WaitAll(2));
  for (int i = 0; i < 2; ++i) EXPECT_EQ(c.Get(i).timing.served_by, "local") << "request " << i;
  // Four at once: two overflow onto the warming pipeline and wait in its stages.
  for (int i = 2; i < 6; ++i) ASSERT_TRUE(router.Submit(c.Make(i, Prompt(i), 8)).ok());
  ASSERT_TRUE(gate->WaitHeld());
  ASSERT_TRUE(router.ReadyEngine("warm").ok());
  gate->Open();  // its last block landed: the held step runs
  ASSERT_TRUE(c.WaitAll(6));
  int on_warm = 0;
  for (int i = 2; i < 6; ++i) {
    const Outcome o = c.Get(i);
    ASSERT_TRUE(o.status.ok()) << o.status.ToString();
    EXPECT_EQ(o.tokens, Alone(i, 8)) << "request " << i;
    on_warm += o.timing.served_by == "warm";
  }
  EXPECT_GE(on_warm, 1) << "the requests the local instance had no room for went to the warming pipeline";
  for (const auto& e : router.Engines()) EXPECT_FALSE(e.warming) << e.id;
  EXPECT_EQ(router.ReadyEngine("absent").code(), StatusCode::kNotFound);
}

// Requests waiting in a warming pipeline's stages are given to a ready engine as soon as one
// has room (its step is interrupted); the warming pipeline stays, for what comes next.
TEST_F(RouterTest, RequestsWaitingInAWarmingEngineGoToAReadyOneThatHasRoom) {
  Router router(RouterOptions{.max_batch = 4, .max_attempts = 1});
  auto gated = std::make_unique<GatedPipeline>(Local(2));
  GatedPipeline* gate = gated.get();
  ASSERT_TRUE(router.AddEngine("warm", "tiny", EngineKind::kPipeline, std::move(gated), nullptr, /*warming=*/true).ok());
  Collector c;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(router.Submit(c.Make(i, Prompt(i), 6)).ok());
  ASSERT_TRUE(gate->WaitHeld());
  ASSERT_TRUE(router.AddEngine("local", "tiny", EngineKind::kLocal, Local()).ok());
  ASSERT_TRUE(c.WaitAll(3));
  for (int i = 0; i < 3; ++i) {
    const Outcome o = c.Get(i);
    ASSERT_TRUE(o.status.ok()) << "request " << i << ": " << o.status.ToString();
    EXPECT_EQ(o.tokens, Alone(i, 6)) << "request " << i;
    EXPECT_EQ(o.timing.served_by, "local") << "request " << i;
    EXPECT_EQ(o.timing.attempts, 1) << "request " << i << ": giving it back was counted";
  }
  ASSERT_EQ(router.Engines().size(), 2u) << "the warming pipeline stays";
  gate->Open();
}

// A warming pipeline let go (its blocks were late): whatever its held steps fail with, its
// requests go back to the queue without counting an attempt, and are served elsewhere.
TEST_F(RouterTest, ARequestHeldByAWarmingEngineThatFailsCostsNoAttempt) {
  Router router(RouterOptions{.max_batch = 4, .max_attempts = 1});
  auto gated = std::make_unique<GatedPipeline>(Local(2));
  GatedPipeline* gate = gated.get();
  std::promise<Status> gone;
  ASSERT_TRUE(router
                  .AddEngine("warm", "tiny", EngineKind::kPipeline, std::move(gated),
                             [&](const Status& s) { gone.set_value(s); }, /*warming=*/true)
                  .ok());
  Collector c;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(router.Submit(c.Make(i, Prompt(i), 5)).ok());
  ASSERT_TRUE(gate->WaitHeld());
  ASSERT_TRUE(router.DrainEngine("warm").ok());
  // Not an error the router takes for an engine's (a ready engine's step failing so would fail
  // its requests): a warming engine's failure is its own whatever the code.
  gate->Open(FailedPrecondition("stopServing tiny[0,2) before its blocks landed"));
  auto f = gone.get_future();
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(f.get().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(router.AddEngine("local", "tiny", EngineKind::kLocal, Local()).ok());
  ASSERT_TRUE(c.WaitAll(3));
  for (int i = 0; i < 3; ++i) {
    const Outcome o = c.Get(i);
    ASSERT_TRUE(o.status.ok()) << "request " << i << ": " << o.status.ToString();
    EXPECT_EQ(o.tokens, Alone(i, 5)) << "request " << i;
    EXPECT_EQ(o.timing.served_by, "local");
    EXPECT_EQ(o.timing.attempts, 1) << "the warming engine's failure was counted";
  }
}

TEST_F(RouterTest, BadRequestsAreRefusedNamingTheProblem) {
  Router router(RouterOptions{.queue_timeout = 0.3});
  Collector c;
  EXPECT_EQ(router.Submit(c.Make(0, {}, 3)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(router.Submit(c.Make(0, {1}, 0)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(router.Submit(c.Make(0, {1}, 3, SamplingParams{-1, 1, 0})).code(), StatusCode::kInvalidArgument);
  // No engine for the model: the request waits, then fails.
  ASSERT_TRUE(router.Submit(c.Make(1, {1, 2}, 3)).ok());
  ASSERT_TRUE(c.WaitAll(1, 5s));
  EXPECT_EQ(c.Get(1).status.code(), StatusCode::kDeadlineExceeded) << c.Get(1).status.ToString();
  ASSERT_TRUE(router.AddEngine("local", "tiny", EngineKind::kLocal, Local()).ok());
  EXPECT_EQ(router.AddEngine("local", "tiny", EngineKind::kLocal, Local()).code(), StatusCode::kAlreadyExists);
  ASSERT_TRUE(router.Submit(c.Make(2, {1, 5000}, 3)).ok());
  ASSERT_TRUE(router.Submit(c.Make(3, {1, 2}, 100000)).ok());
  ASSERT_TRUE(router.Submit(c.Make(4, {1, 2}, 2)).ok());  // batched with the bad ones, unharmed
  ASSERT_TRUE(c.WaitAll(4, 10s));
  EXPECT_EQ(c.Get(2).status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(c.Get(2).status.message().find("token id 5000"), std::string::npos) << c.Get(2).status.ToString();
  EXPECT_EQ(c.Get(3).status.code(), StatusCode::kOutOfRange);
  EXPECT_TRUE(c.Get(4).status.ok());
  EXPECT_EQ(c.Get(4).tokens.size(), 2u);
}

}  // namespace
}  // namespace modelcast::pipeline
