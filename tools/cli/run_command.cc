// `modelcast run DIR`: a checkpoint or a package run on this machine alone, before it is
// registered: the tokens it generates, and the last prompt position's logits as a NumPy file to
// compare with another framework.
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "command.h"
#include "modelcast/common/file_util.h"
#include "modelcast/model/checkpoint.h"
#include "modelcast/model/package.h"
#include "modelcast/pipeline/pipeline.h"
#include "modelcast/pipeline/tokenizer.h"
#include "modelcast/pipeline/weights.h"
#include "modelcast/text/tokenizer.h"

namespace modelcast::cli {
namespace fs = std::filesystem;

namespace {

// A NumPy .npy file (format 1.0) of one float32 vector: the magic, the header's length, a
// Python-literal header padded with spaces to a 64-byte boundary, then the values, little-endian.
std::string NpyFloat32(const std::vector<float>& values) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(values.size()) + ",), }";
  const size_t fixed = 10;  // magic (6), version (2), header length (2)
  const size_t total = (fixed + header.size() + 1 + 63) / 64 * 64;
  header.append(total - fixed - header.size() - 1, ' ');
  header.push_back('\n');
  std::string out("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.push_back(static_cast<char>(len & 0xff));
  out.push_back(static_cast<char>(len >> 8));
  out += header;
  static_assert(sizeof(float) == 4);
  const size_t at = out.size();
  out.resize(at + 4 * values.size());
  std::memcpy(out.data() + at, values.data(), 4 * values.size());  // x86-64 and arm64: little-endian
  return out;
}

}  // namespace

Result<std::vector<int32_t>> ParseTokens(const std::string& text, const std::string& flag) {
  std::vector<int32_t> out;
  size_t i = 0;
  while (i < text.size()) {
    size_t end = text.find(',', i);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(i, end - i);
    if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos || item.size() > 9) {
      return InvalidArgument(flag + ": '" + item + "' is not a token id (expected comma-separated ids, e.g. 1,17,300)");
    }
    out.push_back(static_cast<int32_t>(std::stol(item)));
    i = end + 1;
  }
  if (out.empty()) return InvalidArgument(flag + ": no token ids");
  return out;
}


int RunRun(const std::vector<std::string>& args) {
  std::string path, tokens_text, prompt_text, logits_path;
  int64_t max_tokens = 16;
  bool json = false;
  ArgParser p("modelcast run",
              "Runs a checkpoint or a package on this machine alone (CPU, every layer in one stage): greedy\n"
              "generation from the prompt, the tokens printed; with --logits, the logits of the prompt's last\n"
              "position written as a NumPy .npy file (float32, shape [vocab]).");
  p.Positional("DIR", &path, "package or HF checkpoint directory");
  p.Flag("tokens", &tokens_text, "the prompt as comma-separated token ids");
  p.Flag("prompt", &prompt_text, "the prompt as text, through the model's own tokenizer (byte-level for a model without one)");
  p.Flag("max-tokens", &max_tokens, "tokens to generate [16]");
  p.Flag("logits", &logits_path, "write the prompt's last-position logits here (.npy)");
  p.Flag("json", &json, "print one JSON object");
  if (int rc = ParseOrExit("run", p, args); rc >= 0) return rc;
  if (tokens_text.empty() == prompt_text.empty()) {
    std::fprintf(stderr, "modelcast run: give the prompt as --tokens IDS or as --prompt TEXT (one of them)\n");
    return kExitUsage;
  }
  if (max_tokens < 1 || max_tokens > 1 << 20) {
    return Fail("run", InvalidArgument("--max-tokens must be between 1 and 1048576"));
  }
  // The weights, from a package or a checkpoint.
  std::error_code ec;
  std::unique_ptr<model::Package> package;
  std::shared_ptr<const void> weights;  // what the stage reads its weights in
  model::LlamaConfig config;
  pipeline::WeightLookup lookup;
  if (fs::exists(fs::path(path) / model::kManifestFile, ec)) {
    auto pkg = model::Package::Open(path);
    if (!pkg.ok()) return Fail("run", pkg.status());
    package = std::make_unique<model::Package>(std::move(*pkg));
    auto w = pipeline::PackageWeights::Load(*package);
    if (!w.ok()) return Fail("run", w.status());
    std::shared_ptr<pipeline::PackageWeights> held = std::move(*w);
    config = package->manifest().config;
    lookup = held->lookup();
    weights = held;
  } else {
    auto ck = model::HfCheckpoint::Open(path);
    if (!ck.ok()) return Fail("run", ck.status());
    auto dtype = ck->CheckAgainstConfig(nullptr);
    if (!dtype.ok()) return Fail("run", dtype.status());
    auto w = pipeline::CheckpointWeights::Load(*ck);
    if (!w.ok()) return Fail("run", w.status());
    std::shared_ptr<pipeline::CheckpointWeights> held = std::move(*w);
    config = ck->config();
    lookup = held->lookup();
    weights = held;
  }
  // Text through the model's own tokenizer where it has one (tokenizer.json or tokenizer.model).
  std::unique_ptr<text::Tokenizer> tokenizer;
  if (auto t = text::LoadTokenizer(path); t.ok()) {
    tokenizer = std::move(*t);
  } else if (t.status().code() != StatusCode::kNotFound && !prompt_text.empty()) {
    return Fail("run", t.status().WithContext("the model's tokenizer (give the prompt's ids with --tokens)"));
  }
  std::vector<int32_t> prompt;
  if (!tokens_text.empty()) {
    auto t = ParseTokens(tokens_text, "--tokens");
    if (!t.ok()) return Fail("run", t.status());
    prompt = std::move(*t);
  } else {
    auto t = tokenizer ? tokenizer->Encode(prompt_text, /*add_special_tokens=*/true)
                       : pipeline::ByteTokenizer::Encode(prompt_text, config);
    if (!t.ok()) return Fail("run", t.status());
    prompt = std::move(*t);
  }
  for (int32_t t : prompt) {
    if (t < 0 || t >= config.vocab_size) {
      return Fail("run", InvalidArgument("token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                                         std::to_string(config.vocab_size) + ")"));
    }
  }
  if (static_cast<int64_t>(prompt.size()) + max_tokens > config.MaxPositions()) {
    return Fail("run", OutOfRange("a prompt of " + std::to_string(prompt.size()) + " tokens plus --max-tokens " +
                                  std::to_string(max_tokens) + " passes the model's " +
                                  std::to_string(config.MaxPositions()) + " positions"));
  }
  pipeline::StageOptions options;
  options.weights_owner = weights;  // read in place
  auto stage = pipeline::Stage::Create(config, {0, config.num_hidden_layers}, lookup, options);
  if (!stage.ok()) return Fail("run", stage.status());
  std::vector<std::unique_ptr<pipeline::Stage>> stages;
  stages.push_back(std::move(*stage));
  auto pl = pipeline::LocalPipeline::Create(std::move(stages));
  if (!pl.ok()) return Fail("run", pl.status());
  const int32_t stop = config.eos_token_id ? static_cast<int32_t>(*config.eos_token_id) : -1;
  auto gen = pipeline::Generate(**pl, 1, prompt, static_cast<int>(max_tokens), pipeline::SamplingParams{}, stop);
  if (!gen.ok()) return Fail("run", gen.status());
  if (!logits_path.empty()) {
    Status st = WriteFileAtomic(logits_path, NpyFloat32(gen->logits.front()));
    if (!st.ok()) return Fail("run", st);
  }
  // The answer's text, special tokens left out (ids past a padded vocabulary's tokenizer too).
  std::string answer;
  if (!prompt_text.empty()) {
    if (tokenizer) {
      std::vector<int32_t> known;
      for (int32_t t : gen->tokens) {
        if (tokenizer->IdToken(t)) known.push_back(t);
      }
      auto decoded = tokenizer->Decode(known, /*skip_special_tokens=*/true);
      if (decoded.ok()) answer = std::move(*decoded);
    } else {
      answer = pipeline::ByteTokenizer::Decode(gen->tokens);
    }
  }
  if (json) {
    nlohmann::json j = {{"prompt_tokens", prompt}, {"tokens", gen->tokens}};
    if (!prompt_text.empty()) j["text"] = answer;
    if (!logits_path.empty()) j["logits"] = logits_path;
    std::printf("%s\n", j.dump().c_str());
    return kExitOk;
  }
  std::string ids;
  for (int32_t t : gen->tokens) ids += (ids.empty() ? "" : ",") + std::to_string(t);
  std::printf("%s\n", ids.c_str());
  if (!prompt_text.empty()) std::printf("%s\n", answer.c_str());
  return kExitOk;
}

}  // namespace modelcast::cli
