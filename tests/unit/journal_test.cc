#include "modelcast/common/journal.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <csignal>
#include <filesystem>

#include "support/temp_dir.h"

namespace modelcast {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

std::vector<json> ReadAllRecords(const fs::path& path, JournalOpenReport* report = nullptr, Status* status = nullptr) {
  std::vector<json> out;
  auto j = Journal::Open(
      path,
      [&](const json& r) {
        out.push_back(r);
        return Status::Ok();
      },
      {}, report);
  if (status) *status = j.status();
  return out;
}

TEST(JournalTest, ReplaysEveryRecordInOrder) {
  testing::TempDir dir;
  const auto path = dir / "state.journal";
  {
    auto j = Journal::Open(path, [](const json&) { return Status::Ok(); });
    ASSERT_TRUE(j.ok()) << j.status().ToString();
    for (int i = 0; i < 50; ++i) ASSERT_TRUE((*j)->Append({{"op", "model"}, {"i", i}}).ok());
    EXPECT_EQ((*j)->records(), 50u);
    EXPECT_EQ((*j)->bytes(), fs::file_size(path));
  }
  const auto records = ReadAllRecords(path);
  ASSERT_EQ(records.size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(records[i]["i"], i);
}

// A crash can cut the last append anywhere: every cut leaves the records before it, and the
// journal takes appends again.
TEST(JournalTest, TornTailIsDroppedAtEveryCutPoint) {
  testing::TempDir dir;
  const auto path = dir / "j";
  uint64_t two = 0;
  {
    auto j = Journal::Open(path, [](const json&) { return Status::Ok(); });
    ASSERT_TRUE(j.ok());
    ASSERT_TRUE((*j)->Append({{"n", 1}}).ok());
    ASSERT_TRUE((*j)->Append({{"n", 2}}).ok());
    two = (*j)->bytes();
    ASSERT_TRUE((*j)->Append({{"n", 3}, {"pad", std::string(40, 'x')}}).ok());
  }
  const std::string full = testing::ReadAll(path);
  for (uint64_t cut = two + 1; cut < full.size(); ++cut) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    testing::WriteAll(path, full.substr(0, cut));
    JournalOpenReport report;
    auto records = ReadAllRecords(path, &report);
    ASSERT_EQ(records.size(), 2u);
    EXPECT_EQ(report.torn_bytes, cut - two);
    EXPECT_EQ(fs::file_size(path), two);
  }
  // Zeros after the last record (a file extended but never written) are a torn tail too.
  testing::WriteAll(path, full + std::string(100, '\0'));
  EXPECT_EQ(ReadAllRecords(path).size(), 3u);
  auto j = Journal::Open(path, [](const json&) { return Status::Ok(); });
  ASSERT_TRUE(j.ok());
  ASSERT_TRUE((*j)->Append({{"n", 4}}).ok());
  EXPECT_EQ(ReadAllRecords(path).back()["n"], 4);
}

TEST(JournalTest, DamageBeforeTheTailIsAnError) {
  testing::TempDir dir;
  const auto path = dir / "j";
  {
    auto j = Journal::Open(path, [](const json&) { return Status::Ok(); });
    ASSERT_TRUE(j.ok());
    for (int i = 0; i < 3; ++i) ASSERT_TRUE((*j)->Append({{"n", i}}).ok());
  }
  testing::FlipByte(path, 8 + 12 + 3);  // inside the first record's payload
  Status st;
  ReadAllRecords(path, nullptr, &st);
  EXPECT_EQ(st.code(), StatusCode::kCorruption);
  EXPECT_NE(st.message().find("record at offset 8 fails its checksum, and records follow it"), std::string::npos)
      << st.ToString();

  testing::WriteAll(dir / "other", "not a journal at all");
  ReadAllRecords(dir / "other", nullptr, &st);
  EXPECT_EQ(st.message(), (dir / "other").string() + " is not a modelcast journal (bad header)");
}

TEST(JournalTest, ReplayErrorsStopTheOpen) {
  testing::TempDir dir;
  const auto path = dir / "j";
  {
    auto j = Journal::Open(path, [](const json&) { return Status::Ok(); });
    ASSERT_TRUE(j.ok());
    ASSERT_TRUE((*j)->Append({{"op", "bogus"}}).ok());
  }
  auto j = Journal::Open(path, [](const json& r) { return InvalidArgument("unknown op " + r["op"].dump()); });
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().message(), path.string() + ": replaying record 0: unknown op \"bogus\"");
}

TEST(JournalTest, CompactReplacesTheJournalWithASnapshot) {
  testing::TempDir dir;
  const auto path = dir / "j";
  auto j = Journal::Open(path, [](const json&) { return Status::Ok(); });
  ASSERT_TRUE(j.ok());
  for (int i = 0; i < 20; ++i) ASSERT_TRUE((*j)->Append({{"n", i}}).ok());
  ASSERT_TRUE((*j)->Compact({{{"snapshot", true}}}).ok());
  ASSERT_TRUE((*j)->Append({{"n", 99}}).ok());
  EXPECT_EQ((*j)->records(), 2u);
  const auto records = ReadAllRecords(path);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0]["snapshot"], true);
  EXPECT_EQ(records[1]["n"], 99);
  EXPECT_EQ(testing::ListDir(dir.path()), std::vector<std::string>{"j"});  // no temporary left
}

// An append the file system refuses (here: past the file size limit, as a full disk would)
// leaves the journal exactly as it was.
TEST(JournalTest, FailedAppendLeavesNothingHalfWritten) {
  testing::TempDir dir;
  const auto path = dir / "j";
  auto j = Journal::Open(path, [](const json&) { return Status::Ok(); });
  ASSERT_TRUE(j.ok());
  ASSERT_TRUE((*j)->Append({{"n", 1}}).ok());
  const uint64_t before = (*j)->bytes();
  struct rlimit old {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  auto* old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = old;
  small.rlim_cur = before + 16;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  Status st = (*j)->Append({{"big", std::string(1000, 'y')}});
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("journal " + path.string()), std::string::npos) << st.ToString();
  EXPECT_EQ(fs::file_size(path), before);
  ASSERT_TRUE((*j)->Append({{"n", 2}}).ok());
  const auto records = ReadAllRecords(path);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[1]["n"], 2);

  JournalOptions tiny;
  tiny.max_record_bytes = 10;
  auto k = Journal::Open(
      dir / "k", [](const json&) { return Status::Ok(); }, tiny);
  ASSERT_TRUE(k.ok());
  EXPECT_EQ((*k)->Append({{"x", "0123456789"}}).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace modelcast
