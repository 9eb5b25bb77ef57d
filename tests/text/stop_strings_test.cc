// Stop strings against the plain rule they implement: the answer is the text up to where the
// first stop string to complete starts, and nothing shown ever reaches past that point, however
// the text arrives in pieces.
#include "modelcast/text/stop_strings.h"

#include <gtest/gtest.h>

#include <random>

namespace modelcast::text {
namespace {

// The rule, on whole text given one character at a time (UTF-8 lead bytes start characters).
std::pair<std::string, bool> Rule(const std::string& text, const std::vector<std::string>& stops) {
  for (size_t i = 1; i <= text.size(); ++i) {
    if (i < text.size() && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) continue;
    const std::string head = text.substr(0, i);
    size_t cut = std::string::npos;
    for (const auto& s : stops) cut = std::min(cut, head.find(s));
    if (cut != std::string::npos) return {text.substr(0, cut), true};
  }
  return {text, false};
}

std::vector<std::string> Characters(const std::string& text) {
  std::vector<std::string> out;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) == 0x80 && !out.empty()) {
      out.back() += text[i];
    } else {
      out.emplace_back(1, text[i]);
    }
  }
  return out;
}

struct Fed {
  std::string shown;
  bool stopped = false;
  size_t most_held = 0;
  bool showed_after_stop = false;
};

Fed Feed(StopStrings s, const std::vector<std::string>& pieces) {
  Fed r;
  std::string fed;
  for (const auto& p : pieces) {
    const bool was = s.stopped();
    fed += p;
    const std::string out = s.Feed(p);
    if (was && !out.empty()) r.showed_after_stop = true;
    r.shown += out;
    if (!s.stopped()) r.most_held = std::max(r.most_held, fed.size() - r.shown.size());
  }
  r.shown += s.Finish();
  r.stopped = s.stopped();
  return r;
}

TEST(StopStrings, CutsBeforeTheStopStringAndHoldsBackOnlyWhatCouldStartOne) {
  auto s = StopStrings::Make({"</s>", "\n\n"});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->Feed("Hello <"), "Hello ");  // '<' might begin "</s>"
  EXPECT_EQ(s->Feed("b"), "<b");            // it did not
  EXPECT_EQ(s->Feed("> one\n"), "> one");
  EXPECT_EQ(s->Feed("\nmore"), "");
  EXPECT_TRUE(s->stopped());
  EXPECT_EQ(s->Feed("ignored"), "");
  EXPECT_EQ(s->Finish(), "");
}

TEST(StopStrings, TheEarliestStartAmongThoseFoundInOnePiece) {
  auto s = StopStrings::Make({"bcd", "abcdef"});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->Feed("xxabcdefg"), "xx");
  auto t = StopStrings::Make({"bcd", "abcdef"});
  EXPECT_EQ(t->Feed("xxabc"), "xx");
  EXPECT_EQ(t->Feed("d"), "a");  // "bcd" completes first, one character at a time
}

TEST(StopStrings, NoStopStringsPassEverythingAtOnce) {
  StopStrings s;
  EXPECT_EQ(s.Feed("abc"), "abc");
  EXPECT_EQ(s.Finish(), "");
  EXPECT_FALSE(s.stopped());
}

TEST(StopStrings, BadStopStringsAreRefusedByName) {
  EXPECT_EQ(StopStrings::Make({"a", ""}).status().message(), "'stop'[1] is empty");
  EXPECT_EQ(StopStrings::Make({std::string("\xff")}).status().message(), "'stop'[0] is not valid UTF-8 (at byte 0)");
  EXPECT_EQ(StopStrings::Make(std::vector<std::string>(17, "x")).status().message(),
            "'stop': 17 stop strings; at most 16");
  EXPECT_EQ(StopStrings::Make({std::string(300, 'x')}, "'stop_strings'").status().message(),
            "'stop_strings'[0] is 300 bytes long; at most 256");
}

// Random text over a small alphabet (so stop strings occur), multi-byte characters among it,
// random stop strings (some of them parts of the text), fed in random pieces of whole
// characters: the same answer as the rule when fed a character at a time, and never more shown
// than the rule allows, nor more held back than the longest stop string less one byte.
TEST(StopStrings, RandomTextInRandomPiecesFollowsTheRule) {
  std::mt19937 rng(7);
  const std::vector<std::string> alphabet = {"a", "b", " ", "\n", "é", "日", "😀", "<", "/", ">"};
  int stopped = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string text;
    const int len = std::uniform_int_distribution<int>(0, 40)(rng);
    for (int i = 0; i < len; ++i) text += alphabet[rng() % alphabet.size()];
    std::vector<std::string> stops;
    const int n = std::uniform_int_distribution<int>(1, 4)(rng);
    size_t longest = 0;
    for (int k = 0; k < n; ++k) {
      std::string s;
      const int sl = std::uniform_int_distribution<int>(1, 4)(rng);
      for (int i = 0; i < sl; ++i) s += alphabet[rng() % alphabet.size()];
      stops.push_back(s);
      longest = std::max(longest, s.size());
    }
    const auto want = Rule(text, stops);
    auto make = StopStrings::Make(stops);
    ASSERT_TRUE(make.ok());
    const auto chars = Characters(text);
    const Fed one = Feed(*make, chars);
    EXPECT_EQ(one.shown, want.first) << text;
    EXPECT_EQ(one.stopped, want.second) << text;
    stopped += want.second;
    // Any split: a prefix of the text, never past a stop string; the same when none is met.
    std::vector<std::string> pieces;
    for (size_t i = 0; i < chars.size();) {
      const size_t k = std::uniform_int_distribution<size_t>(1, 5)(rng);
      std::string p;
      for (size_t j = i; j < std::min(chars.size(), i + k); ++j) p += chars[j];
      pieces.push_back(p);
      i += k;
    }
    const Fed any = Feed(*make, pieces);
    EXPECT_EQ(text.compare(0, any.shown.size(), any.shown), 0);
    for (const auto& s : stops) EXPECT_EQ(any.shown.find(s), std::string::npos) << text;
    EXPECT_EQ(any.stopped, want.second);
    if (any.stopped) {
      bool begins = false;
      for (const auto& s : stops) begins |= text.compare(any.shown.size(), s.size(), s) == 0;
      EXPECT_TRUE(begins) << text;
      EXPECT_LE(any.shown.size(), want.first.size());
    } else {
      EXPECT_EQ(any.shown, text);
    }
    EXPECT_LT(any.most_held, longest) << text;
    EXPECT_FALSE(any.showed_after_stop);
  }
  EXPECT_GT(stopped, 1000);  // the rounds met stop strings often
}

}  // namespace
}  // namespace modelcast::text
