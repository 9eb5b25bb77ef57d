#include "modelcast/text/tokenizer.h"

#include <sentencepiece_processor.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "modelcast/common/file_util.h"
#include "utf8.h"

namespace modelcast::text {
namespace {

using json = nlohmann::json;

// GPT-2's pre-tokenizer pattern (ByteLevel with use_regex).
constexpr char kGpt2Pattern[] = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// A compiled regex (PCRE2, UTF and Unicode properties, JIT where it is available).
class Regex {
 public:
  static Result<std::shared_ptr<Regex>> Compile(const std::string& pattern, const std::string& where) {
    int err = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      return InvalidArgument(where + ": the regex " + json(pattern).dump() + " does not compile at offset " +
                             std::to_string(offset) + ": " + reinterpret_cast<const char*>(msg));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // a speed-up where there is a JIT; fine without
    return std::shared_ptr<Regex>(new Regex(code));
  }
  ~Regex() { pcre2_code_free(code_); }
  // Every non-empty match of s, as [begin, end) byte ranges.
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view s) const {
    std::vector<std::pair<size_t, size_t>> out;
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    size_t at = 0;
    while (at <= s.size()) {
      const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), at, PCRE2_NO_UTF_CHECK, md,
                                 nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      if (ov[1] > ov[0]) {
        out.emplace_back(ov[0], ov[1]);
        at = ov[1];
      } else {  // an empty match: step over one character
        if (ov[0] >= s.size()) break;
        at = ov[0] + Utf8Length(static_cast<unsigned char>(s[ov[0]]));
      }
    }
    pcre2_match_data_free(md);
    return out;
  }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
};

// GPT-2's byte <-> printable character mapping.
struct ByteMap {
  std::string to_char[256];               // byte -> the UTF-8 of its character
  std::unordered_map<uint32_t, uint8_t> to_byte;  // character -> byte
  ByteMap() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
      AppendUtf8(cp, &to_char[b]);
      to_byte[cp] = static_cast<uint8_t>(b);
    }
  }
};
const ByteMap& Bytes() {
  static const ByteMap m;
  return m;
}

// A pattern of tokenizer.json: {"String": s} or {"Regex": r}.
struct Pattern {
  std::string literal;
  std::shared_ptr<Regex> regex;
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view s) const {
    if (regex) return regex->FindAll(s);
    std::vector<std::pair<size_t, size_t>> out;
    if (literal.empty()) return out;
    for (size_t at = s.find(literal); at != std::string_view::npos; at = s.find(literal, at + literal.size())) {
      out.emplace_back(at, at + literal.size());
    }
    return out;
  }
};

Result<Pattern> ParsePattern(const json& j, const std::string& where) {
  Pattern p;
  if (j.is_object() && j.contains("String") && j["String"].is_string()) {
    p.literal = j["String"].get<std::string>();
    return p;
  }
  if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
    MC_ASSIGN_OR_RETURN(p.regex, Regex::Compile(j["Regex"].get<std::string>(), where));
    return p;
  }
  return InvalidArgument(where + ": a pattern is {\"String\": ...} or {\"Regex\": ...}, not " + j.dump());
}

std::string ReplaceAll(std::string_view s, const Pattern& p, const std::string& with) {
  std::string out;
  size_t at = 0;
  for (const auto& [b, e] : p.FindAll(s)) {
    out.append(s.substr(at, b - at));
    out += with;
    at = e;
  }
  out.append(s.substr(at));
  return out;
}

// --- Normalizers: a string to a string.
using Normalizer = std::function<std::string(std::string)>;

Result<Normalizer> ParseNormalizer(const json& j, const std::string& where) {
  if (j.is_null()) return Normalizer();
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    std::vector<Normalizer> parts;
    for (const auto& n : j.value("normalizers", json::array())) {
      MC_ASSIGN_OR_RETURN(Normalizer p, ParseNormalizer(n, where));
      if (p) parts.push_back(std::move(p));
    }
    return Normalizer([parts](std::string s) {
      for (const auto& p : parts) s = p(std::move(s));
      return s;
    });
  }
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    const int options = type == "NFC"    ? UTF8PROC_STABLE | UTF8PROC_COMPOSE
                        : type == "NFD"  ? UTF8PROC_STABLE | UTF8PROC_DECOMPOSE
                        : type == "NFKC" ? UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT
                                         : UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
    return Normalizer([options](std::string s) {
      utf8proc_uint8_t* out = nullptr;
      const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                  static_cast<utf8proc_ssize_t>(s.size()), &out, static_cast<utf8proc_option_t>(options));
      if (n < 0) return s;  // not reached: the text was checked to be UTF-8
      std::string r(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
      std::free(out);
      return r;
    });
  }
  if (type == "Prepend") {
    const std::string prepend = j.value("prepend", "");
    return Normalizer([prepend](std::string s) { return s.empty() ? s : prepend + s; });
  }
  if (type == "Replace") {
    MC_ASSIGN_OR_RETURN(Pattern p, ParsePattern(j.value("pattern", json()), where + ": Replace"));
    const std::string content = j.value("content", "");
    return Normalizer([p, content](std::string s) { return ReplaceAll(s, p, content); });
  }
  return Unimplemented(where + ": normalizer " + json(type).dump() +
                       " is not implemented (NFC, NFD, NFKC, NFKD, Prepend, Replace and Sequence are)");
}

// --- Pre-tokenizers: pieces to pieces. `first`: the piece starts the whole text.
struct Piece {
  std::string text;
  bool first = false;
};
using PreTokenizer = std::function<std::vector<Piece>(std::vector<Piece>)>;

std::vector<Piece> SplitBy(const std::vector<Piece>& in, const Pattern& p, const std::string& behavior) {
  std::vector<Piece> out;
  for (const auto& piece : in) {
    const std::string& s = piece.text;
    std::vector<std::pair<size_t, size_t>> spans;  // (begin, end) of every part, in order; matches marked below
    std::vector<bool> is_match;
    size_t at = 0;
    for (const auto& [b, e] : p.FindAll(s)) {
      if (b > at) spans.emplace_back(at, b), is_match.push_back(false);
      spans.emplace_back(b, e), is_match.push_back(true);
      at = e;
    }
    if (at < s.size()) spans.emplace_back(at, s.size()), is_match.push_back(false);
    std::vector<std::string> parts;
    for (size_t k = 0; k < spans.size(); ++k) {
      std::string part = s.substr(spans[k].first, spans[k].second - spans[k].first);
      if (!is_match[k] || behavior == "Isolated") {
        parts.push_back(std::move(part));
      } else if (behavior == "Removed") {
      } else if (behavior == "MergedWithPrevious") {
        if (parts.empty()) parts.emplace_back();
        parts.back() += part;
      } else if (behavior == "MergedWithNext") {
        if (k + 1 < spans.size() && !is_match[k + 1]) {
          part += s.substr(spans[k + 1].first, spans[k + 1].second - spans[k + 1].first);
          ++k;
        }
        parts.push_back(std::move(part));
      } else {  // Contiguous: consecutive matches together
        if (k > 0 && is_match[k - 1] && !parts.empty()) {
          parts.back() += part;
        } else {
          parts.push_back(std::move(part));
        }
      }
    }
    for (size_t k = 0; k < parts.size(); ++k) {
      if (!parts[k].empty()) out.push_back({std::move(parts[k]), piece.first && out.empty()});
    }
  }
  return out;
}

Result<PreTokenizer> ParsePreTokenizer(const json& j, const std::string& where, bool* byte_level) {
  if (j.is_null()) return PreTokenizer();
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    std::vector<PreTokenizer> parts;
    for (const auto& n : j.value("pretokenizers", json::array())) {
      MC_ASSIGN_OR_RETURN(PreTokenizer p, ParsePreTokenizer(n, where, byte_level));
      if (p) parts.push_back(std::move(p));
    }
    return PreTokenizer([parts](std::vector<Piece> v) {
      for (const auto& p : parts) v = p(std::move(v));
      return v;
    });
  }
  if (type == "Split") {
    MC_ASSIGN_OR_RETURN(Pattern p, ParsePattern(j.value("pattern", json()), where + ": Split"));
    const std::string behavior = j.value("behavior", "Isolated");
    if (j.value("invert", false)) return Unimplemented(where + ": Split with \"invert\": true is not implemented");
    for (const char* b : {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"}) {
      if (behavior == b) return PreTokenizer([p, behavior](std::vector<Piece> v) { return SplitBy(v, p, behavior); });
    }
    return InvalidArgument(where + ": Split behavior " + json(behavior).dump() + " is not one of tokenizers'");
  }
  if (type == "ByteLevel") {
    *byte_level = true;
    const bool prefix = j.value("add_prefix_space", false), use_regex = j.value("use_regex", true);
    std::shared_ptr<Regex> gpt2;
    if (use_regex) {
      MC_ASSIGN_OR_RETURN(gpt2, Regex::Compile(kGpt2Pattern, where));
    }
    return PreTokenizer([prefix, gpt2](std::vector<Piece> v) {
      if (prefix) {
        for (auto& p : v) {
          if (p.first && !p.text.empty() && p.text[0] != ' ') p.text.insert(0, " ");
        }
      }
      if (gpt2) v = SplitBy(v, Pattern{"", gpt2}, "Isolated");
      for (auto& p : v) {
        std::string mapped;
        for (unsigned char c : p.text) mapped += Bytes().to_char[c];
        p.text = std::move(mapped);
      }
      return v;
    });
  }
  if (type == "Metaspace") {
    const std::string replacement = j.value("replacement", "\u2581");
    std::string scheme = j.value("prepend_scheme", "");
    if (scheme.empty()) scheme = j.value("add_prefix_space", true) ? "always" : "never";
    const bool split = j.value("split", true);
    return PreTokenizer([replacement, scheme, split](std::vector<Piece> v) {
      for (auto& p : v) {
        p.text = ReplaceAll(p.text, Pattern{" ", nullptr}, replacement);
        if ((scheme == "always" || (scheme == "first" && p.first)) && p.text.rfind(replacement, 0) != 0) {
          p.text.insert(0, replacement);
        }
      }
      return split ? SplitBy(v, Pattern{replacement, nullptr}, "MergedWithNext") : v;
    });
  }
  return Unimplemented(where + ": pre-tokenizer " + json(type).dump() +
                       " is not implemented (ByteLevel, Metaspace, Split and Sequence are)");
}

// --- Decoders: tokens (as strings) to tokens.
using Decoder = std::function<std::vector<std::string>(std::vector<std::string>)>;

// "<0x41>" -> 0x41.
std::optional<uint8_t> ByteToken(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return std::nullopt;
  const auto hex = [](char c) -> int {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
  };
  const int hi = hex(t[3]), lo = hex(t[4]);
  if (hi < 0 || lo < 0) return std::nullopt;
  return static_cast<uint8_t>(hi * 16 + lo);
}

Result<Decoder> ParseDecoder(const json& j, const std::string& where) {
  if (j.is_null()) return Decoder();
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    std::vector<Decoder> parts;
    for (const auto& n : j.value("decoders", json::array())) {
      MC_ASSIGN_OR_RETURN(Decoder p, ParseDecoder(n, where));
      if (p) parts.push_back(std::move(p));
    }
    return Decoder([parts](std::vector<std::string> v) {
      for (const auto& p : parts) v = p(std::move(v));
      return v;
    });
  }
  if (type == "ByteLevel") {
    return Decoder([](std::vector<std::string> v) {
      std::string bytes;
      for (const auto& t : v) {
        for (size_t i = 0; i < t.size();) {
          size_t len = 0;
          const uint32_t cp = DecodeAt(t, i, &len);
          auto it = Bytes().to_byte.find(cp);
          if (it != Bytes().to_byte.end()) {
            bytes.push_back(static_cast<char>(it->second));
          } else {
            bytes.append(t, i, len);  // not a byte-level character (an added token's text): as it is
          }
          i += len;
        }
      }
      return std::vector<std::string>{Utf8Lossy(bytes)};
    });
  }
  if (type == "Replace") {
    MC_ASSIGN_OR_RETURN(Pattern p, ParsePattern(j.value("pattern", json()), where + ": Replace"));
    const std::string content = j.value("content", "");
    return Decoder([p, content](std::vector<std::string> v) {
      for (auto& t : v) t = ReplaceAll(t, p, content);
      return v;
    });
  }
  if (type == "ByteFallback") {
    // Runs of <0xXX> tokens become their bytes; a run that is not UTF-8 becomes one U+FFFD per
    // byte (as tokenizers' ByteFallback decoder does).
    return Decoder([](std::vector<std::string> v) {
      std::vector<std::string> out;
      std::string run;
      size_t run_tokens = 0;
      auto flush = [&] {
        if (run_tokens == 0) return;
        if (FirstInvalidUtf8(run)) {
          for (size_t k = 0; k < run_tokens; ++k) out.push_back("\xEF\xBF\xBD");
        } else {
          out.push_back(run);
        }
        run.clear();
        run_tokens = 0;
      };
      for (auto& t : v) {
        if (auto b = ByteToken(t)) {
          run.push_back(static_cast<char>(*b));
          ++run_tokens;
        } else {
          flush();
          out.push_back(std::move(t));
        }
      }
      flush();
      return out;
    });
  }
  if (type == "Fuse") {
    return Decoder([](std::vector<std::string> v) {
      std::string all;
      for (const auto& t : v) all += t;
      return std::vector<std::string>{all};
    });
  }
  if (type == "Strip") {
    const std::string content = j.value("content", " ");
    const int64_t start = j.value("start", 0), stop = j.value("stop", 0);
    return Decoder([content, start, stop](std::vector<std::string> v) {
      for (auto& t : v) {
        for (int64_t k = 0; k < start && t.rfind(content, 0) == 0; ++k) t.erase(0, content.size());
        for (int64_t k = 0; k < stop && t.size() >= content.size() &&
                            t.compare(t.size() - content.size(), content.size(), content) == 0;
             ++k) {
          t.erase(t.size() - content.size());
        }
      }
      return v;
    });
  }
  if (type == "Metaspace") {
    const std::string replacement = j.value("replacement", "\u2581");
    std::string scheme = j.value("prepend_scheme", "");
    if (scheme.empty()) scheme = j.value("add_prefix_space", true) ? "always" : "never";
    return Decoder([replacement, scheme](std::vector<std::string> v) {
      for (size_t k = 0; k < v.size(); ++k) {
        v[k] = ReplaceAll(v[k], Pattern{replacement, nullptr}, " ");
        if (k == 0 && scheme != "never" && !v[k].empty() && v[k][0] == ' ') v[k].erase(0, 1);
      }
      return v;
    });
  }
  return Unimplemented(where + ": decoder " + json(type).dump() +
                       " is not implemented (ByteLevel, ByteFallback, Fuse, Metaspace, Replace, Strip and Sequence are)");
}

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false, lstrip = false, rstrip = false, single_word = false;
};

bool IsWordByte(unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; }
bool IsSpaceByte(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

}  // namespace

struct Tokenizer::Impl {
  std::string source;
  // The BPE model.
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_token;  // by id; added tokens included
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (left, right) -> (rank, merged)
  bool ignore_merges = false, byte_fallback = false, fuse_unk = false;
  std::optional<int32_t> unk;
  int32_t byte_ids[256];  // <0xXX> for byte fallback (-1 when missing)
  // The pipeline around it.
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  bool byte_level = false;
  Decoder decoder;
  std::vector<int32_t> prefix_ids, suffix_ids;  // what the post-processor adds around a text
  // Added tokens, and a trie of their contents for the longest match at a position.
  std::vector<AddedToken> added;
  std::vector<bool> special;  // by id
  struct TrieNode {
    std::map<unsigned char, int> next;
    int token = -1;  // index into `added`
  };
  std::vector<TrieNode> trie{TrieNode()};
  mutable std::mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;
  // A tokenizer.model: Google's SentencePiece encodes each stretch between added tokens.
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp;

  void AddToTrie(int index) {
    int node = 0;
    for (unsigned char c : added[index].content) {
      auto it = trie[node].next.find(c);
      if (it == trie[node].next.end()) {
        trie.emplace_back();
        it = trie[node].next.emplace(c, static_cast<int>(trie.size()) - 1).first;
      }
      node = it->second;
    }
    trie[node].token = index;
  }

  // The longest added token starting at s[i] that may stand there, and the range it takes
  // (stripped whitespace included).
  std::optional<std::pair<int, std::pair<size_t, size_t>>> MatchAt(std::string_view s, size_t i) const {
    int node = 0, best = -1;
    size_t best_end = 0;
    for (size_t k = i; k < s.size(); ++k) {
      auto it = trie[node].next.find(static_cast<unsigned char>(s[k]));
      if (it == trie[node].next.end()) break;
      node = it->second;
      if (trie[node].token >= 0) {
        const AddedToken& t = added[trie[node].token];
        const bool word_ok = !t.single_word || ((i == 0 || !IsWordByte(s[i - 1])) &&
                                                (k + 1 == s.size() || !IsWordByte(s[k + 1])));
        if (word_ok) best = trie[node].token, best_end = k + 1;
      }
    }
    if (best < 0) return std::nullopt;
    size_t b = i, e = best_end;
    if (added[best].lstrip) {
      while (b > 0 && IsSpaceByte(s[b - 1])) --b;
    }
    if (added[best].rstrip) {
      while (e < s.size() && IsSpaceByte(s[e])) ++e;
    }
    return std::make_pair(best, std::make_pair(b, e));
  }

  void Bpe(const std::string& word, std::vector<int32_t>* out) const {
    if (ignore_merges) {
      auto it = vocab.find(word);
      if (it != vocab.end()) return out->push_back(it->second);
    }
    {
      std::lock_guard<std::mutex> lock(cache_mu);
      auto it = cache.find(word);
      if (it != cache.end()) {
        out->insert(out->end(), it->second.begin(), it->second.end());
        return;
      }
    }
    // Symbols: each character's id (or its bytes' ids, or unk).
    struct Sym {
      int32_t id;
      int prev, next;
      bool alive;
    };
    std::vector<Sym> syms;
    for (size_t i = 0; i < word.size();) {
      const size_t len = Utf8Length(static_cast<unsigned char>(word[i]));
      auto it = vocab.find(word.substr(i, len));
      if (it != vocab.end()) {
        syms.push_back({it->second, 0, 0, true});
      } else if (byte_fallback && std::all_of(word.begin() + i, word.begin() + i + len,
                                              [&](char c) { return byte_ids[static_cast<unsigned char>(c)] >= 0; })) {
        for (size_t k = 0; k < len; ++k) syms.push_back({byte_ids[static_cast<unsigned char>(word[i + k])], 0, 0, true});
      } else if (unk) {
        if (!(fuse_unk && !syms.empty() && syms.back().id == *unk)) syms.push_back({*unk, 0, 0, true});
      }
      i += len;
    }
    const int n = static_cast<int>(syms.size());
    for (int k = 0; k < n; ++k) syms[k].prev = k - 1, syms[k].next = k + 1 < n ? k + 1 : -1;
    // Merges by rank (then position), each checked to still apply when it comes up.
    struct Cand {
      int32_t rank;
      int pos;
      int32_t left, right;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> queue;
    auto consider = [&](int a) {
      if (a < 0 || syms[a].next < 0) return;
      const int b = syms[a].next;
      auto it = merges.find(Key(syms[a].id, syms[b].id));
      if (it != merges.end()) queue.push({it->second.first, a, syms[a].id, syms[b].id});
    };
    for (int k = 0; k + 1 < n; ++k) consider(k);
    while (!queue.empty()) {
      const Cand c = queue.top();
      queue.pop();
      Sym& a = syms[c.pos];
      if (!a.alive || a.id != c.left || a.next < 0 || syms[a.next].id != c.right) continue;
      Sym& b = syms[a.next];
      a.id = merges.at(Key(c.left, c.right)).second;
      b.alive = false;
      a.next = b.next;
      if (b.next >= 0) syms[b.next].prev = c.pos;
      consider(a.prev);
      consider(c.pos);
    }
    std::vector<int32_t> ids;
    for (int k = n > 0 ? 0 : -1; k >= 0; k = syms[k].next) ids.push_back(syms[k].id);
    out->insert(out->end(), ids.begin(), ids.end());
    std::lock_guard<std::mutex> lock(cache_mu);
    if (cache.size() > 200000) cache.clear();
    cache.emplace(word, std::move(ids));
  }

  static uint64_t Key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  // A stretch of text between added tokens: normalized, pre-tokenized, merged.
  void EncodeStretch(std::string_view s, bool first, std::vector<int32_t>* out) const {
    if (sp) {
      std::vector<int> ids;
      // Encode fails only on a model that did not load, checked when it was loaded.
      if (sp->Encode(absl::string_view(s.data(), s.size()), &ids).ok()) out->insert(out->end(), ids.begin(), ids.end());
      return;
    }
    std::string text(s);
    if (normalizer) text = normalizer(std::move(text));
    std::vector<Piece> pieces{{std::move(text), first}};
    if (pre_tokenizer) pieces = pre_tokenizer(std::move(pieces));
    for (const auto& p : pieces) {
      if (!p.text.empty()) Bpe(p.text, out);
    }
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

Result<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::filesystem::path& path) {
  MC_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, 1ull << 30));
  return FromJson(text, path.string());
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::FromSentencePiece(std::string_view model, const std::string& source,
                                                                 const SentencePieceOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->source = source;
  impl->sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  if (auto st = impl->sp->LoadFromSerializedProto(absl::string_view(model.data(), model.size())); !st.ok()) {
    return InvalidArgument(source + ": not a SentencePiece model (" + st.ToString() + ")");
  }
  const sentencepiece::SentencePieceProcessor& sp = *impl->sp;
  const int n = sp.GetPieceSize();
  impl->id_to_token.resize(static_cast<size_t>(n));
  impl->special.assign(static_cast<size_t>(n), false);
  std::fill(std::begin(impl->byte_ids), std::end(impl->byte_ids), -1);
  for (int id = 0; id < n; ++id) {
    const std::string piece = sp.IdToPiece(id);
    impl->id_to_token[id] = piece;
    impl->vocab.emplace(piece, id);
    if (sp.IsByte(id)) impl->byte_fallback = true;
    // Control pieces (<s>, </s>) and <unk> are special tokens, found in text as transformers'
    // converted tokenizer finds them (SentencePiece itself would spell them out).
    if (sp.IsControl(id) || sp.IsUnknown(id)) {
      impl->special[id] = true;
      impl->added.push_back({id, piece, true, false, false, false});
      impl->AddToTrie(static_cast<int>(impl->added.size()) - 1);
    }
  }
  if (options.add_bos) {
    if (sp.bos_id() < 0) return InvalidArgument(source + ": add_bos_token, but the model has no bos piece");
    impl->prefix_ids = {sp.bos_id()};
  }
  if (options.add_eos) {
    if (sp.eos_id() < 0) return InvalidArgument(source + ": add_eos_token, but the model has no eos piece");
    impl->suffix_ids = {sp.eos_id()};
  }
  // Decoding as transformers' converted tokenizer does: the metaspace back to spaces, byte pieces
  // to bytes, and the space the model puts in front of a text (its dummy prefix) taken off once.
  std::vector<std::string> probe;
  const bool dummy_prefix = sp.Encode("a", &probe).ok() && !probe.empty() && probe[0].rfind("\xe2\x96\x81", 0) == 0;
  json decoders = json::array({{{"type", "Replace"}, {"pattern", {{"String", "\xe2\x96\x81"}}}, {"content", " "}}});
  if (impl->byte_fallback) decoders.push_back({{"type", "ByteFallback"}});
  decoders.push_back({{"type", "Fuse"}});
  if (dummy_prefix) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  MC_ASSIGN_OR_RETURN(impl->decoder, ParseDecoder({{"type", "Sequence"}, {"decoders", decoders}}, source));
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view text, const std::string& source) {
  const json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgument(source + ": not a JSON object");
  auto impl = std::make_unique<Impl>();
  impl->source = source;
  const json& m = j.value("model", json::object());
  const std::string type = m.value("type", "");
  if (type != "BPE") {
    return Unimplemented(source + ": model type " + json(type).dump() + " is not implemented (BPE is)");
  }
  if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0) {
    return Unimplemented(source + ": BPE dropout is not implemented");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(key) && m[key].is_string() && !m[key].get<std::string>().empty()) {
      return Unimplemented(source + ": BPE " + key + " is not implemented");
    }
  }
  impl->ignore_merges = m.value("ignore_merges", false);
  impl->byte_fallback = m.value("byte_fallback", false);
  impl->fuse_unk = m.value("fuse_unk", false);
  if (!m.contains("vocab") || !m["vocab"].is_object()) return InvalidArgument(source + ": model.vocab is missing");
  int32_t max_id = -1;
  for (const auto& [token, id] : m["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > (1 << 24)) {
      return InvalidArgument(source + ": model.vocab[" + json(token).dump() + "] is not a token id");
    }
    impl->vocab[token] = id.get<int32_t>();
    max_id = std::max(max_id, id.get<int32_t>());
  }
  // Added tokens (some are in the vocabulary already, most are beyond it).
  for (const auto& a : j.value("added_tokens", json::array())) {
    AddedToken t;
    t.id = a.value("id", -1);
    t.content = a.value("content", "");
    t.special = a.value("special", false);
    t.lstrip = a.value("lstrip", false);
    t.rstrip = a.value("rstrip", false);
    t.single_word = a.value("single_word", false);
    if (t.id < 0 || t.content.empty()) return InvalidArgument(source + ": an added token without an id or content");
    max_id = std::max(max_id, t.id);
    impl->added.push_back(std::move(t));
  }
  impl->id_to_token.resize(static_cast<size_t>(max_id + 1));
  impl->special.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : impl->vocab) impl->id_to_token[id] = token;
  for (size_t k = 0; k < impl->added.size(); ++k) {
    const AddedToken& t = impl->added[k];
    impl->id_to_token[t.id] = t.content;
    impl->special[t.id] = t.special;
    impl->AddToTrie(static_cast<int>(k));
  }
  std::fill(std::begin(impl->byte_ids), std::end(impl->byte_ids), -1);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    auto it = impl->vocab.find(name);
    if (it != impl->vocab.end()) impl->byte_ids[b] = it->second;
  }
  if (m.contains("unk_token") && m["unk_token"].is_string()) {
    auto it = impl->vocab.find(m["unk_token"].get<std::string>());
    if (it == impl->vocab.end()) return InvalidArgument(source + ": unk_token is not in the vocabulary");
    impl->unk = it->second;
  }
  // Merges: "a b" strings (older files) or [a, b] pairs.
  int32_t rank = 0;
  for (const auto& mg : m.value("merges", json::array())) {
    std::string a, b;
    if (mg.is_string()) {
      const std::string s = mg.get<std::string>();
      const size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) return InvalidArgument(source + ": merge " + mg.dump() + " is not two tokens");
      a = s.substr(0, sp), b = s.substr(sp + 1);
    } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
      a = mg[0].get<std::string>(), b = mg[1].get<std::string>();
    } else {
      return InvalidArgument(source + ": merge " + mg.dump() + " is not two tokens");
    }
    auto ia = impl->vocab.find(a), ib = impl->vocab.find(b), im = impl->vocab.find(a + b);
    if (ia == impl->vocab.end() || ib == impl->vocab.end() || im == impl->vocab.end()) {
      return InvalidArgument(source + ": merge " + mg.dump() + " names a token not in the vocabulary");
    }
    impl->merges.emplace(Impl::Key(ia->second, ib->second), std::make_pair(rank++, im->second));
  }
  MC_ASSIGN_OR_RETURN(impl->normalizer, ParseNormalizer(j.value("normalizer", json()), source + ": normalizer"));
  MC_ASSIGN_OR_RETURN(impl->pre_tokenizer,
                      ParsePreTokenizer(j.value("pre_tokenizer", json()), source + ": pre_tokenizer", &impl->byte_level));
  MC_ASSIGN_OR_RETURN(impl->decoder, ParseDecoder(j.value("decoder", json()), source + ": decoder"));
  // The post-processor: ByteLevel (offsets only) and TemplateProcessing's single template.
  std::function<Status(const json&)> post = [&](const json& p) -> Status {
    if (p.is_null()) return Status::Ok();
    const std::string ptype = p.value("type", "");
    if (ptype == "Sequence") {
      for (const auto& q : p.value("processors", json::array())) MC_RETURN_IF_ERROR(post(q));
      return Status::Ok();
    }
    if (ptype == "ByteLevel") return Status::Ok();
    if (ptype == "TemplateProcessing") {
      const json specials = p.value("special_tokens", json::object());
      bool after = false;
      for (const auto& item : p.value("single", json::array())) {
        if (item.contains("Sequence")) {
          after = true;
        } else if (item.contains("SpecialToken")) {
          const std::string name = item["SpecialToken"].value("id", "");
          if (!specials.contains(name)) {
            return InvalidArgument(source + ": post_processor names special token " + json(name).dump() +
                                   " it does not define");
          }
          for (const auto& id : specials[name].value("ids", json::array())) {
            (after ? impl->suffix_ids : impl->prefix_ids).push_back(id.get<int32_t>());
          }
        }
      }
      return Status::Ok();
    }
    return Unimplemented(source + ": post_processor " + json(ptype).dump() +
                         " is not implemented (ByteLevel, TemplateProcessing and Sequence are)");
  };
  MC_RETURN_IF_ERROR(post(j.value("post_processor", json())));
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

Result<std::vector<int32_t>> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  if (auto bad = FirstInvalidUtf8(text)) {
    return InvalidArgument("the text is not valid UTF-8 at byte " + std::to_string(*bad));
  }
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  if (add_special_tokens) out = m.prefix_ids;
  size_t start = 0;
  bool first = true;
  for (size_t i = 0; i < text.size();) {
    auto match = m.added.empty() ? std::nullopt : m.MatchAt(text, i);
    if (!match) {
      ++i;
      continue;
    }
    const int index = match->first;
    const size_t begin = std::max(match->second.first, start), end = match->second.second;
    if (begin > start) m.EncodeStretch(text.substr(start, begin - start), first, &out);
    out.push_back(m.added[index].id);
    first = false;
    start = i = end;
  }
  if (start < text.size()) m.EncodeStretch(text.substr(start), first, &out);
  if (add_special_tokens) out.insert(out.end(), m.suffix_ids.begin(), m.suffix_ids.end());
  return out;
}

Result<std::string> Tokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const Impl& m = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= static_cast<int32_t>(m.id_to_token.size()) || m.id_to_token[id].empty()) {
      return InvalidArgument("token id " + std::to_string(id) + " is not in the tokenizer's vocabulary");
    }
    if (skip_special_tokens && m.special[id]) continue;
    tokens.push_back(m.id_to_token[id]);
  }
  if (m.decoder) tokens = m.decoder(std::move(tokens));
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_to_token.size()); }

std::optional<int32_t> Tokenizer::TokenId(std::string_view token) const {
  for (const auto& a : impl_->added) {
    if (a.content == token) return a.id;
  }
  auto it = impl_->vocab.find(std::string(token));
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> Tokenizer::IdToken(int32_t id) const {
  if (id < 0 || id >= vocab_size() || impl_->id_to_token[id].empty()) return std::nullopt;
  return impl_->id_to_token[id];
}

bool Tokenizer::IsSpecial(int32_t id) const { return id >= 0 && id < vocab_size() && impl_->special[id]; }

std::string Tokenizer::Describe() const {
  if (impl_->sp) {
    return std::string("SentencePiece") + (impl_->byte_fallback ? " with byte fallback" : "") + ", " +
           std::to_string(impl_->id_to_token.size()) + " pieces";
  }
  return std::string(impl_->byte_level ? "byte-level BPE" : impl_->byte_fallback ? "BPE with byte fallback" : "BPE") +
         ", " + std::to_string(impl_->vocab.size()) + " tokens + " + std::to_string(impl_->added.size()) + " added";
}

Result<std::unique_ptr<Tokenizer>> TokenizerFromFiles(const std::map<std::string, std::string>& files,
                                                      const std::string& source) {
  if (auto it = files.find("tokenizer.json"); it != files.end()) {
    return Tokenizer::FromJson(it->second, source + "/tokenizer.json");
  }
  auto model = files.find("tokenizer.model");
  if (model == files.end()) return NotFound(source + " has neither tokenizer.json nor tokenizer.model");
  Tokenizer::SentencePieceOptions options;
  if (auto it = files.find("tokenizer_config.json"); it != files.end()) {
    const std::string where = source + "/tokenizer_config.json";
    const json c = json::parse(it->second, nullptr, false);
    if (c.is_discarded() || !c.is_object()) return InvalidArgument(where + ": not a JSON object");
    auto flag = [&](const char* key, bool* out) -> Status {
      if (!c.contains(key) || c[key].is_null()) return Status::Ok();
      if (!c[key].is_boolean()) return InvalidArgument(where + ": " + key + " is not a boolean");
      *out = c[key].get<bool>();
      return Status::Ok();
    };
    MC_RETURN_IF_ERROR(flag("add_bos_token", &options.add_bos));
    MC_RETURN_IF_ERROR(flag("add_eos_token", &options.add_eos));
    bool legacy = true;
    MC_RETURN_IF_ERROR(flag("legacy", &legacy));
    if (!legacy) {
      return Unimplemented(where + ": \"legacy\": false (no space in front of text after a special token) is not "
                           "implemented for tokenizer.model; ship the checkpoint's tokenizer.json");
    }
  }
  return Tokenizer::FromSentencePiece(model->second, source + "/tokenizer.model", options);
}

Result<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::filesystem::path& dir) {
  std::map<std::string, std::string> files;
  for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json"}) {
    std::error_code ec;
    if (files.count("tokenizer.json") || !std::filesystem::exists(dir / name, ec)) continue;  // all it needs
    MC_ASSIGN_OR_RETURN(files[name], ReadFileToString(dir / name, 1ull << 30));
  }
  return TokenizerFromFiles(files, dir.string());
}

Result<std::string> StreamDecoder::Next(int32_t id) {
  ids_.push_back(id);
  const std::vector<int32_t> before(ids_.begin() + prefix_, ids_.begin() + read_);
  const std::vector<int32_t> now(ids_.begin() + prefix_, ids_.end());
  MC_ASSIGN_OR_RETURN(std::string prefix_text, tokenizer_.Decode(before, skip_special_));
  MC_ASSIGN_OR_RETURN(std::string text, tokenizer_.Decode(now, skip_special_));
  // Held back while the newest bytes are an incomplete character (decoded as U+FFFD).
  if (text.size() > prefix_text.size() && !(text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0)) {
    std::string fresh = text.substr(prefix_text.size());
    prefix_ = read_;
    read_ = ids_.size();
    return fresh;
  }
  return std::string();
}

Result<std::string> StreamDecoder::Finish() {
  const std::vector<int32_t> before(ids_.begin() + prefix_, ids_.begin() + read_);
  const std::vector<int32_t> now(ids_.begin() + prefix_, ids_.end());
  MC_ASSIGN_OR_RETURN(std::string prefix_text, tokenizer_.Decode(before, skip_special_));
  MC_ASSIGN_OR_RETURN(std::string text, tokenizer_.Decode(now, skip_special_));
  prefix_ = read_ = ids_.size();
  return text.size() > prefix_text.size() ? text.substr(prefix_text.size()) : std::string();
}

}  // namespace modelcast::text
