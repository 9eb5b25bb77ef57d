#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <vector>

#include <xxhash.h>

#include "modelcast/common/checksum.h"

namespace modelcast {
namespace {

TEST(ChecksumTest, KnownValues) {
  // XXH3_64bits of the empty input with seed 0, from xxHash's own test vectors.
  EXPECT_EQ(Xxh3("", 0), 0x2D06800538D394C2ull);
  EXPECT_NE(Xxh3("a", 1), Xxh3("b", 1));
}

TEST(ChecksumTest, StreamEqualsOneShotForAnySplit) {
  std::mt19937_64 rng(42);
  std::vector<uint8_t> data(1 << 20);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  const uint64_t whole = Xxh3(data.data(), data.size());
  for (int trial = 0; trial < 20; ++trial) {
    Xxh3Stream s;
    size_t pos = 0;
    while (pos < data.size()) {
      size_t n = std::min<size_t>(data.size() - pos, rng() % 70000);
      s.Update(data.data() + pos, n);
      pos += n;
    }
    EXPECT_EQ(s.Digest(), whole);
    s.Reset();
    s.Update(data.data(), 10);
    EXPECT_EQ(s.Digest(), Xxh3(data.data(), 10));
  }
}

// Whichever build of XXH3 runs here (the AVX2 one where the CPU has it), its values are the
// shared libxxhash's: every length up to a few stripes, unaligned starts, a whole slice, and
// streamed in pieces.
TEST(ChecksumTest, EqualsTheSharedLibraryAtEveryLengthAndAlignment) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && std::getenv("MODELCAST_XXH3") == nullptr) {
    EXPECT_STREQ(Xxh3Implementation(), "avx2");
  }
#endif
  std::mt19937_64 rng(7);
  std::vector<uint8_t> data((16 << 20) + 64);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  for (size_t len = 0; len <= 4096; ++len) {
    const size_t at = len % 61;
    ASSERT_EQ(Xxh3(data.data() + at, len), XXH3_64bits(data.data() + at, len)) << "length " << len << " at " << at;
  }
  for (size_t len : {size_t{65536}, size_t{1} << 20, (size_t{16} << 20) + 3}) {
    EXPECT_EQ(Xxh3(data.data() + 1, len), XXH3_64bits(data.data() + 1, len)) << "length " << len;
    Xxh3Stream s;
    for (size_t pos = 0; pos < len;) {
      const size_t n = std::min<size_t>(len - pos, 1 + rng() % 300000);
      s.Update(data.data() + 1 + pos, n);
      pos += n;
    }
    EXPECT_EQ(s.Digest(), XXH3_64bits(data.data() + 1, len)) << "length " << len << ", streamed";
  }
}

TEST(ChecksumTest, HexRoundTrip) {
  for (uint64_t v : {0ull, 1ull, 0xdeadbeefcafef00dull, ~0ull}) {
    const std::string hex = ChecksumToHex(v);
    EXPECT_EQ(hex.size(), 16u);
    auto back = ChecksumFromHex(hex);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, v);
  }
  EXPECT_EQ(ChecksumToHex(0xab), "00000000000000ab");
  EXPECT_EQ(*ChecksumFromHex("DEADBEEFCAFEF00D"), 0xdeadbeefcafef00dull);
}

TEST(ChecksumTest, BadHexIsAnError) {
  EXPECT_FALSE(ChecksumFromHex("").ok());
  EXPECT_FALSE(ChecksumFromHex("123").ok());
  EXPECT_FALSE(ChecksumFromHex("00000000000000g0").ok());
  EXPECT_FALSE(ChecksumFromHex("00000000000000000").ok());
  EXPECT_NE(ChecksumFromHex("xyz").status().message().find("xyz"), std::string::npos);
}

}  // namespace
}  // namespace modelcast
