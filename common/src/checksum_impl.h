// A build of XXH3-64 (checksum.cc picks one at run time): the shared libxxhash's, or the AVX2
// one of checksum_avx2.cc (x86-64 only). Every build gives the same values.
#pragma once

#include <cstddef>
#include <cstdint>

namespace modelcast::checksum_internal {

struct Xxh3Build {
  const char* name;
  uint64_t (*hash)(const void* data, size_t size);
  void* (*create)();  // a streaming state; null when out of memory
  void (*free)(void* state);
  void (*reset)(void* state);
  void (*update)(void* state, const void* data, size_t size);
  uint64_t (*digest)(const void* state);
};

#if defined(__x86_64__)
extern const Xxh3Build kXxh3Avx2;  // checksum_avx2.cc; only where the CPU has AVX2
#endif

}  // namespace modelcast::checksum_internal
