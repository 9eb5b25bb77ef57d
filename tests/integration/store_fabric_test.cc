// The fabric receiving straight into the tiered store: a sender serves a model from its store's
// host pool, the receiver's executor lands every slice in its store's pool (registered once
// with the transport), the store records each slice and writes complete blocks behind to SSD.
#include <gtest/gtest.h>

#include <cstdio>
#include <future>

#include "modelcast/model/package.h"

#include "modelcast/fabric/executor.h"
#include "support/store_fixture.h"
#include "support/temp_dir.h"
#include "support/transports.h"

namespace modelcast::tiers {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using fabric::testing::Make;
using fabric::testing::Wait;

class StoreFabricTest : public ::testing::TestWithParam<fabric::SliceMethod> {};

TEST_P(StoreFabricTest, ReceivesIntoTheHostPoolAndWritesBehind) {
  testing::TempDir dir;
  testing::MakePackage(dir.path(), dir / "a-ssd" / "m", "m");
  auto src_store = Store::Open(testing::SmallStore(dir / "a-ssd", 16 << 20));
  auto dst_store = Store::Open(testing::SmallStore(dir / "b-ssd", 16 << 20));
  ASSERT_TRUE(src_store.ok() && dst_store.ok());
  Store& src = **src_store;
  Store& dst = **dst_store;
  const auto manifest = *src.FindModel("m");
  const uint32_t nslices = static_cast<uint32_t>(manifest.slices.size());

  // The sender's copy: promoted to host and pinned there for the transfer.
  auto up = src.Promote("m", {}, Tier::kHost);
  ASSERT_TRUE(up.ok());
  ASSERT_TRUE((*up)->Wait(30s).ok());
  std::vector<Lease> src_leases;
  std::vector<uint64_t> src_offsets;
  for (const auto& b : manifest.blocks) {
    auto l = src.Acquire("m", b.index, Tier::kHost);
    ASSERT_TRUE(l.ok());
    src_offsets.push_back(l->pool_offset());
    src_leases.push_back(std::move(*l));
  }
  // The receiver's buffers: one per block in its pool, pinned until the blocks are complete.
  ASSERT_TRUE(dst.AddModel(manifest).ok());
  std::vector<Lease> dst_leases;
  std::vector<uint64_t> dst_offsets;
  for (const auto& b : manifest.blocks) {
    auto l = dst.ReserveForReceive("m", b.index);
    ASSERT_TRUE(l.ok()) << l.status().ToString();
    dst_offsets.push_back(l->pool_offset());
    dst_leases.push_back(std::move(*l));
  }
  const auto src_layout = fabric::ModelLayout::FromManifest(manifest, src_offsets, src.host_pool_size());
  const auto dst_layout = fabric::ModelLayout::FromManifest(manifest, dst_offsets, dst.host_pool_size());

  auto a = Make("a"), b = Make("b");
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(Wait([&](fabric::Done d) { a->Connect("b", b->address(), d); }).ok());
  auto ra = a->Register(src.host_pool_base(), src.host_pool_size(), fabric::MemoryKind::kHost);
  auto rb = b->Register(dst.host_pool_base(), dst.host_pool_size(), fabric::MemoryKind::kHost);
  ASSERT_TRUE(ra.ok() && rb.ok());
  fabric::PlanFragment fa{"a", {}, {}}, fb{"b", {}, {}};
  for (uint32_t i = 0; i < nslices; ++i) {
    fa.sends.push_back({i, "b", i});
    fb.receives.push_back({i, "a", i});
  }
  fabric::ExecutorOptions oa, ob;
  oa.method = ob.method = GetParam();
  oa.region = ra->get();
  ob.region = rb->get();
  std::atomic<int> landed_errors{0};
  ob.on_slice = [&](const SliceEvent& e) {
    Status st = dst.Landed(e.model, e.slice);
    if (!st.ok()) landed_errors++;
    return st;
  };
  auto sender = std::async(std::launch::async, [&] {
    return fabric::ExecuteFragment(*a, src_layout, src.host_pool_base(), std::vector<bool>(nslices, true), fa, oa);
  });
  auto got = fabric::ExecuteFragment(*b, dst_layout, dst.host_pool_base(), std::vector<bool>(nslices, false), fb, ob);
  auto sent = sender.get();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_TRUE(sent.ok()) << sent.status().ToString();
  EXPECT_EQ(landed_errors.load(), 0);
  dst_leases.clear();

  ASSERT_TRUE(dst.FlushWriteBehind("m", 30s).ok());
  const auto inventory = dst.GetInventory();
  const auto* h = inventory.Find("m");
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->slices[int(Tier::kHost)].size(), nslices);
  EXPECT_EQ(h->slices[int(Tier::kSsd)].size(), nslices);
  EXPECT_TRUE(h->ssd_complete);
  for (const auto& blk : manifest.blocks) {
    auto l = dst.Acquire("m", blk.index, Tier::kHost);
    ASSERT_TRUE(l.ok());
    EXPECT_TRUE(testing::BlockIntact(manifest, blk.index, l->data()));
  }
  auto pkg = model::Package::Open(dir / "b-ssd" / "m");
  ASSERT_TRUE(pkg.ok()) << pkg.status().ToString();
  EXPECT_TRUE(pkg->Verify()->ok());
}

// A slice the store refuses to record fails the run, naming node, model, block, slice and the
// store's reason, and is not counted: the receiver's store keeps block 3 under another model
// (a buffer it never reserved for "m"), so Landed refuses m's slices there.
TEST(StoreFabricRefusal, ASliceTheStoreRefusesFailsTheRunAndIsNotCounted) {
  testing::TempDir dir;
  testing::MakePackage(dir.path(), dir / "a-ssd" / "m", "m");
  testing::MakePackage(dir.path(), dir / "pkg-other", "other", 1);
  auto src_store = Store::Open(testing::SmallStore(dir / "a-ssd", 16 << 20));
  auto dst_store = Store::Open(testing::SmallStore(dir / "b-ssd", 16 << 20));
  ASSERT_TRUE(src_store.ok() && dst_store.ok());
  Store& src = **src_store;
  Store& dst = **dst_store;
  const auto manifest = *src.FindModel("m");
  const uint32_t nslices = static_cast<uint32_t>(manifest.slices.size());
  auto up = src.Promote("m", {}, Tier::kHost);
  ASSERT_TRUE(up.ok());
  ASSERT_TRUE((*up)->Wait(30s).ok());
  std::vector<Lease> leases;
  std::vector<uint64_t> src_offsets, dst_offsets;
  for (const auto& b : manifest.blocks) {
    auto l = src.Acquire("m", b.index, Tier::kHost);
    ASSERT_TRUE(l.ok());
    src_offsets.push_back(l->pool_offset());
    leases.push_back(std::move(*l));
  }
  ASSERT_TRUE(dst.AddModel(manifest).ok());
  auto other = model::Package::Open(dir / "pkg-other");
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(dst.AddModel(other->manifest()).ok());
  const uint32_t last = static_cast<uint32_t>(manifest.blocks.size() - 1);
  for (const auto& b : manifest.blocks) {
    auto l = b.index == last ? dst.ReserveForReceive("other", b.index) : dst.ReserveForReceive("m", b.index);
    ASSERT_TRUE(l.ok()) << l.status().ToString();
    dst_offsets.push_back(l->pool_offset());
    leases.push_back(std::move(*l));
  }
  const auto src_layout = fabric::ModelLayout::FromManifest(manifest, src_offsets, src.host_pool_size());
  const auto dst_layout = fabric::ModelLayout::FromManifest(manifest, dst_offsets, dst.host_pool_size());
  auto a = Make("a"), b = Make("b");
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(Wait([&](fabric::Done d) { a->Connect("b", b->address(), d); }).ok());
  fabric::PlanFragment fa{"a", {}, {}}, fb{"b", {}, {}};
  for (uint32_t i = 0; i < nslices; ++i) {
    fa.sends.push_back({i, "b", i});
    fb.receives.push_back({i, "a", i});
  }
  std::atomic<bool> cancel_sender{false};
  fabric::ExecutorOptions oa, ob;
  oa.method = ob.method = fabric::SliceMethod::kMessages;
  oa.cancel = &cancel_sender;
  std::vector<uint32_t> recorded;
  ob.on_slice = [&](const SliceEvent& e) {
    Status st = dst.Landed(e.model, e.slice);
    if (st.ok()) recorded.push_back(e.slice);
    return st;
  };
  auto sender = std::async(std::launch::async, [&] {
    return fabric::ExecuteFragment(*a, src_layout, src.host_pool_base(), std::vector<bool>(nslices, true), fa, oa);
  });
  auto got = fabric::ExecuteFragment(*b, dst_layout, dst.host_pool_base(), std::vector<bool>(nslices, false), fb, ob);
  cancel_sender = true;  // the coordinator's part, once the receiver has failed
  (void)sender.get();
  ASSERT_FALSE(got.ok());
  const std::string why = got.status().message();
  std::printf("the receiver's run: %s\n", got.status().ToString().c_str());
  const uint32_t first_refused = manifest.blocks[last].first_slice;
  EXPECT_EQ(got.status().code(), StatusCode::kFailedPrecondition) << why;
  EXPECT_NE(why.find("node 'b'"), std::string::npos) << why;
  EXPECT_NE(why.find("model 'm'"), std::string::npos) << why;
  EXPECT_NE(why.find("(block " + std::to_string(last) + ")"), std::string::npos) << why;
  const auto named = why.find("could not keep slice ");
  ASSERT_NE(named, std::string::npos) << why;
  const uint32_t refused = static_cast<uint32_t>(std::stoul(why.substr(named + 21)));
  EXPECT_GE(refused, first_refused) << why;  // a slice of the block the store has no buffer for
  EXPECT_NE(why.find("no host buffer"), std::string::npos) << why;  // the store's own reason
  // Nothing of block 3 is recorded: the store does not count the node as holding it.
  const auto inventory = dst.GetInventory();
  const auto* h = inventory.Find("m");
  ASSERT_NE(h, nullptr);
  for (uint32_t s : h->slices[int(Tier::kHost)]) EXPECT_LT(s, first_refused);
  for (uint32_t s : recorded) EXPECT_LT(s, first_refused);
}

INSTANTIATE_TEST_SUITE_P(Methods, StoreFabricTest,
                         ::testing::Values(fabric::SliceMethod::kMessages, fabric::SliceMethod::kWrites),
                         [](const auto& info) { return std::string(fabric::SliceMethodName(info.param)); });

}  // namespace
}  // namespace modelcast::tiers
