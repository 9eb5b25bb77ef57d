#include <gtest/gtest.h>

#include "modelcast/common/file_util.h"
#include "support/temp_dir.h"

namespace modelcast {
namespace {
namespace fs = std::filesystem;

TEST(FileUtilTest, ReadsAndWritesFully) {
  testing::TempDir dir;
  auto f = File::Create(dir / "a");
  ASSERT_TRUE(f.ok());
  const std::string data = "hello world";
  ASSERT_TRUE(f->PWriteFull(0, {reinterpret_cast<const uint8_t*>(data.data()), data.size()}).ok());
  ASSERT_TRUE(f->Close().ok());
  auto r = File::OpenRead(dir / "a");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r->Size(), data.size());
  uint8_t buf[5];
  ASSERT_TRUE(r->PReadFull(6, buf).ok());
  EXPECT_EQ(std::string(reinterpret_cast<char*>(buf), 5), "world");
  uint8_t big[20];
  Status s = r->PReadFull(0, big);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  EXPECT_NE(s.message().find((dir / "a").string()), std::string::npos);
}

TEST(FileUtilTest, OpenErrorNamesPath) {
  auto f = File::OpenRead("/nonexistent/modelcast/file");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().message(), "open /nonexistent/modelcast/file: No such file or directory");
}

TEST(FileUtilTest, WriteFileAtomicLeavesNoTemporaries) {
  testing::TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir / "m.json", "one").ok());
  ASSERT_TRUE(WriteFileAtomic(dir / "m.json", "two").ok());
  EXPECT_EQ(testing::ReadAll(dir / "m.json"), "two");
  EXPECT_EQ(testing::ListDir(dir.path()), std::vector<std::string>{"m.json"});
  EXPECT_FALSE(WriteFileAtomic(dir / "no/such/dir/m.json", "x").ok());
}

TEST(FileUtilTest, ReadFileToStringRefusesHugeFiles) {
  testing::TempDir dir;
  testing::WriteAll(dir / "f", std::string(100, 'x'));
  EXPECT_EQ(ReadFileToString(dir / "f", 99).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadFileToString(dir / "f", 100)->size(), 100u);
}

TEST(FileUtilTest, StagingDirectoryCommitsAtomically) {
  testing::TempDir dir;
  {
    auto st = StagingDirectory::Create(dir / "pkg");
    ASSERT_TRUE(st.ok());
    testing::WriteAll(st->path() / "x", "new");
    EXPECT_FALSE(fs::exists(dir / "pkg"));
    ASSERT_TRUE(st->Commit(false).ok());
  }
  EXPECT_EQ(testing::ReadAll(dir / "pkg/x"), "new");
  EXPECT_EQ(testing::ListDir(dir.path()), std::vector<std::string>{"pkg"});
}

TEST(FileUtilTest, StagingDirectoryRemovedWhenNotCommitted) {
  testing::TempDir dir;
  {
    auto st = StagingDirectory::Create(dir / "pkg");
    ASSERT_TRUE(st.ok());
    testing::WriteAll(st->path() / "x", "partial");
  }
  EXPECT_TRUE(testing::ListDir(dir.path()).empty());
}

TEST(FileUtilTest, StagingDirectoryRefusesOrReplacesExisting) {
  testing::TempDir dir;
  fs::create_directory(dir / "pkg");
  testing::WriteAll(dir / "pkg/old", "old");
  {
    auto st = StagingDirectory::Create(dir / "pkg");
    ASSERT_TRUE(st.ok());
    testing::WriteAll(st->path() / "new", "new");
    Status s = st->Commit(false);
    EXPECT_EQ(s.code(), StatusCode::kAlreadyExists);
    EXPECT_NE(s.message().find("--force"), std::string::npos);
  }
  EXPECT_EQ(testing::ListDir(dir / "pkg"), std::vector<std::string>{"old"});
  {
    auto st = StagingDirectory::Create(dir / "pkg");
    testing::WriteAll(st->path() / "new", "new");
    ASSERT_TRUE(st->Commit(true).ok());
  }
  EXPECT_EQ(testing::ListDir(dir / "pkg"), std::vector<std::string>{"new"});
  EXPECT_EQ(testing::ListDir(dir.path()), std::vector<std::string>{"pkg"});
}

TEST(FileUtilTest, StagingDirectoryNeedsAnExistingParent) {
  auto st = StagingDirectory::Create("/nonexistent/modelcast/pkg");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find("/nonexistent/modelcast"), std::string::npos);
}

TEST(FileUtilTest, AlignedBufferIsAligned) {
  AlignedBuffer b(10000, 4096);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 4096, 0u);
  EXPECT_EQ(b.size(), 10000u);
  AlignedBuffer moved = std::move(b);
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(moved.size(), 10000u);
}

}  // namespace
}  // namespace modelcast
