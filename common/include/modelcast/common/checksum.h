// Slice checksums: XXH3-64 (xxHash), written as 16 lowercase hex digits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "modelcast/common/status.h"

namespace modelcast {

uint64_t Xxh3(const void* data, size_t size);
// Which build of XXH3 this process runs: "avx2" (where the CPU has it) or "library" (the shared
// libxxhash's; also with MODELCAST_XXH3=library in the environment). The values are the same.
const char* Xxh3Implementation();

// 16 lowercase hex digits, zero-padded.
std::string ChecksumToHex(uint64_t checksum);
// Accepts exactly 16 hex digits (either case).
Result<uint64_t> ChecksumFromHex(std::string_view hex);

// Incremental XXH3-64 over data that arrives in pieces; equals Xxh3() of the concatenation.
class Xxh3Stream {
 public:
  Xxh3Stream();
  ~Xxh3Stream();
  Xxh3Stream(const Xxh3Stream&) = delete;
  Xxh3Stream& operator=(const Xxh3Stream&) = delete;

  void Update(const void* data, size_t size);
  uint64_t Digest() const;
  void Reset();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace modelcast
