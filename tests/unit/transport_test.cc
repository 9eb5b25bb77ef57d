// Two real transports in one process. Built twice from this file: as part of fabric_test for
// UCX (TCP on loopback), and as verbs_test (ctest label rdma) for the raw verbs backend, which
// runs on the first RDMA device's address and skips, saying so, on machines without one.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <random>

#include "modelcast/common/thread_placement.h"
#include "support/transports.h"

namespace modelcast::fabric {
namespace {

using testing::Host;
using testing::kBackend;
using testing::Make;
using testing::Wait;

class TransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MODELCAST_SKIP_WITHOUT_BACKEND();
  }
};

TEST_F(TransportTest, MessagesWithPayloadLandWhereAccepted) {
  auto a = Make("a"), b = Make("b");
  ASSERT_FALSE(b->address().empty());
  std::vector<uint8_t> inbox(3 << 20, 0);
  std::promise<std::pair<IncomingMessage, Status>> got;
  b->SetMessageHandler([&](const IncomingMessage& m, AcceptPayload accept) {
    ASSERT_EQ(m.payload_size, inbox.size());
    accept(inbox.data(), [&, m](Status s) { got.set_value({m, s}); });
  });
  ASSERT_TRUE(Wait([&](Done d) { a->Connect("b", b->address(), d); }).ok());
  std::vector<uint8_t> payload(3 << 20);
  std::mt19937 rng(1);
  for (auto& x : payload) x = static_cast<uint8_t>(rng());
  const std::vector<uint8_t> header = {1, 2, 3, 4};
  ASSERT_TRUE(Wait([&](Done d) { a->Send("b", 7, header, payload, d); }).ok());
  auto f = got.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  auto [m, s] = f.get();
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(m.peer, "a");
  EXPECT_EQ(m.type, 7);
  EXPECT_EQ(m.header, header);
  EXPECT_EQ(inbox, payload);
  EXPECT_EQ(a->stats().bytes_sent, payload.size());
  EXPECT_EQ(b->stats().bytes_received, payload.size());
}

// A transport's callbacks run on its progress thread, placed as it was made (an agent's fabric
// yields the CPU to its serving: a nice value, CPUs of its own); the caller's thread keeps its own.
TEST_F(TransportTest, TheProgressThreadRunsWhereItWasPlaced) {
  const int mine = ThreadNice();
  const std::vector<int> my_cpus = ThreadCpus();
  ASSERT_FALSE(my_cpus.empty());
  auto a = Make("a"), b = Make("b", ThreadPlacement{9, {my_cpus.back()}});
  std::promise<std::pair<int, std::vector<int>>> seen;
  b->SetMessageHandler([&](const IncomingMessage&, AcceptPayload accept) {
    seen.set_value({ThreadNice(), ThreadCpus()});
    accept(nullptr, [](Status) {});
  });
  ASSERT_TRUE(Wait([&](Done d) { a->Connect("b", b->address(), d); }).ok());
  ASSERT_TRUE(Wait([&](Done d) { a->Send("b", 1, {}, {}, d); }).ok());
  auto f = seen.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(f.get(), std::make_pair(9, std::vector<int>{my_cpus.back()}));
  EXPECT_EQ(ThreadNice(), mine);
  EXPECT_EQ(ThreadCpus(), my_cpus);
  if (kBackend != "ucx") return;
  // Placements the machine cannot honour fail the start, saying which.
  auto start_with = [](ThreadPlacement thread) {
    UcxOptions o;
    o.name = "c";
    o.tls = "tcp";
    o.listen_address = "127.0.0.1:0";
    o.thread = std::move(thread);
    auto c = MakeUcxTransport(o);
    EXPECT_TRUE(c.ok());
    return c.ok() ? (*c)->Start() : c.status();
  };
  Status st = start_with({20, {}});
  EXPECT_NE(st.message().find("nice value 20 is outside -20..19"), std::string::npos) << st.ToString();
  st = start_with({0, {1000}});
  EXPECT_NE(st.message().find("placing the ucx-c thread: running on CPUs 1000"), std::string::npos) << st.ToString();
}

TEST_F(TransportTest, SmallMessagesAndDiscardedPayloads) {
  auto a = Make("a"), b = Make("b");
  std::atomic<int> seen{0};
  b->SetMessageHandler([&](const IncomingMessage& m, AcceptPayload accept) {
    accept(nullptr, [&](Status) { ++seen; });  // discard whatever came
    EXPECT_EQ(m.peer, "a");
  });
  ASSERT_TRUE(Wait([&](Done d) { a->Connect("b", b->address(), d); }).ok());
  std::vector<uint8_t> big(1 << 20, 7);
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(Wait([&](Done d) {
                  a->Send("b", 1, {}, i % 2 ? std::span<const uint8_t>(big) : std::span<const uint8_t>(), d);
                }).ok());
  }
  for (int i = 0; i < 1000 && seen < 20; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(seen, 20);
}

TEST_F(TransportTest, OneSidedWriteAndFlush) {
  auto a = Make("a"), b = Make("b");
  std::vector<uint8_t> target(1 << 20, 0), source(1 << 20);
  for (size_t i = 0; i < source.size(); ++i) source[i] = static_cast<uint8_t>(i * 13);
  auto remote = b->Register(target.data(), target.size(), MemoryKind::kHost);
  ASSERT_TRUE(remote.ok()) << remote.status().ToString();
  auto local = a->Register(source.data(), source.size(), MemoryKind::kHost);
  ASSERT_TRUE(local.ok());
  // The descriptor survives serialisation, as it will over the control plane.
  auto parsed = RemoteRegion::Parse((*remote)->remote().Serialize());
  ASSERT_TRUE(parsed.ok());
  ASSERT_TRUE(Wait([&](Done d) { a->Connect("b", b->address(), d); }).ok());
  ASSERT_TRUE(Wait([&](Done d) { a->Write("b", **local, 4096, *parsed, 8192, 65536, d); }).ok());
  ASSERT_TRUE(Wait([&](Done d) { a->Flush("b", d); }).ok());
  EXPECT_TRUE(std::equal(target.begin() + 8192, target.begin() + 8192 + 65536, source.begin() + 4096));
  EXPECT_EQ(target[8191], 0);
  // Out-of-bounds writes are refused before anything moves.
  Status oob = Wait([&](Done d) { a->Write("b", **local, 0, *parsed, target.size() - 10, 100, d); });
  EXPECT_EQ(oob.code(), StatusCode::kOutOfRange);
  EXPECT_NE(oob.message().find("outside the peer's"), std::string::npos);
  EXPECT_FALSE(RemoteRegion::Parse("12:34").ok());
  EXPECT_FALSE(RemoteRegion::Parse("12:34:xyz").ok());
  local->reset();
  remote->reset();
}

TEST_F(TransportTest, GpuMemoryIsRefusedWithoutSupport) {
  auto a = Make("a");
  if (a->capabilities().gpu_memory) GTEST_SKIP() << "this transport registers GPU memory";
  std::vector<uint8_t> buf(4096);
  auto r = a->Register(buf.data(), buf.size(), MemoryKind::kGpu);
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(a->stats().gpu_staged, 1u);
}

TEST_F(TransportTest, UnknownAndDeadPeersAreErrors) {
  auto a = Make("a");
  Status s = Wait([&](Done d) { a->Send("nobody", 1, {}, {}, d); });
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("nobody"), std::string::npos);
  // A port nobody listens on.
  s = Wait([&](Done d) { a->Connect("ghost", Host() + ":1", d); }, 20);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("ghost"), std::string::npos) << s.message();
  // A peer that goes away: the survivor hears of it, naming it; a peer that closed its
  // transport says goodbye first, so it is reported as having left, not counted as failed.
  auto b = Make("b");
  ASSERT_TRUE(Wait([&](Done d) { a->Connect("b", b->address(), d); }).ok());
  std::promise<std::pair<std::string, Status>> gone;
  a->SetPeerFailureHandler([&](const std::string& peer, const Status& why) { gone.set_value({peer, why}); });
  const uint64_t failures_before = a->stats().peer_failures;
  b->Stop();
  auto f = gone.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(15)), std::future_status::ready);
  auto [peer, why] = f.get();
  EXPECT_EQ(peer, "b");
  EXPECT_NE(why.message().find("left"), std::string::npos) << why.message();
  EXPECT_EQ(a->stats().peer_failures, failures_before);
}

// Which backend an agent gets: "auto" takes verbs only where an RDMA device sits behind the
// listen address, and says why not otherwise; an unknown name is refused, naming it.
TEST(TransportFactoryTest, AutoFallsBackToUcxAndBadNamesAreRefused) {
  UcxOptions o;
  o.name = "f";
  o.tls = "tcp";
  o.listen_address = "127.0.0.1:0";
  auto t = MakeTransport("auto", o);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ((*t)->capabilities().backend, "ucx");  // no RDMA device behind loopback
  auto bad = MakeTransport("carrier-pigeon", o);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("carrier-pigeon"), std::string::npos);
  auto verbs = MakeTransport("verbs", o);
  EXPECT_FALSE(verbs.ok());  // no device, no verbs build, or loopback is not an RDMA address
  if (!verbs.ok()) {
    const std::string m = verbs.status().message();
    EXPECT_TRUE(m.find("no RDMA device") != std::string::npos || m.find("no verbs backend") != std::string::npos ||
                m.find("not the address of an RDMA device") != std::string::npos)
        << m;
  }
}

}  // namespace
}  // namespace modelcast::fabric
