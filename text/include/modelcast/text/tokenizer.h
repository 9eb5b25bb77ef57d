// A checkpoint's own tokenizer, from the Hugging Face `tokenizer.json` every current model ships:
// BPE models with their normalizers, pre-tokenizers and decoders, added and special tokens. The
// kinds in use by the families modelcast serves are implemented:
//   - byte-level BPE (GPT-2 style) behind a regex split: Llama 3.x, Qwen2/2.5/3, Mistral's newer
//     tokenizers;
//   - SentencePiece-style BPE with byte fallback and the metaspace ("▁"): Llama 1/2, Mistral v0.1.
// Anything else in a tokenizer.json (another model type, normalizer, pre-tokenizer or decoder) is
// refused by name when it is loaded, never approximated. A checkpoint with only a SentencePiece
// tokenizer.model is read with Debian's libsentencepiece.
//
// Encoding follows the `tokenizers` library that transformers uses: added tokens are found in the
// raw text first (longest first, honouring lstrip/rstrip/single_word), each stretch between them
// normalized, split and merged on its own. Decoding maps bytes back to text, invalid UTF-8 as
// U+FFFD per maximal invalid subsequence (as Rust's from_utf8_lossy and TextDecoder do).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "modelcast/common/status.h"

namespace modelcast::text {

class Tokenizer {
 public:
  // Parses tokenizer.json's text; `source` names it in errors.
  static Result<std::unique_ptr<Tokenizer>> FromJson(std::string_view json, const std::string& source);
  static Result<std::unique_ptr<Tokenizer>> Load(const std::filesystem::path& tokenizer_json);
  // A SentencePiece model (tokenizer.model's bytes), for a checkpoint that has no tokenizer.json:
  // Google's libsentencepiece encodes; its control pieces and <unk> are special tokens found in
  // the text, and decoding is as transformers' converted tokenizer does it.
  struct SentencePieceOptions {
    bool add_bos = true;  // tokenizer_config.json's add_bos_token (transformers' default for Llama)
    bool add_eos = false;
  };
  static Result<std::unique_ptr<Tokenizer>> FromSentencePiece(std::string_view model, const std::string& source,
                                                              const SentencePieceOptions& options);
  ~Tokenizer();

  // The ids of `text` (UTF-8; InvalidArgument naming the byte offset where it is not). Special
  // tokens written in the text are recognised, as transformers does by default. With
  // `add_special_tokens`, the post-processor's template adds what it adds (Llama's bos).
  Result<std::vector<int32_t>> Encode(std::string_view text, bool add_special_tokens = false) const;
  // The text of `ids` (unknown ids are an error naming them). `skip_special_tokens` leaves out
  // the added tokens marked special.
  Result<std::string> Decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  int32_t vocab_size() const;  // the largest id + 1
  std::optional<int32_t> TokenId(std::string_view token) const;
  std::optional<std::string> IdToken(int32_t id) const;
  bool IsSpecial(int32_t id) const;
  std::string Describe() const;  // "byte-level BPE, 128000 + 256 added tokens"

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A checkpoint's tokenizer from its files (name -> bytes): tokenizer.json where there is one, else
// tokenizer.model (tokenizer_config.json's add_bos_token and add_eos_token as transformers reads
// them; its `legacy: false` is refused by name). NotFound when there is neither; `source` names the
// files in errors ("model 'x'", "/path/ckpt").
Result<std::unique_ptr<Tokenizer>> TokenizerFromFiles(const std::map<std::string, std::string>& files,
                                                      const std::string& source);
// The same from a checkpoint's or a package's folder.
Result<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::filesystem::path& dir);

// Text as tokens arrive, never part of a UTF-8 character: each Next returns what the new token
// completes (possibly nothing), as a decode of everything so far would show it.
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
      : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}
  Result<std::string> Next(int32_t id);
  // What is held back at the end (an incomplete character, as U+FFFD).
  Result<std::string> Finish();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  size_t prefix_ = 0, read_ = 0;  // ids_[prefix_, read_) were decoded to show the text emitted last
};

// Lossy UTF-8: each maximal invalid subsequence becomes U+FFFD.
std::string Utf8Lossy(std::string_view bytes);
// The byte offset of the first invalid UTF-8 sequence, or nullopt.
std::optional<size_t> FirstInvalidUtf8(std::string_view bytes);

}  // namespace modelcast::text
