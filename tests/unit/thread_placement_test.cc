#include <gtest/gtest.h>

#include <thread>

#include "modelcast/common/thread_placement.h"

namespace modelcast {
namespace {

TEST(CpuListTest, ParsesRangesAndSingles) {
  EXPECT_EQ(*ParseCpuList("0"), std::vector<int>{0});
  EXPECT_EQ(*ParseCpuList("8,0-3"), (std::vector<int>{0, 1, 2, 3, 8}));
  EXPECT_EQ(FormatCpuList({0, 1, 2, 3, 8, 10, 11}), "0-3,8,10-11");
  EXPECT_EQ(FormatCpuList(*ParseCpuList("5,1-2,7-9")), "1-2,5,7-9");
  for (const char* bad : {"", "a", "1-", "-1", "3-1", "1,,2", "1,1", "0-2,2", "99999", "1 2"}) {
    auto r = ParseCpuList(bad);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find("is not a CPU list like 0-3,8"), std::string::npos) << r.status().ToString();
  }
}

// A placement changes the thread it is applied on and no other.
TEST(ThreadPlacementTest, AppliesToTheCallingThreadAlone) {
  const std::vector<int> all = ThreadCpus();
  ASSERT_FALSE(all.empty());
  const int nice = ThreadNice();
  std::pair<int, std::vector<int>> seen;
  std::thread t([&] {
    ASSERT_TRUE((ThreadPlacement{nice + 3, {all.back()}}).Apply().ok());
    seen = {ThreadNice(), ThreadCpus()};
  });
  t.join();
  EXPECT_EQ(seen, std::make_pair(nice + 3, std::vector<int>{all.back()}));
  EXPECT_EQ(ThreadNice(), nice);
  EXPECT_EQ(ThreadCpus(), all);
  EXPECT_EQ((ThreadPlacement{10, {0, 1, 2}}).ToString(), "nice 10, cpus 0-2");
  std::thread u([] {
    const Status st = ThreadPlacement{0, {1000}}.Apply();
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message().find("running on CPUs 1000"), std::string::npos) << st.ToString();
  });
  u.join();
}

}  // namespace
}  // namespace modelcast
