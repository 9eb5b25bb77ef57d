// UTF-8 helpers of the tokenizer (valid input assumed unless said otherwise).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace modelcast::text {

// Bytes of the character whose first byte is `lead`.
size_t Utf8Length(unsigned char lead);
// The code point at s[i] and its length in bytes.
uint32_t DecodeAt(std::string_view s, size_t i, size_t* len);
void AppendUtf8(uint32_t cp, std::string* out);

}  // namespace modelcast::text
