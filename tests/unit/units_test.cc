#include <gtest/gtest.h>

#include "modelcast/common/units.h"

namespace modelcast {
namespace {

TEST(UnitsTest, ParseByteSize) {
  EXPECT_EQ(*ParseByteSize("4096"), 4096u);
  EXPECT_EQ(*ParseByteSize("4KiB"), 4096u);
  EXPECT_EQ(*ParseByteSize("16 MiB"), 16u << 20);
  EXPECT_EQ(*ParseByteSize("1.5GiB"), 3ull << 29);
  EXPECT_EQ(*ParseByteSize("80GB"), 80'000'000'000ull);
  EXPECT_EQ(*ParseByteSize("2tib"), 2ull << 40);
  EXPECT_FALSE(ParseByteSize("").ok());
  EXPECT_FALSE(ParseByteSize("GiB").ok());
  EXPECT_FALSE(ParseByteSize("12 parsecs").ok());
  EXPECT_FALSE(ParseByteSize("0.3 B").ok());
  EXPECT_NE(ParseByteSize("12 parsecs").status().message().find("parsecs"), std::string::npos);
}

TEST(UnitsTest, ParseBitRate) {
  EXPECT_DOUBLE_EQ(*ParseBitRate("400Gbit"), 400e9);
  EXPECT_DOUBLE_EQ(*ParseBitRate("400Gbps"), 400e9);
  EXPECT_DOUBLE_EQ(*ParseBitRate("200G"), 200e9);
  EXPECT_DOUBLE_EQ(*ParseBitRate("1gbit"), 1e9);
  EXPECT_DOUBLE_EQ(*ParseBitRate("2.5 Gbit/s"), 2.5e9);
  EXPECT_DOUBLE_EQ(*ParseBitRate("100Mbit"), 100e6);
  EXPECT_FALSE(ParseBitRate("fast").ok());
  EXPECT_FALSE(ParseBitRate("10 Xbit").ok());
}

TEST(UnitsTest, ParseByteRateAndDuration) {
  EXPECT_DOUBLE_EQ(*ParseByteRate("32GB/s"), 32e9);
  EXPECT_DOUBLE_EQ(*ParseByteRate("25GiB/s"), 25.0 * (1ull << 30));
  EXPECT_DOUBLE_EQ(*ParseByteRate("3.5 GB/s"), 3.5e9);
  EXPECT_FALSE(ParseByteRate("32GB").ok());
  EXPECT_FALSE(ParseByteRate("fast/s").ok());
  EXPECT_DOUBLE_EQ(*ParseDuration("5us"), 5e-6);
  EXPECT_DOUBLE_EQ(*ParseDuration("1.5ms"), 1.5e-3);
  EXPECT_DOUBLE_EQ(*ParseDuration("2s"), 2.0);
  EXPECT_DOUBLE_EQ(*ParseDuration("0"), 0.0);
  EXPECT_FALSE(ParseDuration("5").ok());
  EXPECT_FALSE(ParseDuration("5 fortnights").ok());
  EXPECT_EQ(FormatSeconds(0.0123), "12.30 ms");
}

TEST(UnitsTest, Format) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(4096), "4.00 KiB");
  EXPECT_EQ(FormatBytes(3ull << 30), "3.00 GiB");
  EXPECT_EQ(FormatRate(1.5e9), "1.50 GB/s");
}

}  // namespace
}  // namespace modelcast
