// Two real UCX transports in one process, over TCP on loopback.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <random>

#include "modelcast/fabric/ucx_transport.h"

namespace modelcast::fabric {
namespace {

std::unique_ptr<Transport> Make(const std::string& name) {
  UcxOptions o;
  o.name = name;
  o.tls = "tcp";
  auto t = MakeUcxTransport(o);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_TRUE((*t)->Start().ok());
  return std::move(*t);
}

Status Wait(std::function<void(Done)> op, double seconds = 10) {
  auto p = std::make_shared<std::promise<Status>>();
  auto f = p->get_future();
  op([p](Status s) { p->set_value(s); });
  if (f.wait_for(std::chrono::duration<double>(seconds)) != std::future_status::ready)
    return DeadlineExceeded("test wait");
  return f.get();
}

TEST(UcxTransportTest, MessagesWithPayloadLandWhereAccepted) {
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

TEST(UcxTransportTest, SmallMessagesAndDiscardedPayloads) {
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

TEST(UcxTransportTest, OneSidedWriteAndFlush) {
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

TEST(UcxTransportTest, GpuMemoryIsRefusedWithoutCudaSupport) {
  auto a = Make("a");
  if (a->capabilities().gpu_memory) GTEST_SKIP() << "this UCX supports CUDA memory";
  std::vector<uint8_t> buf(4096);
  auto r = a->Register(buf.data(), buf.size(), MemoryKind::kGpu);
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(a->stats().gpu_staged, 1u);
}

TEST(UcxTransportTest, UnknownAndDeadPeersAreErrors) {
  auto a = Make("a");
  Status s = Wait([&](Done d) { a->Send("nobody", 1, {}, {}, d); });
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("nobody"), std::string::npos);
  // A port nobody listens on.
  s = Wait([&](Done d) { a->Connect("ghost", "127.0.0.1:1", d); }, 20);
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

}  // namespace
}  // namespace modelcast::fabric
