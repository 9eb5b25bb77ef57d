// Fuzzes what a fabric peer's bytes go through before a run believes them (fabric/src/wire.cc):
// the headers of slice pieces and landed notices, the one-number headers of the other
// messages, and a receiver's offer of the regions its senders may write into. A header that
// decodes must encode back to the same bytes; an offer that parses must name only blocks of the
// model, each with a region that holds it, and must parse again, unchanged, from its own
// encoding.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "modelcast/fabric/wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace modelcast::fabric;
  const std::vector<uint8_t> header(data, data + (size < 24 ? size : 24));
  for (bool with_length : {false, true}) {
    Piece p;
    if (DecodePieceHeader(header, with_length, &p) && EncodePieceHeader(p, with_length) != header) std::abort();
  }
  uint32_t value = 0;
  if (DecodeU32(header, &value) && EncodeU32(value) != header) std::abort();

  const std::vector<uint64_t> block_bytes = {4096, 1 << 20, 0, 12345};
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto offer = ParseOffer(text, block_bytes, "m");
  if (!offer.ok()) {
    if (offer.status().message().empty()) std::abort();  // a refusal says why
    return 0;
  }
  for (const auto& [block, o] : *offer) {
    if (block >= block_bytes.size() || o.base > o.region.length || o.region.length - o.base < block_bytes[block]) {
      std::abort();
    }
  }
  const std::string encoded = EncodeOffer(*offer);
  auto again = ParseOffer(encoded, block_bytes, "m");
  if (!again.ok() || EncodeOffer(*again) != encoded) std::abort();
  return 0;
}
