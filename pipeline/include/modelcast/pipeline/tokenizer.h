// A byte-level fallback tokenizer, so that text prompts work on models without a tokenizer of
// their own (the synthetic ones): token id = byte value + 3 (ids 0-2 stay the special tokens:
// unknown, bos, eos). Real checkpoints come with their own tokenizer; clients of those send
// token ids.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "modelcast/common/status.h"
#include "modelcast/model/llama_config.h"

namespace modelcast::pipeline {

class ByteTokenizer {
 public:
  static constexpr int32_t kOffset = 3;
  // The text's bytes as token ids, after the model's bos token when it has one. InvalidArgument
  // when the vocabulary is too small to hold every byte, or the text is empty.
  static Result<std::vector<int32_t>> Encode(std::string_view text, const model::LlamaConfig& config);
  // The bytes of the tokens that are bytes; other ids (special tokens) are left out.
  static std::string Decode(const std::vector<int32_t>& tokens);
};

}  // namespace modelcast::pipeline
