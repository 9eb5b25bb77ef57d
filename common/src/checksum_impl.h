// The AVX2 build of XXH3 (checksum_avx2.cc, x86-64 only), chosen by checksum.cc at run time.
#pragma once

#include <cstddef>
#include <cstdint>

namespace modelcast::checksum_internal {

uint64_t Xxh3Avx2(const void* data, size_t size);
void* Xxh3Avx2New();  // null when out of memory
void Xxh3Avx2Free(void* state);
void Xxh3Avx2Reset(void* state);
void Xxh3Avx2Update(void* state, const void* data, size_t size);
uint64_t Xxh3Avx2Digest(const void* state);

}  // namespace modelcast::checksum_internal
