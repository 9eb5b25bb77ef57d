// The plan executor between two real transports in one process (UCX, or verbs in verbs_test): slices by message and
// by one-sided write, every byte checked, and bad input from a peer refused with an error
// naming it.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <future>
#include <map>
#include <random>
#include <thread>
#include <tuple>

#include "modelcast/common/checksum.h"
#include "modelcast/common/file_util.h"
#include "modelcast/common/thread_placement.h"
#include "modelcast/fabric/channel_mux.h"
#include "modelcast/fabric/executor.h"
#include "modelcast/fabric/fault_transport.h"
#include "modelcast/fabric/wire.h"
#include "support/transports.h"

namespace modelcast::fabric {
namespace {

using testing::Make;
using testing::Wait;

// A model of `slices` slices of `slice_bytes` in 4 blocks, with random contents in `source`.
struct Model {
  ModelLayout layout;
  AlignedBuffer source;

  Model(uint32_t slices, uint64_t slice_bytes) : source(slices * slice_bytes) {
    std::mt19937_64 rng(7);
    for (uint64_t i = 0; i < source.size() / 8; ++i) reinterpret_cast<uint64_t*>(source.data())[i] = rng();
    layout.model = "m";
    layout.buffer_bytes = source.size();
    for (uint32_t b = 0; b < 4; ++b) layout.block_offsets.push_back(b * (slices / 4) * slice_bytes);
    for (uint32_t i = 0; i < slices; ++i) {
      layout.slices.push_back(
          {i * slice_bytes, slice_bytes, Xxh3(source.data() + i * slice_bytes, slice_bytes), i / (slices / 4)});
    }
  }
};

// "a" sends every slice to "b".
std::pair<PlanFragment, PlanFragment> OneHop(uint32_t slices) {
  PlanFragment a{"a", {}, {}}, b{"b", {}, {}};
  for (uint32_t i = 0; i < slices; ++i) {
    a.sends.push_back({i, "b", i});
    b.receives.push_back({i, "a", i});
  }
  return {a, b};
}

class ExecutorTest : public ::testing::TestWithParam<SliceMethod> {
 protected:
  void SetUp() override { MODELCAST_SKIP_WITHOUT_BACKEND(); }

  // "a" holds `m` and sends every slice to "b", connected, into a zeroed `target`: the
  // transports, registered regions, fragments and both ends' options (the method under test).
  void OneHopOf(Model& m) {
    a = Make("a");
    b = Make("b");
    ASSERT_TRUE(Wait([&](Done d) { a->Connect("b", b->address(), d); }).ok());
    target = AlignedBuffer(m.layout.buffer_bytes);
    std::memset(target.data(), 0, target.size());
    auto registered_a = a->Register(m.source.data(), m.source.size(), MemoryKind::kHost);
    auto registered_b = b->Register(target.data(), target.size(), MemoryKind::kHost);
    ASSERT_TRUE(registered_a.ok() && registered_b.ok());
    ra = std::move(*registered_a);
    rb = std::move(*registered_b);
    std::tie(fa, fb) = OneHop(static_cast<uint32_t>(m.layout.slices.size()));
    oa.method = ob.method = GetParam();
    oa.region = ra.get();
    ob.region = rb.get();
  }

  // Runs both ends of the hop: "a" (holding every slice, or none with a supply) sends, "b" receives.
  struct Ends {
    Result<ExecutorReport> sent, received;
  };
  Ends RunOneHop(Model& m, bool a_holds = true) {
    const size_t n = m.layout.slices.size();
    auto sender = std::async(std::launch::async, [&] {
      return ExecuteFragment(*a, m.layout, m.source.data(), std::vector<bool>(n, a_holds), fa, oa);
    });
    auto received = ExecuteFragment(*b, m.layout, target.data(), std::vector<bool>(n, false), fb, ob);
    auto sent = sender.get();
    return {std::move(sent), std::move(received)};
  }

  std::unique_ptr<Transport> a, b;
  AlignedBuffer target;
  std::unique_ptr<MemoryRegion> ra, rb;  // declared after the transports: unregistered first
  PlanFragment fa, fb;
  ExecutorOptions oa, ob;
};

TEST_P(ExecutorTest, EverySliceArrivesIntact) {
  Model m(32, 256 << 10);
  ASSERT_NO_FATAL_FAILURE(OneHopOf(m));
  std::vector<SliceEvent> events;
  ob.on_slice = [&](const SliceEvent& e) {
    events.push_back(e);
    return Status::Ok();
  };
  auto [sent, received] = RunOneHop(m);
  ASSERT_TRUE(received.ok()) << received.status().ToString();
  ASSERT_TRUE(sent.ok()) << sent.status().ToString();
  EXPECT_EQ(std::memcmp(target.data(), m.source.data(), target.size()), 0);
  EXPECT_EQ(received->slices_received, 32u);
  EXPECT_EQ(received->bytes_received, m.layout.buffer_bytes);
  EXPECT_EQ(sent->slices_sent, 32u);
  EXPECT_EQ(sent->slices_written, GetParam() == SliceMethod::kMessages ? 0u : 32u);
  EXPECT_TRUE(sent->timeline.empty() && received->timeline.empty());  // recorded only when asked
  EXPECT_GE(sent->first_send, 0);
  EXPECT_GT(received->last_receive, 0);
  // Each end says what it measured of the link, for finding stragglers: the sender all it sent
  // and for how long; the receiver of messages what arrived and at what rate.
  ASSERT_EQ(sent->sent_to.size(), 1u);
  EXPECT_EQ(sent->sent_to[0].peer, "b");
  EXPECT_EQ(sent->sent_to[0].bytes, m.layout.buffer_bytes);
  EXPECT_GT(sent->sent_to[0].busy_seconds, 0);
  EXPECT_LE(sent->sent_to[0].busy_seconds, sent->seconds);
  if (GetParam() == SliceMethod::kMessages) {
    ASSERT_EQ(received->received_from.size(), 1u);
    EXPECT_EQ(received->received_from[0].peer, "a");
    EXPECT_EQ(received->received_from[0].bytes, m.layout.buffer_bytes);
    EXPECT_GT(received->received_from[0].busy_seconds, 0);
  } else {
    EXPECT_TRUE(received->received_from.empty());  // writes: only the sender sees them move
  }
  ASSERT_EQ(events.size(), 32u);
  for (const auto& e : events) {
    EXPECT_EQ(e.source, "a");
    EXPECT_EQ(e.bytes, 256u << 10);
    EXPECT_LE(e.started, e.finished);
  }
}

// With its timeline on, each end records every slice's stages, in the order they happen, on the
// one clock both ends share (what scripts/slice-timeline.py lines up).
TEST_P(ExecutorTest, TimelinesRecordEveryStageInOrder) {
  Model m(16, 64 << 10);
  ASSERT_NO_FATAL_FAILURE(OneHopOf(m));
  oa.timeline = ob.timeline = true;
  auto [sent, received] = RunOneHop(m);
  ASSERT_TRUE(received.ok() && sent.ok());
  const bool writes = sent->slices_written > 0;
  const std::vector<SliceStage> send_stages =
      writes ? std::vector<SliceStage>{SliceStage::kPosted, SliceStage::kSent, SliceStage::kFlushed,
                                       SliceStage::kConfirmed}
             : std::vector<SliceStage>{SliceStage::kPosted, SliceStage::kSent, SliceStage::kConfirmed};
  // A write is announced by its first piece's landed notice: no admission.
  const std::vector<SliceStage> receive_stages =
      writes ? std::vector<SliceStage>{SliceStage::kAnnounced, SliceStage::kLanded, SliceStage::kVerified}
             : std::vector<SliceStage>{SliceStage::kAnnounced, SliceStage::kAdmitted, SliceStage::kLanded,
                                       SliceStage::kVerified};
  std::map<uint32_t, std::vector<std::pair<SliceStage, double>>> at_a, at_b;
  for (const auto& mark : sent->timeline) {
    EXPECT_EQ(mark.peer, "b");
    at_a[mark.slice].push_back({mark.stage, mark.at});
  }
  for (const auto& mark : received->timeline) {
    EXPECT_EQ(mark.peer, "a");
    at_b[mark.slice].push_back({mark.stage, mark.at});
  }
  ASSERT_EQ(at_a.size(), 16u);
  ASSERT_EQ(at_b.size(), 16u);
  for (uint32_t i = 0; i < 16; ++i) {
    std::vector<SliceStage> stages_a, stages_b;
    for (const auto& [stage, t] : at_a[i]) stages_a.push_back(stage);
    for (const auto& [stage, t] : at_b[i]) stages_b.push_back(stage);
    EXPECT_EQ(stages_a, send_stages) << "slice " << i;
    EXPECT_EQ(stages_b, receive_stages) << "slice " << i;
    // One clock: the receiver hears of a slice after it was posted, and the times only grow.
    EXPECT_GE(at_b[i].front().second, at_a[i].front().second) << "slice " << i;
    EXPECT_GE(at_a[i].front().second, sent->started_at);
    for (size_t k = 1; k < at_b[i].size(); ++k) EXPECT_GE(at_b[i][k].second, at_b[i][k - 1].second);
    for (size_t k = 1; k < at_a[i].size(); ++k) EXPECT_GE(at_a[i][k].second, at_a[i][k - 1].second);
  }
  const std::string csv = TimelineCsv("b", *received);
  EXPECT_EQ(csv.rfind("node,slice,peer,stage,at\nb,", 0), 0u) << csv.substr(0, 80);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), static_cast<long>(received->timeline.size() + 1));
}

// A node's send budget (fabric.max_send_rate): each send starts no earlier than the budget
// allows (the bytes posted before it at the rate, less the burst allowance), every byte still
// arrives, and the receiver's checksums run on a thread placed as the run says.
TEST_P(ExecutorTest, APacedSenderKeepsToItsRate) {
  Model m(16, 64 << 10);
  ASSERT_NO_FATAL_FAILURE(OneHopOf(m));
  const double rate = 4e6;  // bytes/s: 1 MiB takes ~0.26 s
  oa.pacer = std::make_shared<SendPacer>(rate, 0.005);
  oa.timeline = true;
  const std::vector<int> cpus = ThreadCpus();
  ob.verifier_thread = {7, {cpus.front()}};
  std::vector<std::pair<int, std::vector<int>>> placed_at_check;
  ob.on_slice = [&](const SliceEvent&) {
    placed_at_check.push_back({ThreadNice(), ThreadCpus()});
    return Status::Ok();
  };
  auto [sent, received] = RunOneHop(m);
  ASSERT_TRUE(received.ok()) << received.status().ToString();
  ASSERT_TRUE(sent.ok()) << sent.status().ToString();
  EXPECT_EQ(std::memcmp(target.data(), m.source.data(), target.size()), 0);
  std::vector<double> posted;
  for (const auto& mark : sent->timeline) {
    if (mark.stage == SliceStage::kPosted) posted.push_back(mark.at);
  }
  ASSERT_EQ(posted.size(), 16u);
  for (size_t i = 1; i < posted.size(); ++i) {
    EXPECT_GE(posted[i] - posted[0], static_cast<double>(i * (64 << 10)) / rate - 0.005 - 1e-4) << "slice " << i;
  }
  EXPECT_EQ(placed_at_check, decltype(placed_at_check)(16, {7, {cpus.front()}}));
}

// SendPacer on its own, on a given clock: a send goes when the budget allows, and the wait it
// names is exactly until then.
TEST(SendPacerTest, SendsStartAtTheRateWithinTheBurst) {
  SendPacer p(1000, 0.01);  // 1,000 bytes/s, 10 ms early at most
  EXPECT_EQ(p.Take(100, 5.0), 0);     // free: goes, the link is busy until 5.1
  EXPECT_NEAR(p.Take(100, 5.0), 0.09, 1e-9);  // may start at 5.09
  EXPECT_EQ(p.Take(100, 5.09), 0);    // busy until 5.2
  EXPECT_NEAR(p.Take(50, 5.1), 0.09, 1e-9);
  EXPECT_EQ(p.Take(50, 7.0), 0);      // idle time is not saved up beyond the burst
  EXPECT_NEAR(p.Take(50, 7.0), 0.04, 1e-9);
  EXPECT_EQ(p.rate(), 1000);
}

// A source that streams its slices in (from SSD, as it reads them): each is sent once added, the
// receiver gets every byte, and a read that fails ends the run naming the failure.
TEST_P(ExecutorTest, SuppliedSlicesAreSentAsTheyArrive) {
  Model m(16, 64 << 10);
  ASSERT_NO_FATAL_FAILURE(OneHopOf(m));
  oa.timeline = true;
  oa.supply = std::make_shared<SliceSupply>();
  // Held at the start: none. Slice 3 first; the rest once "b" has it (so nothing else can be
  // ready before it, however the threads run).
  std::promise<void> got_3;
  ob.on_slice = [&](const SliceEvent& e) {
    if (e.slice == 3) got_3.set_value();
    return Status::Ok();
  };
  std::vector<double> added_at(16, 0);
  const auto add = [&](uint32_t slice) {
    added_at[slice] = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    oa.supply->Add(slice);
  };
  auto feeder = std::async(std::launch::async, [&] {
    add(3);
    const bool arrived = got_3.get_future().wait_for(std::chrono::seconds(10)) == std::future_status::ready;
    for (uint32_t slice = 0; slice < 16; ++slice) {
      if (slice != 3) add(slice);
    }
    return arrived;
  });
  auto [sent, received] = RunOneHop(m, false);
  EXPECT_TRUE(feeder.get()) << "slice 3 did not arrive alone within 10 s";
  ASSERT_TRUE(received.ok()) << received.status().ToString();
  ASSERT_TRUE(sent.ok()) << sent.status().ToString();
  EXPECT_EQ(std::memcmp(target.data(), m.source.data(), target.size()), 0);
  // Nothing went before it was added, and slice 3 (added first) went first.
  std::vector<std::pair<double, uint32_t>> posts;
  for (const auto& mark : sent->timeline) {
    if (mark.stage != SliceStage::kPosted) continue;
    EXPECT_GE(mark.at, added_at[mark.slice]) << "slice " << mark.slice;
    posts.push_back({mark.at, mark.slice});
  }
  ASSERT_EQ(posts.size(), 16u);
  std::sort(posts.begin(), posts.end());
  EXPECT_EQ(posts.front().second, 3u);

  // A supply that fails: the run ends with its cause.
  auto c = Make("c"), d = Make("d");
  ASSERT_TRUE(Wait([&](Done done) { c->Connect("d", d->address(), done); }).ok());
  PlanFragment fc{"c", {}, {}}, fd{"d", {}, {}};
  for (uint32_t i = 0; i < 16; ++i) {
    fc.sends.push_back({i, "d", i});
    fd.receives.push_back({i, "c", i});
  }
  ExecutorOptions oc, od;
  oc.method = od.method = SliceMethod::kMessages;
  oc.deadline = od.deadline = 10;
  oc.supply = std::make_shared<SliceSupply>();
  oc.supply->Add(0);
  oc.supply->Fail(IOError("reading block 1 of 'm'", EIO));
  auto failing = std::async(std::launch::async, [&] {
    return ExecuteFragment(*c, m.layout, m.source.data(), std::vector<bool>(16, false), fc, oc);
  });
  auto starving = std::async(std::launch::async, [&] {
    return ExecuteFragment(*d, m.layout, target.data(), std::vector<bool>(16, false), fd, od);
  });
  auto failed = failing.get();
  c->Stop();  // its receiver hears it leave, and gives up at once
  auto starved = starving.get();
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("node 'c' supplying the slices it sends"), std::string::npos)
      << failed.status().message();
  EXPECT_NE(failed.status().message().find("reading block 1 of 'm'"), std::string::npos) << failed.status().message();
  EXPECT_FALSE(starved.ok());
}

// Writes into per-block regions, each node keeping its blocks at places of its own (as the
// agents' host pools do): every slice lands where the receiver's layout has it, and the receiver,
// which receives two of the four blocks, offers those two and registers nothing else.
TEST(ExecutorBlockRegions, WritesLandInTheReceiversOwnBlocks) {
  MODELCAST_SKIP_WITHOUT_BACKEND();
  constexpr uint64_t kSlice = 64 << 10, kBlock = 8 * kSlice;
  Model m(32, kSlice);  // 4 blocks of 8 slices
  // "b" keeps the blocks in reverse order, a page apart.
  ModelLayout lb = m.layout;
  lb.buffer_bytes = 4 * (kBlock + 4096);
  for (uint32_t b = 0; b < 4; ++b) lb.block_offsets[b] = (3 - b) * (kBlock + 4096);
  for (auto& s : lb.slices) s.offset = lb.block_offsets[s.block] + (s.offset - m.layout.block_offsets[s.block]);
  auto a = Make("a"), b = Make("b");
  ASSERT_TRUE(Wait([&](Done d) { a->Connect("b", b->address(), d); }).ok());
  AlignedBuffer target(lb.buffer_bytes);
  std::memset(target.data(), 0, target.size());
  // Blocks 0 and 1 (slices 0-15) go from "a" to "b".
  auto [fa, fb] = OneHop(16);
  std::vector<std::unique_ptr<MemoryRegion>> regions;
  ExecutorOptions oa, ob;
  oa.method = ob.method = SliceMethod::kWrites;
  oa.block_regions.assign(4, nullptr);
  ob.block_regions.assign(4, nullptr);
  for (uint32_t k = 0; k < 2; ++k) {
    auto ra = a->Register(m.source.data() + m.layout.block_offsets[k], kBlock, MemoryKind::kHost);
    auto rb = b->Register(target.data() + lb.block_offsets[k], kBlock, MemoryKind::kHost);
    ASSERT_TRUE(ra.ok() && rb.ok());
    oa.block_regions[k] = ra->get();
    ob.block_regions[k] = rb->get();
    regions.push_back(std::move(*ra));
    regions.push_back(std::move(*rb));
  }
  auto sender = std::async(std::launch::async, [&] {
    return ExecuteFragment(*a, m.layout, m.source.data(), std::vector<bool>(32, true), fa, oa);
  });
  auto received = ExecuteFragment(*b, lb, target.data(), std::vector<bool>(32, false), fb, ob);
  auto sent = sender.get();
  ASSERT_TRUE(received.ok()) << received.status().ToString();
  ASSERT_TRUE(sent.ok()) << sent.status().ToString();
  EXPECT_EQ(sent->slices_written, 16u);
  EXPECT_EQ(received->corrupt, 0u);
  for (uint32_t i = 0; i < 16; ++i) {
    EXPECT_EQ(std::memcmp(target.data() + lb.slices[i].offset, m.source.data() + m.layout.slices[i].offset, kSlice), 0)
        << "slice " << i;
  }
  // Blocks 2 and 3's places in "b" stay untouched.
  for (uint32_t k = 2; k < 4; ++k) {
    const uint8_t* p = target.data() + lb.block_offsets[k];
    EXPECT_TRUE(std::all_of(p, p + kBlock, [](uint8_t x) { return x == 0; })) << "block " << k;
  }
  // A block used by the fragment but not registered where the layout has it is refused up front.
  ob.block_regions[1] = ob.block_regions[0];
  auto bad = ExecuteFragment(*b, lb, target.data(), std::vector<bool>(32, false), fb, ob);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("block 1 of 'm' is not registered where the layout has it"),
            std::string::npos)
      << bad.status().message();
}

// "a" holds a model and sends every slice to "b", which relays it to "c", each over real
// transports ("a"'s possibly behind a fault injector), by the given method, in pieces.
struct Chain {
  explicit Chain(SliceMethod method, const std::string& faults_at_a = "") : m(8, 256 << 10) {
    if (faults_at_a.empty()) {
      a = Make("a");
    } else {
      UcxOptions uo;
      uo.name = "a";
      uo.tls = "tcp";
      uo.listen_address = testing::Host() + ":0";
      auto inner = MakeTransport(std::string(testing::kBackend), uo);
      auto faults = FaultOptions::Parse(faults_at_a);
      EXPECT_TRUE(inner.ok() && faults.ok());
      a = MakeFaultTransport(std::move(*inner), *faults);
      EXPECT_TRUE(a->Start().ok());
    }
    b = Make("b");
    c = Make("c");
    EXPECT_TRUE(Wait([&](Done d) { a->Connect("b", b->address(), d); }).ok());
    EXPECT_TRUE(Wait([&](Done d) { b->Connect("c", c->address(), d); }).ok());
    std::memset(at_b.data(), 0, at_b.size());
    std::memset(at_c.data(), 0, at_c.size());
    auto r1 = a->Register(m.source.data(), m.source.size(), MemoryKind::kHost);
    auto r2 = b->Register(at_b.data(), at_b.size(), MemoryKind::kHost);
    auto r3 = c->Register(at_c.data(), at_c.size(), MemoryKind::kHost);
    EXPECT_TRUE(r1.ok() && r2.ok() && r3.ok());
    ra = std::move(*r1);
    rb = std::move(*r2);
    rc = std::move(*r3);
    for (uint32_t i = 0; i < 8; ++i) {
      fa.sends.push_back({i, "b", i});
      fb.receives.push_back({i, "a", i});
      fb.sends.push_back({i + 1, "c", i});
      fc.receives.push_back({i + 1, "b", i});
    }
    for (auto* o : {&oa, &ob, &oc}) {
      o->method = method;
      o->pieces = 16;  // of 16 KiB
      o->window = 8;
      o->timeline = true;
      o->deadline = 20;
    }
    oa.region = ra.get();
    ob.region = rb.get();
    oc.region = rc.get();
  }

  void Run() {
    auto from_a = std::async(std::launch::async, [&] {
      return ExecuteFragment(*a, m.layout, m.source.data(), std::vector<bool>(8, true), fa, oa);
    });
    auto to_c = std::async(std::launch::async, [&] {
      return ExecuteFragment(*c, m.layout, at_c.data(), std::vector<bool>(8, false), fc, oc);
    });
    relayed = ExecuteFragment(*b, m.layout, at_b.data(), std::vector<bool>(8, false), fb, ob);
    sent = from_a.get();
    received = to_c.get();
  }

  Model m;
  std::unique_ptr<Transport> a, b, c;
  AlignedBuffer at_b{m.layout.buffer_bytes}, at_c{m.layout.buffer_bytes};
  std::unique_ptr<MemoryRegion> ra, rb, rc;  // after the transports: unregistered first
  PlanFragment fa{"a", {}, {}}, fb{"b", {}, {}}, fc{"c", {}, {}};
  ExecutorOptions oa, ob, oc;
  Result<ExecutorReport> sent = Internal("not run"), relayed = Internal("not run"), received = Internal("not run");
};

// Slices move in pieces, and a relay forwards each piece as soon as it has landed (cut-through):
// "b" starts sending every slice on to "c" before the slice has all reached it, and "c" still
// gets every byte, each slice checked whole. Store-and-forward would post each slice onward only
// once all of it had landed at "b".
TEST_P(ExecutorTest, ARelayForwardsASliceWhileItIsStillArriving) {
  MODELCAST_SKIP_WITHOUT_BACKEND();
  Chain chain(GetParam());
  chain.Run();
  ASSERT_TRUE(chain.relayed.ok()) << chain.relayed.status().ToString();
  ASSERT_TRUE(chain.sent.ok()) << chain.sent.status().ToString();
  ASSERT_TRUE(chain.received.ok()) << chain.received.status().ToString();
  EXPECT_EQ(std::memcmp(chain.at_c.data(), chain.m.source.data(), chain.at_c.size()), 0);
  EXPECT_EQ(chain.received->slices_received, 8u);
  EXPECT_EQ(chain.received->corrupt, 0u);
  EXPECT_EQ(chain.relayed->slices_sent, 8u);
  std::map<uint32_t, double> posted_on, landed_at_b;
  for (const auto& mark : chain.relayed->timeline) {
    if (mark.stage == SliceStage::kPosted && mark.peer == "c") posted_on[mark.slice] = mark.at;
    if (mark.stage == SliceStage::kLanded && mark.peer == "a") landed_at_b[mark.slice] = mark.at;
  }
  ASSERT_EQ(posted_on.size(), 8u);
  ASSERT_EQ(landed_at_b.size(), 8u);
  for (uint32_t i = 0; i < 8; ++i) {
    EXPECT_LT(posted_on[i], landed_at_b[i]) << "slice " << i << " went on to 'c' only once it had all reached 'b'";
  }
}

// What a relay forwards before checking can be corrupt: here "a" flips a byte of slice 0's first
// piece, and "b" has passed the bad piece on before its own check fails. "c" finds slice 0 bad
// too and asks "b" again, while "b" is still waiting for its own good copy ("a" delays everything
// by 30 ms): "b" sends it once it holds it, rather than refusing a slice it does not hold yet.
TEST_P(ExecutorTest, ARelayAskedAgainForWhatItForwardedBadSendsItOnceItHoldsIt) {
  MODELCAST_SKIP_WITHOUT_BACKEND();
  Chain chain(GetParam(), "corrupt=1;delay=30ms");
  chain.Run();
  ASSERT_TRUE(chain.relayed.ok()) << chain.relayed.status().ToString();
  ASSERT_TRUE(chain.sent.ok()) << chain.sent.status().ToString();
  ASSERT_TRUE(chain.received.ok()) << chain.received.status().ToString();
  EXPECT_EQ(std::memcmp(chain.at_b.data(), chain.m.source.data(), chain.at_b.size()), 0);
  EXPECT_EQ(std::memcmp(chain.at_c.data(), chain.m.source.data(), chain.at_c.size()), 0);
  EXPECT_EQ(chain.relayed->corrupt, 1u);
  EXPECT_GE(chain.received->corrupt, 1u);
  EXPECT_EQ(chain.received->slices_received, 8u);
  EXPECT_EQ(chain.relayed->slices_sent, 8u + chain.received->corrupt);  // sent again once per bad copy
}

INSTANTIATE_TEST_SUITE_P(Methods, ExecutorTest, ::testing::Values(SliceMethod::kMessages, SliceMethod::kWrites),
                         [](const auto& info) { return std::string(SliceMethodName(info.param)); });

// Two fragments at once over one pair of transports, each on its own channel (as an agent runs
// scale-outs of two models): both models arrive intact, though "a" opens its second channel
// only after "b" has offered on it (those messages wait for the channel).
TEST_P(ExecutorTest, TwoChannelsShareOneTransport) {
  Model m1(32, 64 << 10), m2(16, 128 << 10);
  auto a = Make("a"), b = Make("b");
  ASSERT_TRUE(Wait([&](Done d) { a->Connect("b", b->address(), d); }).ok());
  auto mux_a = ChannelMux::Create(*a);
  auto mux_b = ChannelMux::Create(*b);
  ASSERT_TRUE(mux_a.ok() && mux_b.ok());
  AlignedBuffer t1(m1.layout.buffer_bytes), t2(m2.layout.buffer_bytes);
  auto a1 = (*mux_a)->Open(1), b1 = (*mux_b)->Open(1), b2 = (*mux_b)->Open(2);
  ASSERT_TRUE(a1.ok() && b1.ok() && b2.ok());
  EXPECT_EQ((*mux_a)->Open(1).status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ((*mux_a)->Open(256).status().code(), StatusCode::kInvalidArgument);
  auto rs1 = a->Register(m1.source.data(), m1.source.size(), MemoryKind::kHost);
  auto rs2 = a->Register(m2.source.data(), m2.source.size(), MemoryKind::kHost);
  auto rt1 = b->Register(t1.data(), t1.size(), MemoryKind::kHost);
  auto rt2 = b->Register(t2.data(), t2.size(), MemoryKind::kHost);
  ASSERT_TRUE(rs1.ok() && rs2.ok() && rt1.ok() && rt2.ok());
  auto options = [&](const MemoryRegion* r) {
    ExecutorOptions o;
    o.method = GetParam();
    o.region = r;
    return o;
  };
  auto [f1a, f1b] = OneHop(32);
  auto [f2a, f2b] = OneHop(16);
  auto s1 = std::async(std::launch::async, [&] {
    return ExecuteFragment(**a1, m1.layout, m1.source.data(), std::vector<bool>(32, true), f1a, options(rs1->get()));
  });
  auto r1 = std::async(std::launch::async, [&] {
    return ExecuteFragment(**b1, m1.layout, t1.data(), std::vector<bool>(32, false), f1b, options(rt1->get()));
  });
  auto r2 = std::async(std::launch::async, [&] {
    return ExecuteFragment(**b2, m2.layout, t2.data(), std::vector<bool>(16, false), f2b, options(rt2->get()));
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto a2 = (*mux_a)->Open(2);
  ASSERT_TRUE(a2.ok());
  auto s2 = ExecuteFragment(**a2, m2.layout, m2.source.data(), std::vector<bool>(16, true), f2a, options(rs2->get()));
  ASSERT_TRUE(s2.ok()) << s2.status().ToString();
  auto got2 = r2.get();
  ASSERT_TRUE(got2.ok()) << got2.status().ToString();
  auto got1 = r1.get();
  ASSERT_TRUE(got1.ok()) << got1.status().ToString();
  ASSERT_TRUE(s1.get().ok());
  EXPECT_EQ(std::memcmp(t1.data(), m1.source.data(), t1.size()), 0);
  EXPECT_EQ(std::memcmp(t2.data(), m2.source.data(), t2.size()), 0);
  EXPECT_EQ(got1->slices_received, 32u);
  EXPECT_EQ(got2->slices_received, 16u);
}

// A fragment whose peer never sends ends, once cancelled, with kCancelled naming what it
// still expected.
TEST(ExecutorCancel, ACancelledRunEndsAtOnce) {
  MODELCAST_SKIP_WITHOUT_BACKEND();
  Model m(8, 4096);
  auto a = Make("a"), b = Make("b");
  ASSERT_TRUE(Wait([&](Done d) { a->Connect("b", b->address(), d); }).ok());
  AlignedBuffer target(m.layout.buffer_bytes);
  auto rb = b->Register(target.data(), target.size(), MemoryKind::kHost);
  ASSERT_TRUE(rb.ok());
  auto [fa, fb] = OneHop(8);
  std::atomic<bool> cancel{false};
  ExecutorOptions o;
  o.region = rb->get();
  o.deadline = 60;
  o.cancel = &cancel;
  const auto t0 = std::chrono::steady_clock::now();
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    cancel = true;
  });
  auto r = ExecuteFragment(*b, m.layout, target.data(), std::vector<bool>(8, false), fb, o);
  canceller.join();
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled);
  EXPECT_NE(r.status().message().find("8 slice(s) still expected from 'a'"), std::string::npos)
      << r.status().message();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
}

TEST(ExecutorBadInput, RefusedBeforeAnythingMoves) {
  MODELCAST_SKIP_WITHOUT_BACKEND();
  Model m(8, 4096);
  auto a = Make("a");
  auto [fa, fb] = OneHop(8);
  const std::vector<bool> all(8, true);
  ExecutorOptions o;
  o.method = SliceMethod::kWrites;
  auto r = ExecuteFragment(*a, m.layout, m.source.data(), all, fa, o);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("registered buffer"), std::string::npos) << r.status().message();
  // A registered region that is not the model buffer.
  AlignedBuffer other(4096);
  auto region = a->Register(other.data(), other.size(), MemoryKind::kHost);
  ASSERT_TRUE(region.ok());
  o.region = region->get();
  r = ExecuteFragment(*a, m.layout, m.source.data(), all, fa, o);
  EXPECT_NE(r.status().message().find("not the 32768-byte model buffer"), std::string::npos) << r.status().message();
  // A slice the model does not have; a slice received twice; a slice sent but never held.
  PlanFragment bad = fa;
  bad.sends.push_back({9, "b", 8});
  r = ExecuteFragment(*a, m.layout, m.source.data(), all, bad, {});
  EXPECT_NE(r.status().message().find("plan fragment of 'a' for model 'm' names slice 8 (peer 'b'), but the model has 8"), std::string::npos)
      << r.status().message();
  bad = fb;
  bad.receives.push_back({9, "a", 3});
  r = ExecuteFragment(*a, m.layout, m.source.data(), std::vector<bool>(8, false), bad, {});
  EXPECT_NE(r.status().message().find("receives slice 3 twice"), std::string::npos) << r.status().message();
  r = ExecuteFragment(*a, m.layout, m.source.data(), std::vector<bool>(8, false), fa, {});
  EXPECT_NE(r.status().message().find("neither holds nor receives it"), std::string::npos) << r.status().message();
}

TEST(ExecutorBadInput, UnreachablePeerIsNamed) {
  MODELCAST_SKIP_WITHOUT_BACKEND();
  Model m(8, 4096);
  auto b = Make("b");
  auto [fa, fb] = OneHop(8);
  ExecutorOptions o;
  o.deadline = 10;
  // "b" expects slices from "a", to which it has no connection: it cannot even say how it
  // takes them.
  auto r = ExecuteFragment(*b, m.layout, m.source.data(), std::vector<bool>(8, false), fb, o);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
  EXPECT_NE(r.status().message().find("no connection to peer 'a' from b"), std::string::npos) << r.status().message();
}

// A peer that speaks the executor's protocol badly, by hand.
class Misbehaving : public ::testing::Test {
 protected:
  void SetUp() override {
    MODELCAST_SKIP_WITHOUT_BACKEND();
    a_ = Make("a");
    b_ = Make("b");
    b_->SetMessageHandler([](const IncomingMessage&, AcceptPayload accept) { accept(nullptr, [](Status) {}); });
    ASSERT_TRUE(Wait([&](Done d) { b_->Connect("a", a_->address(), d); }).ok());
  }

  // Runs "a"'s part (sending 8 slices to "b") while `act` plays "b".
  Status RunSender(const std::function<void()>& act, SliceMethod method = SliceMethod::kAuto) {
    auto region = a_->Register(model_.source.data(), model_.source.size(), MemoryKind::kHost);
    EXPECT_TRUE(region.ok());
    ExecutorOptions o;
    o.region = region->get();
    o.method = method;
    o.deadline = 10;
    auto [fa, fb] = OneHop(8);
    auto run = std::async(std::launch::async, [&] {
      return ExecuteFragment(*a_, model_.layout, model_.source.data(), std::vector<bool>(8, true), fa, o);
    });
    // No wait needed: what `act` sends before the executor listens is held by the transport.
    act();
    return run.get().status();
  }

  // Runs "a"'s part receiving 8 slices from "b", by message, while `act` plays "b".
  Status RunReceiver(const std::function<void()>& act);

  Status Offer(const std::string& text) {
    const std::vector<uint8_t> one = {1, 0, 0, 0};
    return Wait([&](Done d) {
      b_->Send("a", kOfferMessage, one, {reinterpret_cast<const uint8_t*>(text.data()), text.size()}, d);
    });
  }

  Model model_{8, 4096};
  std::unique_ptr<Transport> a_, b_;
};

// A receiver offers one region per block it receives: {"block", "base", "region"}.
std::string BlockOffer(const std::vector<std::tuple<uint32_t, uint64_t, std::string>>& blocks) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& [block, base, region] : blocks) j.push_back({{"block", block}, {"base", base}, {"region", region}});
  return j.dump();
}

TEST_F(Misbehaving, RegionTooSmallIsRefused) {
  AlignedBuffer small(4096);
  auto region = b_->Register(small.data(), small.size(), MemoryKind::kHost);
  ASSERT_TRUE(region.ok());
  Status s = RunSender([&] { ASSERT_TRUE(Offer(BlockOffer({{0, 0, (*region)->remote().Serialize()}})).ok()); });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("remote regions offered by 'b': the region of block 0 (4096 bytes from 0) cannot hold "
                             "its 8192 bytes"),
            std::string::npos)
      << s.message();
}

TEST_F(Misbehaving, GarbledRegionIsRefused) {
  Status s = RunSender([&] { ASSERT_TRUE(Offer("not a region").ok()); });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("remote regions offered by 'b': not a list of block regions"), std::string::npos)
      << s.message();
  s = RunSender([&] { ASSERT_TRUE(Offer(BlockOffer({{9, 0, "1:2:ab"}})).ok()); });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("block 9 is not in model 'm' (4 blocks)"), std::string::npos) << s.message();
}

// A receiver that offers the region of one block only: the sender writes nowhere else, and says
// which block it had no region for.
TEST_F(Misbehaving, NoWriteOutsideTheOfferedBlocks) {
  AlignedBuffer block(8192);
  auto region = b_->Register(block.data(), block.size(), MemoryKind::kHost);
  ASSERT_TRUE(region.ok());
  Status s = RunSender([&] { ASSERT_TRUE(Offer(BlockOffer({{0, 0, (*region)->remote().Serialize()}})).ok()); },
                       SliceMethod::kWrites);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'b' offered no region for block 1 of 'm'"), std::string::npos) << s.message();
}

Status Misbehaving::RunReceiver(const std::function<void()>& act) {
  ExecutorOptions o;
  o.method = SliceMethod::kMessages;
  o.deadline = 10;
  auto [fb, fa] = OneHop(8);
  for (auto& r : fa.receives) r.peer = "b";
  fa.node = "a";
  auto run = std::async(std::launch::async, [&] {
    return ExecuteFragment(*a_, model_.layout, model_.source.data(), std::vector<bool>(8, false), fa, o);
  });
  act();
  return run.get().status();
}

// Pieces that overrun their slice, overlap one already sent, or come with a header of the wrong
// size are refused, naming the sender, the slice and the bytes.
TEST_F(Misbehaving, PiecesOutsideTheirSliceOrSentTwiceAreRefused) {
  auto piece = [&](uint32_t slice, uint64_t offset, uint64_t length) {
    std::vector<uint8_t> bytes(length, 7);
    ASSERT_TRUE(Wait([&](Done d) {
                  b_->Send("a", kSliceMessage, EncodePieceHeader({slice, offset, 0}, false), bytes, d);
                }).ok());
  };
  Status s = RunReceiver([&] { piece(2, 4000, 200); });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'b' sent bytes 4000-4200 of slice 2, which the layout says is 4096 bytes"),
            std::string::npos)
      << s.message();
  s = RunReceiver([&] {
    piece(1, 0, 2048);
    piece(1, 1024, 2048);
  });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'b' sent bytes 1024-3072 of slice 1 twice"), std::string::npos) << s.message();
  s = RunReceiver([&] {
    const std::vector<uint8_t> bytes(4096, 7);
    ASSERT_TRUE(Wait([&](Done d) { b_->Send("a", kSliceMessage, EncodeU32(0), bytes, d); }).ok());
  });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("malformed message (type 1) from 'b'"), std::string::npos) << s.message();
}

// A peer that asks for a slice again without having offered to take slices is refused (it was
// taken for a receiver whose offer had come: the run looked the offer up and threw).
TEST_F(Misbehaving, AResendRequestBeforeAnOfferIsRefused) {
  Status s = RunSender([&] { ASSERT_TRUE(Wait([&](Done d) { b_->Send("a", kResendMessage, EncodeU32(0), {}, d); }).ok()); });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'b' asked node 'a' again for slice 0, but has not said how it takes slices (no offer)"),
            std::string::npos)
      << s.message();
}

TEST_F(Misbehaving, SlicesNotInThePlanAreRefused) {
  // "b" claims to have written a slice into "a", which expects nothing from it.
  Status s = RunSender([&] {
    const auto piece = EncodePieceHeader({3, 0, 4096}, true);
    ASSERT_TRUE(Wait([&](Done d) { b_->Send("a", kLandedMessage, piece, {}, d); }).ok());
  });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("unexpected slice 3 of 'm' from 'b'"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace modelcast::fabric
