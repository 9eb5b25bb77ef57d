#include <gtest/gtest.h>

#include "modelcast/common/checksum.h"
#include "modelcast/model/checkpoint.h"
#include "modelcast/model/package.h"
#include "modelcast/model/prepare.h"
#include "support/models.h"
#include "support/temp_dir.h"

namespace modelcast::model {
namespace {
namespace fs = std::filesystem;

PrepareOptions Options(int64_t blocks, uint64_t slice_bytes) {
  PrepareOptions o;
  o.blocks = blocks;
  o.slice_bytes = slice_bytes;
  return o;
}

// Every tensor of the checkpoint is byte-identical in the package, every slice checksum
// matches an independent hash of the block file, and the padding is zero.
void ExpectFaithful(const fs::path& src, const fs::path& pkg_dir) {
  auto ck = HfCheckpoint::Open(src);
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  auto pkg = Package::Open(pkg_dir);
  ASSERT_TRUE(pkg.ok()) << pkg.status().ToString();
  const Manifest& m = pkg->manifest();
  for (const auto& spec : ck->config().ExpectedTensors()) {
    const auto* e = ck->Find(spec.name);
    std::vector<uint8_t> want(e->tensor->nbytes());
    ASSERT_TRUE(e->file->Read(*e->tensor, 0, want).ok());
    std::vector<uint8_t> got;
    ASSERT_TRUE(pkg->ReadTensor(spec.name, &got).ok());
    ASSERT_EQ(got, want) << spec.name;
  }
  for (const auto& b : m.blocks) {
    const std::string bytes = testing::ReadAll(pkg_dir / b.file);
    ASSERT_EQ(bytes.size(), b.file_bytes);
    EXPECT_EQ(bytes.size() % 4096, 0u);
    for (uint32_t k = 0; k < b.num_slices; ++k) {
      const auto& s = m.slices[b.first_slice + k];
      EXPECT_EQ(Xxh3(bytes.data() + s.offset, s.length), s.xxh3) << "slice " << s.index;
    }
    EXPECT_EQ(bytes.find_first_not_of('\0', b.bytes), std::string::npos) << "non-zero padding in " << b.file;
  }
  auto report = pkg->Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok());
  EXPECT_EQ(report->slices_checked, m.slices.size());
  EXPECT_EQ(report->bytes_checked, m.TotalBytes());
}

TEST(PrepareTest, RoundTripAcrossDtypesBlocksAndSlices) {
  testing::TempDir dir;
  int n = 0;
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
    auto so = testing::Tiny(dtype, 7);
    so.tie_word_embeddings = dtype == DType::kF16;
    const fs::path src = dir / ("src" + std::to_string(n));
    testing::Synth(so, src);
    for (int64_t blocks : {1, 2, 3, 4}) {
      for (uint64_t slice : {4096ull, 100ull * 4096, 16ull << 20}) {
        const fs::path dst = dir / ("pkg" + std::to_string(n++));
        auto r = Prepare(src, dst, Options(blocks, slice));
        ASSERT_TRUE(r.ok()) << r.status().ToString();
        EXPECT_EQ(r->manifest.dtype, dtype);
        EXPECT_EQ(static_cast<int64_t>(r->manifest.blocks.size()), blocks);
        ExpectFaithful(src, dst);
      }
    }
  }
}

TEST(PrepareTest, ShardedCheckpointWithChunkSpanningSlices) {
  testing::TempDir dir;
  auto so = testing::Tiny(DType::kF32);
  so.vocab = 20000;  // embeddings of 10 MB: one tensor spans several 8 MiB write chunks
  so.shard_bytes = 3 << 20;
  testing::Synth(so, dir / "src");
  auto r = Prepare(dir / "src", dir / "pkg", Options(2, 3 * 1024 * 1024));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ExpectFaithful(dir / "src", dir / "pkg");
}

TEST(PrepareTest, NameDefaultsToSourceDirectory) {
  testing::TempDir dir;
  testing::Synth(testing::Tiny(), dir / "llama-tiny");
  auto r = Prepare(dir / "llama-tiny/", dir / "pkg", Options(1, 1 << 20));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->manifest.name, "llama-tiny");
  PrepareOptions o = Options(1, 1 << 20);
  o.name = "custom";
  o.replace = true;
  ASSERT_TRUE(Prepare(dir / "llama-tiny", dir / "pkg", o).ok());
  EXPECT_EQ(Package::Open(dir / "pkg")->manifest().name, "custom");
}

TEST(PrepareTest, ExistingDestinationIsKeptUnlessReplace) {
  testing::TempDir dir;
  testing::Synth(testing::Tiny(DType::kBF16, 1), dir / "a");
  testing::Synth(testing::Tiny(DType::kBF16, 2), dir / "b");
  ASSERT_TRUE(Prepare(dir / "a", dir / "pkg", Options(2, 65536)).ok());
  const std::string before = testing::ReadAll(dir / "pkg/manifest.json");
  auto r = Prepare(dir / "b", dir / "pkg", Options(2, 65536));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(testing::ReadAll(dir / "pkg/manifest.json"), before);
  EXPECT_EQ(testing::ListDir(dir.path()), (std::vector<std::string>{"a", "b", "pkg"}));  // no staging left
  PrepareOptions o = Options(2, 65536);
  o.replace = true;
  ASSERT_TRUE(Prepare(dir / "b", dir / "pkg", o).ok());
  EXPECT_NE(testing::ReadAll(dir / "pkg/manifest.json"), before);
  ExpectFaithful(dir / "b", dir / "pkg");
  EXPECT_EQ(testing::ListDir(dir.path()), (std::vector<std::string>{"a", "b", "pkg"}));
}

TEST(PrepareTest, FailureLeavesNothingBehind) {
  testing::TempDir dir;
  testing::Synth(testing::Tiny(), dir / "src");
  // Truncate the safetensors file: the header now promises more bytes than there are.
  const fs::path st = dir / "src/model.safetensors";
  fs::resize_file(st, fs::file_size(st) - 100);
  auto r = Prepare(dir / "src", dir / "pkg", Options(2, 65536));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(st.string()), std::string::npos) << r.status().message();
  EXPECT_EQ(testing::ListDir(dir.path()), std::vector<std::string>{"src"});
  // More blocks than layers.
  testing::Synth(testing::Tiny(), dir / "ok");
  auto r2 = Prepare(dir / "ok", dir / "pkg", Options(5, 65536));
  ASSERT_FALSE(r2.ok());
  EXPECT_NE(r2.status().message().find("more than the model's 4 layers"), std::string::npos);
  EXPECT_EQ(testing::ListDir(dir.path()), (std::vector<std::string>{"ok", "src"}));
}

TEST(PrepareTest, VerifyNamesTheFlippedSlice) {
  testing::TempDir dir;
  testing::Synth(testing::Tiny(), dir / "src");
  ASSERT_TRUE(Prepare(dir / "src", dir / "pkg", Options(2, 65536)).ok());
  auto pkg = Package::Open(dir / "pkg");
  ASSERT_TRUE(pkg.ok());
  const auto& m = pkg->manifest();
  // Flip a byte in block 1, slice 2 of that block.
  const auto& b1 = m.blocks[1];
  ASSERT_GE(b1.num_slices, 3u);
  testing::FlipByte(dir / "pkg" / b1.file, m.slices[b1.first_slice + 2].offset + 123);
  auto report = pkg->Verify();
  ASSERT_TRUE(report.ok());
  ASSERT_EQ(report->bad.size(), 1u);
  const BadSlice& bad = report->bad.front();
  EXPECT_EQ(bad.block, 1u);
  EXPECT_EQ(bad.slice_in_block, 2u);
  EXPECT_EQ(bad.slice, b1.first_slice + 2);
  const std::string msg = pkg->Describe(bad);
  EXPECT_NE(msg.find("block 1 slice 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("block-0001.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("checksum mismatch"), std::string::npos) << msg;
  // ReadSlice refuses the bad slice and accepts a good one.
  std::vector<uint8_t> buf(m.slices[bad.slice].length);
  EXPECT_EQ(pkg->ReadSlice(bad.slice, buf).code(), StatusCode::kCorruption);
  std::vector<uint8_t> good(m.slices[0].length);
  EXPECT_TRUE(pkg->ReadSlice(0, good).ok());
}

TEST(PrepareTest, VerifyCatchesDirtyPaddingAndWrongSizes) {
  testing::TempDir dir;
  testing::Synth(testing::Tiny(), dir / "src");
  ASSERT_TRUE(Prepare(dir / "src", dir / "pkg", Options(2, 65536)).ok());
  auto pkg = Package::Open(dir / "pkg");
  const auto& b0 = pkg->manifest().blocks[0];
  ASSERT_GT(b0.file_bytes, b0.bytes);
  testing::FlipByte(dir / "pkg" / b0.file, b0.file_bytes - 1);
  auto report = pkg->Verify();
  ASSERT_TRUE(report.ok());
  ASSERT_EQ(report->bad.size(), 1u);
  EXPECT_NE(report->bad[0].problem.find("padding"), std::string::npos);
  fs::resize_file(dir / "pkg" / b0.file, b0.file_bytes + 4096);
  auto reopened = Package::Open(dir / "pkg");
  ASSERT_FALSE(reopened.ok());
  EXPECT_EQ(reopened.status().code(), StatusCode::kCorruption);
  EXPECT_NE(reopened.status().message().find("block-0000.bin"), std::string::npos);
  fs::remove(dir / "pkg" / b0.file);
  EXPECT_EQ(Package::Open(dir / "pkg").status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace modelcast::model
