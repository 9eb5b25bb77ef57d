// `modelcast tokenize` and `modelcast detokenize`: a checkpoint's (or a package's) own tokenizer,
// as the serving path uses it, for a user to check against their framework.
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "command.h"
#include "modelcast/common/file_util.h"
#include "modelcast/text/chat_template.h"
#include "modelcast/text/tokenizer.h"

namespace modelcast::cli {
namespace fs = std::filesystem;

namespace {

Result<std::unique_ptr<text::Tokenizer>> OpenTokenizer(const std::string& dir) {
  auto t = text::LoadTokenizer(dir);
  if (t.status().code() == StatusCode::kNotFound) {
    return NotFound(t.status().message() + " (a checkpoint without one is served with the byte-level fallback)");
  }
  return t;
}

}  // namespace

Result<nlohmann::ordered_json> ReadChatFile(const std::string& path) {
  MC_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, 64ull << 20));
  auto messages = nlohmann::ordered_json::parse(text, nullptr, false);
  if (messages.is_discarded()) return InvalidArgument(path + ": not JSON");
  nlohmann::ordered_json context = messages.is_array() ? nlohmann::ordered_json{{"messages", messages}} : messages;
  if (!context.is_object() || !context.contains("messages") || !context["messages"].is_array()) {
    return InvalidArgument(path + ": expected an array of messages or an object with \"messages\"");
  }
  return context;
}

// The chat `messages_file` rendered by DIR's chat template with the generation prompt.
Result<std::string> RenderChat(const std::string& dir, const std::string& messages_file) {
  MC_ASSIGN_OR_RETURN(std::string config_text, ReadFileToString(fs::path(dir) / "tokenizer_config.json"));
  MC_ASSIGN_OR_RETURN(auto chat, text::ChatSetupFromTokenizerConfig(config_text, dir + "/tokenizer_config.json"));
  MC_ASSIGN_OR_RETURN(auto context, ReadChatFile(messages_file));
  return chat->RenderForGeneration(std::move(context));
}

int RunTokenize(const std::vector<std::string>& args) {
  std::string text_file, text, chat_file;
  bool json_out = false, add_special = false;
  ArgParser p("modelcast tokenize DIR", "The token ids of a text by DIR's tokenizer.json (DIR a checkpoint or a package).");
  p.Flag("text-file", &text_file, "the text (UTF-8), read as it is");
  p.Flag("text", &text, "the text, given inline");
  p.Flag("chat-file", &chat_file, "a chat (a JSON array of messages): rendered by the chat template, then tokenized");
  p.Flag("add-special-tokens", &add_special, "add what the tokenizer's post-processor adds (Llama's bos)");
  p.Flag("json", &json_out, "print {\"ids\": [...]}");
  std::string dir;
  p.Positional("DIR", &dir, "the checkpoint or package");
  if (int rc = ParseOrExit("tokenize", p, args); rc >= 0) return rc;
  if ((text_file.empty() ? 0 : 1) + (p.WasSet("text") ? 1 : 0) + (chat_file.empty() ? 0 : 1) != 1) {
    return Fail("tokenize", InvalidArgument("give the text with exactly one of --text-file, --text or --chat-file"));
  }
  if (!chat_file.empty()) {
    auto rendered = RenderChat(dir, chat_file);
    if (!rendered.ok()) return Fail("tokenize", rendered.status());
    text = std::move(*rendered);
  }
  if (!text_file.empty()) {
    auto t = ReadFileToString(text_file, 1ull << 30);
    if (!t.ok()) return Fail("tokenize", t.status());
    text = std::move(*t);
  }
  auto tok = OpenTokenizer(dir);
  if (!tok.ok()) return Fail("tokenize", tok.status());
  // A rendered chat holds its special tokens already.
  auto ids = (*tok)->Encode(text, add_special && chat_file.empty());
  if (!ids.ok()) return Fail("tokenize", ids.status());
  if (json_out) {
    nlohmann::json j = {{"ids", *ids}};
    if (!chat_file.empty()) j = {{"text", text}, {"ids", *ids}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    for (size_t i = 0; i < ids->size(); ++i) std::printf("%s%d", i ? "," : "", (*ids)[i]);
    std::printf("\n");
  }
  return kExitOk;
}

int RunDetokenize(const std::vector<std::string>& args) {
  std::string ids_text;
  bool json_out = false, skip_special = false;
  ArgParser p("modelcast detokenize DIR", "The text of token ids by DIR's tokenizer.json (DIR a checkpoint or a package).");
  p.Flag("ids", &ids_text, "comma-separated token ids");
  p.Flag("skip-special-tokens", &skip_special, "leave the special tokens out");
  p.Flag("json", &json_out, "print {\"text\": ...}");
  std::string dir;
  p.Positional("DIR", &dir, "the checkpoint or package");
  if (int rc = ParseOrExit("detokenize", p, args); rc >= 0) return rc;
  auto ids = ParseTokens(ids_text, "--ids");
  if (!ids.ok()) return Fail("detokenize", ids.status());
  auto tok = OpenTokenizer(dir);
  if (!tok.ok()) return Fail("detokenize", tok.status());
  auto text = (*tok)->Decode(*ids, skip_special);
  if (!text.ok()) return Fail("detokenize", text.status());
  if (json_out) {
    std::printf("%s\n", nlohmann::json{{"text", *text}}.dump().c_str());
  } else {
    std::fwrite(text->data(), 1, text->size(), stdout);
    std::printf("\n");
  }
  return kExitOk;
}

}  // namespace modelcast::cli
