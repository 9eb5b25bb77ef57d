#include <gtest/gtest.h>

#include "modelcast/common/args.h"

namespace modelcast {
namespace {

TEST(ArgsTest, FlagsAndPositionals) {
  std::string src, dst, name;
  int64_t blocks = 1;
  double mib = 16;
  bool force = false;
  std::optional<int64_t> layers;
  ArgParser p("prog", "test");
  p.Positional("SRC", &src, "");
  p.Positional("DST", &dst, "");
  p.Flag("blocks", &blocks, "");
  p.Flag("slice-mib", &mib, "");
  p.Flag("force", &force, "");
  p.Flag("name", &name, "");
  p.Flag("layers", &layers, "");
  ASSERT_TRUE(p.Parse({"a", "--blocks", "4", "--slice-mib=0.25", "b", "--force"}).ok());
  EXPECT_EQ(src, "a");
  EXPECT_EQ(dst, "b");
  EXPECT_EQ(blocks, 4);
  EXPECT_DOUBLE_EQ(mib, 0.25);
  EXPECT_TRUE(force);
  EXPECT_FALSE(layers.has_value());
  EXPECT_TRUE(p.WasSet("blocks"));
  EXPECT_FALSE(p.WasSet("name"));
}

TEST(ArgsTest, ErrorsNameTheFlag) {
  auto parse = [](std::vector<std::string> args) {
    std::string src;
    int64_t n = 0;
    bool b = false;
    ArgParser p("prog", "test");
    p.Positional("SRC", &src, "");
    p.Flag("n", &n, "");
    p.Flag("b", &b, "");
    return p.Parse(args);
  };
  EXPECT_EQ(parse({"x", "--n", "four"}).message(), "--n expects an integer, got 'four'");
  EXPECT_EQ(parse({"x", "--m", "4"}).message(), "unknown flag --m (see --help)");
  EXPECT_EQ(parse({"x", "--n"}).message(), "--n needs a value");
  EXPECT_EQ(parse({"x", "--b=1"}).message(), "--b takes no value");
  EXPECT_EQ(parse({"x", "--n", "1", "--n", "2"}).message(), "--n given twice");
  EXPECT_EQ(parse({}).message(), "missing argument SRC");
  EXPECT_EQ(parse({"x", "y"}).message(), "unexpected argument 'y'");
  EXPECT_EQ(parse({"x", "-q"}).message(), "unknown option -q (flags are spelled --name)");
  EXPECT_TRUE(parse({"x", "--n", "-3"}).ok());
}

TEST(ArgsTest, Help) {
  std::string src;
  ArgParser p("prog", "Does things.");
  p.Positional("SRC", &src, "the source");
  ASSERT_TRUE(p.Parse({"--help"}).ok());
  EXPECT_TRUE(p.help_requested());
  EXPECT_NE(p.Usage().find("the source"), std::string::npos);
}

}  // namespace
}  // namespace modelcast
