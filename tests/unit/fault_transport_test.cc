// The fault injector: its spec, and what it does to real traffic, in process (over the fake
// network, whose transports deliver on their own threads as UCX's do): corrupted payloads
// arrive flipped and the sender's buffer is untouched, dropped ones never arrive, a delay holds
// everything back in order, and a peer set to fail does so after its bytes, once.
#include <gtest/gtest.h>

#include <chrono>
#include <mutex>
#include <vector>

#include "modelcast/fabric/fake_transport.h"
#include "modelcast/fabric/fault_transport.h"
#include "support/transports.h"
#include "support/wait.h"

namespace modelcast::fabric {
namespace {

using namespace std::chrono_literals;
using fabric::testing::Wait;

TEST(FaultOptions, ParsesEveryFault) {
  auto o = FaultOptions::Parse("corrupt=2,5;drop=7;delay=10ms;fail=node-3@100MiB");
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->corrupt, (std::vector<uint64_t>{2, 5}));
  EXPECT_EQ(o->drop, std::vector<uint64_t>{7});
  EXPECT_DOUBLE_EQ(o->delay, 0.010);
  EXPECT_EQ(o->fail_peer, "node-3");
  EXPECT_EQ(o->fail_after_bytes, 100ull << 20);
  EXPECT_FALSE(o->empty());
  auto none = FaultOptions::Parse("");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  EXPECT_TRUE(FaultOptions::Parse(";;drop=1;").ok());  // empty parts are nothing
}

TEST(FaultOptions, RefusesWhatItCannotRead) {
  const std::pair<const char*, const char*> bad[] = {
      {"corrupt", "is not key=value"},
      {"corrupt=0", "'0' is not a positive message number"},
      {"drop=1,x", "'x' is not a positive message number"},
      {"drop=-1", "'-1' is not a positive message number"},
      {"fail=node-3", "fail=PEER@BYTES"},
      {"fail=node-3@lots", "lots"},
      {"delay=soon", "soon"},
      {"explode=1", "unknown fault 'explode'"},
  };
  for (const auto& [spec, says] : bad) {
    auto o = FaultOptions::Parse(spec);
    ASSERT_FALSE(o.ok()) << spec;
    EXPECT_EQ(o.status().code(), StatusCode::kInvalidArgument) << spec;
    EXPECT_NE(o.status().message().find(says), std::string::npos) << spec << ": " << o.status().message();
  }
}

// Node "a" (behind the injector) sends to node "b", which records what arrives.
class FaultTransportTest : public ::testing::Test {
 protected:
  void Start(const std::string& spec) {
    auto o = FaultOptions::Parse(spec);
    ASSERT_TRUE(o.ok()) << o.status().ToString();
    auto a = net_.Join("a");
    auto b = net_.Join("b");
    ASSERT_TRUE(a.ok() && b.ok());
    a_ = MakeFaultTransport(std::move(*a), *o);
    b_ = std::move(*b);
    EXPECT_EQ(a_->capabilities().backend, "fault(fake)");
    ASSERT_TRUE(a_->Start().ok() && b_->Start().ok());
    b_->SetMessageHandler([this](const IncomingMessage& m, AcceptPayload accept) {
      auto buffer = std::make_shared<std::vector<uint8_t>>(m.payload_size);
      accept(buffer->data(), [this, buffer, type = m.type](Status st) {
        std::lock_guard lock(mu_);
        if (st.ok()) got_.push_back({type, *buffer});
      });
    });
    a_->SetPeerFailureHandler([this](const std::string& peer, const Status& cause) {
      std::lock_guard lock(mu_);
      failures_.push_back(peer + ": " + cause.message());
    });
    ASSERT_TRUE(Wait([&](Done d) { a_->Connect("b", "fake:b", d); }).ok());
  }

  Status Send(uint16_t type, const std::vector<uint8_t>& payload) {
    return Wait([&](Done d) { a_->Send("b", type, {}, payload, d); });
  }
  size_t Got() {
    std::lock_guard lock(mu_);
    return got_.size();
  }

  // What the handlers touch is declared first, so that it outlives the transports, which
  // are destroyed (their threads stopped) before it.
  std::mutex mu_;
  std::vector<std::pair<uint16_t, std::vector<uint8_t>>> got_;
  std::vector<std::string> failures_;
  FakeNetwork net_;
  std::unique_ptr<Transport> a_, b_;
};

TEST_F(FaultTransportTest, CorruptsAndDropsTheNumberedPayloads) {
  ASSERT_NO_FATAL_FAILURE(Start("corrupt=2;drop=3"));
  const std::vector<uint8_t> payload(64, 0x11);
  for (uint16_t i = 1; i <= 4; ++i) EXPECT_TRUE(Send(i, payload).ok()) << i;  // a drop still completes
  EXPECT_TRUE(Send(9, {}).ok());  // no payload: not counted, never altered
  ASSERT_TRUE(modelcast::testing::WaitUntil([&] { return Got() >= 4; }, 5s));
  std::lock_guard lock(mu_);
  ASSERT_EQ(got_.size(), 4u);  // payload 3 never arrived
  EXPECT_EQ(got_[0], std::make_pair(uint16_t{1}, payload));
  EXPECT_EQ(got_[1].first, 2);
  EXPECT_NE(got_[1].second, payload);  // one byte flipped
  EXPECT_EQ(got_[2], std::make_pair(uint16_t{4}, payload));
  EXPECT_EQ(got_[3].first, 9);
  EXPECT_EQ(payload, std::vector<uint8_t>(64, 0x11));  // the sender's buffer is untouched
}

TEST_F(FaultTransportTest, ADelayHoldsEverythingBackInOrder) {
  ASSERT_NO_FATAL_FAILURE(Start("delay=50ms"));
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(Send(1, std::vector<uint8_t>(16, 1)).ok());
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 50ms);
  EXPECT_TRUE(Send(2, std::vector<uint8_t>(16, 2)).ok());
  ASSERT_TRUE(modelcast::testing::WaitUntil([&] { return Got() >= 2; }, 5s));
  std::lock_guard lock(mu_);
  EXPECT_EQ(got_[0].first, 1);
  EXPECT_EQ(got_[1].first, 2);
}

TEST_F(FaultTransportTest, APeerFailsAfterItsBytesOnce) {
  ASSERT_NO_FATAL_FAILURE(Start("fail=b@100"));
  EXPECT_TRUE(Send(1, std::vector<uint8_t>(60, 1)).ok());
  EXPECT_TRUE(Send(2, std::vector<uint8_t>(40, 2)).ok());  // 100 bytes: still within
  Status third = Send(3, std::vector<uint8_t>(1, 3));
  EXPECT_EQ(third.code(), StatusCode::kUnavailable) << third.ToString();
  EXPECT_NE(third.message().find("fault injection: peer 'b' failed"), std::string::npos) << third.message();
  EXPECT_EQ(Send(4, std::vector<uint8_t>(1, 4)).code(), StatusCode::kUnavailable);
  ASSERT_TRUE(modelcast::testing::WaitUntil([&] { return Got() >= 2; }, 5s));
  // The injector posts the report before either send's completion, on the same thread: by now
  // it has run, and a second one would have been posted too.
  std::lock_guard lock(mu_);
  ASSERT_EQ(failures_.size(), 1u);  // reported once
  EXPECT_EQ(failures_[0], "b: fault injection: peer 'b' failed");
  EXPECT_EQ(got_.size(), 2u);
}

}  // namespace
}  // namespace modelcast::fabric
