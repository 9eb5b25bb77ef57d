#include "modelcast/common/checksum.h"

#include <xxhash.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "checksum_impl.h"

namespace modelcast {
namespace {

// Where the CPU has AVX2, XXH3 runs on it (checksum_avx2.cc, ~3x the shared library's own
// build); MODELCAST_XXH3=library keeps the library's (how benchmarks compare the two).
bool UseAvx2() {
#if defined(__x86_64__)
  static const bool use = [] {
    const char* choice = std::getenv("MODELCAST_XXH3");
    if (choice != nullptr && std::strcmp(choice, "library") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return use;
#else
  return false;
#endif
}

}  // namespace

const char* Xxh3Implementation() { return UseAvx2() ? "avx2" : "library"; }

uint64_t Xxh3(const void* data, size_t size) {
#if defined(__x86_64__)
  if (UseAvx2()) return checksum_internal::Xxh3Avx2(data, size);
#endif
  return XXH3_64bits(data, size);
}

std::string ChecksumToHex(uint64_t checksum) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i) {
    s[i] = kDigits[checksum & 0xf];
    checksum >>= 4;
  }
  return s;
}

Result<uint64_t> ChecksumFromHex(std::string_view hex) {
  if (hex.size() != 16) {
    return InvalidArgument("checksum '" + std::string(hex) + "' is not 16 hex digits");
  }
  uint64_t v = 0;
  for (char c : hex) {
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
      d = c - 'A' + 10;
    else
      return InvalidArgument("checksum '" + std::string(hex) + "' has a non-hex digit");
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  return v;
}

struct Xxh3Stream::State {
  State() : avx2(UseAvx2()) {
#if defined(__x86_64__)
    if (avx2) s = checksum_internal::Xxh3Avx2New();
#endif
    if (!avx2) s = XXH3_createState();
    if (s == nullptr) throw std::bad_alloc();
  }
  ~State() {
#if defined(__x86_64__)
    if (avx2) {
      checksum_internal::Xxh3Avx2Free(s);
      return;
    }
#endif
    XXH3_freeState(static_cast<XXH3_state_t*>(s));
  }
  bool avx2;
  void* s = nullptr;
};

Xxh3Stream::Xxh3Stream() : state_(std::make_unique<State>()) { Reset(); }
Xxh3Stream::~Xxh3Stream() = default;

void Xxh3Stream::Reset() {
#if defined(__x86_64__)
  if (state_->avx2) {
    checksum_internal::Xxh3Avx2Reset(state_->s);
    return;
  }
#endif
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_->s));
}
void Xxh3Stream::Update(const void* data, size_t size) {
#if defined(__x86_64__)
  if (state_->avx2) {
    checksum_internal::Xxh3Avx2Update(state_->s, data, size);
    return;
  }
#endif
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_->s), data, size);
}
uint64_t Xxh3Stream::Digest() const {
#if defined(__x86_64__)
  if (state_->avx2) return checksum_internal::Xxh3Avx2Digest(state_->s);
#endif
  return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_->s));
}

}  // namespace modelcast
