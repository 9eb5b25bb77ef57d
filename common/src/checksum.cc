#include "modelcast/common/checksum.h"

// Debian's shared libxxhash dispatches XXH3 at run time to the widest vector unit the CPU
// has (AVX-512 here: 64 GB/s on cached data, against 17 GB/s for the header-only SSE2 build).
#include <xxhash.h>

#include <new>

namespace modelcast {

uint64_t Xxh3(const void* data, size_t size) { return XXH3_64bits(data, size); }

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
  State() : s(XXH3_createState()) {
    if (s == nullptr) throw std::bad_alloc();
  }
  ~State() { XXH3_freeState(s); }
  XXH3_state_t* s;
};

Xxh3Stream::Xxh3Stream() : state_(std::make_unique<State>()) { Reset(); }
Xxh3Stream::~Xxh3Stream() = default;

void Xxh3Stream::Reset() { XXH3_64bits_reset(state_->s); }
void Xxh3Stream::Update(const void* data, size_t size) { XXH3_64bits_update(state_->s, data, size); }
uint64_t Xxh3Stream::Digest() const { return XXH3_64bits_digest(state_->s); }

}  // namespace modelcast
