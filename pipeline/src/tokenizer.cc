#include "modelcast/pipeline/tokenizer.h"

namespace modelcast::pipeline {

Result<std::vector<int32_t>> ByteTokenizer::Encode(std::string_view text, const model::LlamaConfig& config) {
  if (config.vocab_size < kOffset + 256) {
    return InvalidArgument("a text prompt needs a vocabulary of at least " + std::to_string(kOffset + 256) +
                           " tokens for the byte-level tokenizer; this model has " +
                           std::to_string(config.vocab_size) + ": send token ids");
  }
  if (text.empty()) return InvalidArgument("an empty prompt");
  std::vector<int32_t> out;
  if (config.bos_token_id) out.push_back(static_cast<int32_t>(*config.bos_token_id));
  for (unsigned char c : text) out.push_back(kOffset + c);
  return out;
}

std::string ByteTokenizer::Decode(const std::vector<int32_t>& tokens) {
  std::string s;
  for (int32_t t : tokens) {
    if (t >= kOffset && t < kOffset + 256) s.push_back(static_cast<char>(t - kOffset));
  }
  return s;
}

}  // namespace modelcast::pipeline
