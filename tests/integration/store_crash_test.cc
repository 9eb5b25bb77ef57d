// The tiered store against crashes and full disks: a real `modelcast store import` process
// killed with SIGKILL mid write-behind, and real tmpfs mounts that run out of space or are
// read-only (these need root and skip without it).
#include <gtest/gtest.h>

#include <sys/mount.h>
#include <unistd.h>

#include <chrono>

#include <nlohmann/json.hpp>

#include "support/process.h"
#include "support/store_fixture.h"
#include "support/temp_dir.h"

namespace modelcast::tiers {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::TempDir;
using testing::TmpfsMount;
using testing::ToolPath;

model::Manifest ReadManifest(const fs::path& pkg) {
  auto p = model::Package::Open(pkg);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return p.ok() ? p->manifest() : model::Manifest{};
}

TEST(StoreCrashTest, SigkillDuringWriteBehindLeavesTheOldCopyOrTheNew) {
  TempDir dir;
  // Two versions of one model, "llm": ~100 MB each, so an import takes a while.
  for (int v : {0, 1}) {
    model::SynthOptions o;
    o.preset = "small";
    o.seed = static_cast<uint64_t>(v);
    testing::Synth(o, dir / ("src" + std::to_string(v)));
    model::PrepareOptions p;
    p.blocks = 8;
    p.slice_bytes = 4 << 20;
    p.name = "llm";
    p.fsync = false;
    ASSERT_TRUE(model::Prepare(dir / ("src" + std::to_string(v)), dir / ("v" + std::to_string(v)), p).ok());
  }
  const std::string old_m = ReadManifest(dir / "v0").Serialize();
  const std::string new_m = ReadManifest(dir / "v1").Serialize();
  ASSERT_NE(old_m, new_m);
  const std::string ssd = (dir / "ssd").string();
  auto import = [&](const std::string& pkg) {
    return std::vector<std::string>{ToolPath("modelcast"), "store", "import",   pkg, "--ssd-dir", ssd,
                                    "--host-capacity",     "48MiB", "--replace"};
  };
  auto first = testing::RunProcess(import((dir / "v0").string()), 120s);
  ASSERT_EQ(first.exit_code, 0) << first.err;

  // Kill points: after the importer has received (and queued for write-behind) block k, and
  // once after it has finished. Before its last block is written, only the old copy may show.
  int saw_old = 0, saw_new = 0;
  for (const std::string kill_after :
       {"received block 0", "received block 3", "received block 6", "received block 7", "imported model"}) {
    SCOPED_TRACE("killed after '" + kill_after + "'");
    {
      testing::Child child(import((dir / "v1").string()));
      ASSERT_TRUE(child.WaitForOutput(kill_after, 120s));
      child.Kill(SIGKILL);
      child.Wait(30s);
    }
    auto inv = testing::RunProcess({ToolPath("modelcast"), "store", "inventory", "--ssd-dir", ssd, "--json"}, 60s);
    ASSERT_EQ(inv.exit_code, 0) << inv.err;
    auto j = nlohmann::json::parse(inv.out);
    ASSERT_EQ(j["models"].size(), 1u) << inv.out;
    EXPECT_EQ(j["models"][0]["model"], "llm");
    EXPECT_TRUE(j["models"][0]["ssd_complete"].get<bool>()) << inv.out;
    EXPECT_EQ(j["models"][0]["ssd"], j["models"][0]["slices"]) << inv.out;
    // Nothing half-written is left, and what is there is one whole version.
    EXPECT_EQ(testing::ListDir(dir / "ssd"), std::vector<std::string>{"llm"});
    auto pkg = model::Package::Open(dir / "ssd" / "llm");
    ASSERT_TRUE(pkg.ok()) << pkg.status().ToString();
    const std::string on_disk = pkg->manifest().Serialize();
    ASSERT_TRUE(on_disk == old_m || on_disk == new_m);
    if (kill_after != "received block 7" && kill_after != "imported model") {
      EXPECT_EQ(on_disk, old_m) << "a copy missing its last block cannot have replaced the old one";
    }
    if (kill_after == "imported model") {
      EXPECT_EQ(on_disk, new_m);
    }
    (on_disk == old_m ? saw_old : saw_new)++;
    auto report = pkg->Verify();
    ASSERT_TRUE(report.ok());
    EXPECT_TRUE(report->ok()) << pkg->Describe(report->bad.front());
    // Put the old version back for the next round.
    if (on_disk == new_m) {
      auto back = testing::RunProcess(import((dir / "v0").string()), 120s);
      ASSERT_EQ(back.exit_code, 0) << back.err;
    }
  }
  EXPECT_GE(saw_old, 3);
  EXPECT_GE(saw_new, 1);
}

TEST(StoreCrashTest, FullDiskMidWriteKeepsThePreviousCopy) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs";
  TempDir dir;
  testing::MakePackage(dir.path(), dir / "v0", "m", 0);
  testing::MakePackage(dir.path(), dir / "v1", "m", 5);
  const auto v0 = ReadManifest(dir / "v0");
  uint64_t total = 0;
  for (const auto& b : v0.blocks) total += b.file_bytes;
  // Room for one copy and a half: the second copy runs out of space while it is staged.
  TmpfsMount mount(dir / "ssd", "size=" + std::to_string(total * 3 / 2 + 64 * 1024));
  if (!mount.ok()) GTEST_SKIP() << mount.why();
  auto put = testing::RunProcess(
      {ToolPath("modelcast"), "store", "import", (dir / "v0").string(), "--ssd-dir", (dir / "ssd").string()}, 60s);
  ASSERT_EQ(put.exit_code, 0) << put.err;

  auto v1 = model::Package::Open(dir / "v1");
  ASSERT_TRUE(v1.ok());
  {
    auto store = Store::Open(testing::SmallStore(dir / "ssd", 16 << 20));
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    ASSERT_TRUE((*store)->AddModel(v1->manifest(), true).ok());
    for (const auto& b : v1->manifest().blocks) {
      auto lease = (*store)->ReserveForReceive("m", b.index);
      ASSERT_TRUE(lease.ok()) << lease.status().ToString();
      for (uint32_t s = b.first_slice; s < b.first_slice + b.num_slices; ++s) {
        const auto& se = v1->manifest().slices[s];
        ASSERT_TRUE(v1->ReadSlice(s, {lease->data() + se.offset, se.length}).ok());
        ASSERT_TRUE((*store)->Landed("m", s).ok());
      }
    }
    Status st = (*store)->FlushWriteBehind("m", 30s);
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message().find("No space left on device"), std::string::npos) << st.ToString();
    EXPECT_NE(st.message().find("of model 'm'"), std::string::npos) << st.ToString();
    EXPECT_FALSE((*store)->GetInventory().Find("m")->ssd_complete);
  }
  EXPECT_EQ(testing::ListDir(dir / "ssd"), std::vector<std::string>{"m"});
  auto pkg = model::Package::Open(dir / "ssd" / "m");
  ASSERT_TRUE(pkg.ok());
  EXPECT_EQ(pkg->manifest().Serialize(), v0.Serialize());
  EXPECT_TRUE(pkg->Verify()->ok());

  // The old copy is served as before.
  auto store = Store::Open(testing::SmallStore(dir / "ssd", 16 << 20));
  ASSERT_TRUE(store.ok());
  auto req = (*store)->Promote("m", {}, Tier::kHost);
  ASSERT_TRUE(req.ok());
  ASSERT_TRUE((*req)->Wait(30s).ok());
  auto lease = (*store)->Acquire("m", 1, Tier::kHost);
  ASSERT_TRUE(lease.ok());
  EXPECT_TRUE(testing::BlockIntact(v0, 1, lease->data()));
}

TEST(StoreCrashTest, ReadOnlyTierPathIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a read-only tmpfs";
  TempDir dir;
  TmpfsMount mount(dir / "ro", "size=1m", MS_RDONLY);
  if (!mount.ok()) GTEST_SKIP() << mount.why();
  Status st = Store::Open(testing::SmallStore(dir / "ro", 1 << 20)).status();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("ssd tier: " + (dir / "ro").string() + " is not writable"), std::string::npos)
      << st.ToString();
  EXPECT_NE(st.message().find("Read-only file system"), std::string::npos) << st.ToString();
}

}  // namespace
}  // namespace modelcast::tiers
