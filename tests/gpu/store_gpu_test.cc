// The store's GPU tier on a real device: SSD -> host -> GPU promotion on several streams,
// demotion back to host, keep-alive. Skips (with the reason) where there is no GPU.
#include <gtest/gtest.h>

#include <vector>

#include "modelcast/tiers/gpu.h"
#include "support/store_fixture.h"
#include "support/temp_dir.h"

namespace modelcast::tiers {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;

class StoreGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (gpu::Probe(&why).empty()) GTEST_SKIP() << "no GPU: " << why;
    testing::MakePackage(dir_.path(), dir_ / "ssd" / "m", "m");
    auto pkg = model::Package::Open(dir_ / "ssd" / "m");
    ASSERT_TRUE(pkg.ok());
    manifest_ = pkg->manifest();
  }
  // Copies a GPU-resident block back to host memory and checks every slice.
  ::testing::AssertionResult GpuBlockIntact(const Lease& lease) {
    std::vector<uint8_t> host(lease.size());
    Status st = gpu::CopySync(0, gpu::Direction::kDeviceToHost, host.data(), lease.data(), lease.size());
    if (!st.ok()) return ::testing::AssertionFailure() << st.ToString();
    return testing::BlockIntact(manifest_, lease.block(), host.data());
  }
  testing::TempDir dir_;
  model::Manifest manifest_;
};

TEST_F(StoreGpuTest, PromotesFromSsdToGpuAndDemotesBack) {
  double now = 0;
  auto o = testing::SmallStore(dir_ / "ssd", 64 << 20);
  o.gpu_capacity = 64 << 20;
  o.clock = [&] { return now; };
  o.keep_alive = 10;
  auto store = Store::Open(o);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  ASSERT_TRUE((*store)->has_gpu());
  std::atomic<int> events{0};
  auto req = (*store)->Promote("m", {}, Tier::kGpu, {[&](const SliceEvent& e) {
                                 EXPECT_EQ(e.source, "ssd");
                                 events++;
                               }});
  ASSERT_TRUE(req.ok()) << req.status().ToString();
  ASSERT_TRUE((*req)->Wait(30s).ok());
  EXPECT_EQ(events.load(), static_cast<int>(manifest_.slices.size()));
  for (const auto& b : manifest_.blocks) {
    auto lease = (*store)->Acquire("m", b.index, Tier::kGpu);
    ASSERT_TRUE(lease.ok()) << lease.status().ToString();
    EXPECT_TRUE(GpuBlockIntact(*lease));
  }
  // Keep-alive ran out: GPU copies go down to host memory, not away.
  now = 100;
  (*store)->Maintain();
  const auto inv = (*store)->GetInventory();
  EXPECT_TRUE(inv.Find("m")->slices[int(Tier::kGpu)].empty());
  EXPECT_EQ(inv.Find("m")->slices[int(Tier::kHost)].size(), manifest_.slices.size());
  // Host -> GPU again, then an explicit demotion of one block.
  req = (*store)->Promote("m", {1}, Tier::kGpu, {[&](const SliceEvent& e) { EXPECT_EQ(e.source, "host"); }});
  ASSERT_TRUE(req.ok());
  ASSERT_TRUE((*req)->Wait(30s).ok());
  auto d = (*store)->Demote("m", {1}, Tier::kHost);
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE((*d)->Wait(30s).ok());
  EXPECT_FALSE((*store)->Acquire("m", 1, Tier::kGpu).ok());
  auto host = (*store)->Acquire("m", 1, Tier::kHost);
  ASSERT_TRUE(host.ok());
  EXPECT_TRUE(testing::BlockIntact(manifest_, 1, host->data()));
}

TEST_F(StoreGpuTest, GpuEvictionDemotesToHostAndNeverTouchesPinnedBlocks) {
  uint64_t max_block = 0;
  for (const auto& b : manifest_.blocks) max_block = std::max(max_block, b.file_bytes);
  auto o = testing::SmallStore(dir_ / "ssd", 64 << 20);
  o.gpu_capacity = 2 * max_block + 4096;
  auto store = Store::Open(o);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  for (uint32_t b = 0; b < manifest_.blocks.size(); ++b) {
    auto req = (*store)->Promote("m", {b}, Tier::kGpu);
    ASSERT_TRUE(req.ok());
    ASSERT_TRUE((*req)->Wait(30s).ok()) << "block " << b;
  }
  const auto inv = (*store)->GetInventory();
  ASSERT_NE(inv.Usage(Tier::kGpu), nullptr);
  EXPECT_LE(inv.Usage(Tier::kGpu)->used, inv.Usage(Tier::kGpu)->capacity);
  EXPECT_GT((*store)->counters().evictions[int(Tier::kGpu)], 0u);
  auto last = (*store)->Acquire("m", static_cast<uint32_t>(manifest_.blocks.size() - 1), Tier::kGpu);
  ASSERT_TRUE(last.ok());
  EXPECT_TRUE(GpuBlockIntact(*last));
}

}  // namespace
}  // namespace modelcast::tiers
