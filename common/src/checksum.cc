#include "modelcast/common/checksum.h"

#include <xxhash.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "checksum_impl.h"

namespace modelcast {
namespace {

using checksum_internal::Xxh3Build;

const Xxh3Build kXxh3Library = {
    "library",
    [](const void* data, size_t size) { return XXH3_64bits(data, size); },
    []() -> void* { return XXH3_createState(); },
    [](void* state) { XXH3_freeState(static_cast<XXH3_state_t*>(state)); },
    [](void* state) { XXH3_64bits_reset(static_cast<XXH3_state_t*>(state)); },
    [](void* state, const void* data, size_t size) { XXH3_64bits_update(static_cast<XXH3_state_t*>(state), data, size); },
    [](const void* state) { return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state)); },
};

// Where the CPU has AVX2, XXH3 runs on it (checksum_avx2.cc, ~3x the shared library's own
// build); MODELCAST_XXH3=library keeps the library's (how benchmarks compare the two). Chosen
// once per process.
const Xxh3Build& Build() {
  static const Xxh3Build& build = []() -> const Xxh3Build& {
#if defined(__x86_64__)
    const char* choice = std::getenv("MODELCAST_XXH3");
    __builtin_cpu_init();
    if ((choice == nullptr || std::strcmp(choice, "library") != 0) && __builtin_cpu_supports("avx2")) {
      return checksum_internal::kXxh3Avx2;
    }
#endif
    return kXxh3Library;
  }();
  return build;
}

}  // namespace

const char* Xxh3Implementation() { return Build().name; }

uint64_t Xxh3(const void* data, size_t size) { return Build().hash(data, size); }

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
  State() : build(Build()), s(build.create()) {
    if (s == nullptr) throw std::bad_alloc();
  }
  ~State() { build.free(s); }
  const Xxh3Build& build;
  void* s;
};

Xxh3Stream::Xxh3Stream() : state_(std::make_unique<State>()) { Reset(); }
Xxh3Stream::~Xxh3Stream() = default;

void Xxh3Stream::Reset() { state_->build.reset(state_->s); }
void Xxh3Stream::Update(const void* data, size_t size) { state_->build.update(state_->s, data, size); }
uint64_t Xxh3Stream::Digest() const { return state_->build.digest(state_->s); }

}  // namespace modelcast
