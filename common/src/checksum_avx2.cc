// XXH3-64 built for AVX2 from xxHash's own header (Debian's libxxhash-dev, XXH_INLINE_ALL: every
// function static to this file, so nothing here clashes with the shared library's symbols or
// leaks AVX2 code into other files). Debian's shared libxxhash picks its vector path at run time
// (AVX-512 on this project's dev VM) and hashes at 13-15 GB/s there, against 40-46 GB/s here, over
// a 16 MiB slice or a cached 256 KiB piece (checksum_bench). checksum.cc calls these only where
// the CPU has AVX2.
// The values are XXH3's, whichever vector unit computes them (checksum_test compares them).
#if defined(__x86_64__)
#define XXH_INLINE_ALL
#include <immintrin.h>
#include <xxhash.h>

#include "checksum_impl.h"

namespace modelcast::checksum_internal {
namespace {

// Clears the vector registers' upper halves before returning to code built for SSE: GCC leaves
// out the vzeroupper of XXH3's long-input path here, and SSE code run after it with the upper
// halves dirty ran 3.5x slower (the shared libxxhash: 3.8 against 13 GB/s, checksum_bench).
template <typename T>
T Clean(T value) {
  _mm256_zeroupper();
  return value;
}

}  // namespace

const Xxh3Build kXxh3Avx2 = {
    "avx2",
    [](const void* data, size_t size) { return Clean(XXH3_64bits(data, size)); },
    []() -> void* { return XXH3_createState(); },
    [](void* state) { XXH3_freeState(static_cast<XXH3_state_t*>(state)); },
    [](void* state) { Clean(XXH3_64bits_reset(static_cast<XXH3_state_t*>(state))); },
    [](void* state, const void* data, size_t size) {
      Clean(XXH3_64bits_update(static_cast<XXH3_state_t*>(state), data, size));
    },
    [](const void* state) { return Clean(XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state))); },
};

}  // namespace modelcast::checksum_internal
#endif
