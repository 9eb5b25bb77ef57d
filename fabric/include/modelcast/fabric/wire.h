// What the plan executor puts on the wire: its message types, their 4-byte headers, and a
// receiver's offer of the regions its senders may write into. Both ends of a run use this one
// codec; a peer's bytes are checked here before the run believes them.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "modelcast/common/status.h"
#include "modelcast/fabric/transport.h"

namespace modelcast::fabric {

// Message types (a channel mux adds the channel in the high byte).
// A slice moves in pieces (ExecutorOptions::pieces), each its own message or write, so that a
// relay forwards the first piece while the rest are still on their way (cut-through); the
// receiver checks the whole slice once every byte of it has landed.
inline constexpr uint16_t kSliceMessage = 1;     // header: piece (slice u32, offset u64); payload: its bytes
inline constexpr uint16_t kResendMessage = 2;    // header: slice (u32)
inline constexpr uint16_t kFinishedMessage = 3;  // header: slices verified from the sender (u32)
inline constexpr uint16_t kOfferMessage = 4;     // header: 1 if a remote region follows as payload, else 0
inline constexpr uint16_t kLandedMessage = 5;    // header: piece (slice u32, offset u64, length u64), written and flushed

// The one header the messages carry: a little-endian u32.
std::vector<uint8_t> EncodeU32(uint32_t value);
bool DecodeU32(const std::vector<uint8_t>& header, uint32_t* value);

// Which bytes of a slice a piece is: `length` bytes from `offset` within it.
struct Piece {
  uint32_t slice = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
};
// A slice message's header (slice, offset: its length is the payload's), and a landed notice's
// (slice, offset, length). Decoding fails on a header of any other size.
std::vector<uint8_t> EncodePieceHeader(const Piece& piece, bool with_length);
bool DecodePieceHeader(const std::vector<uint8_t>& header, bool with_length, Piece* piece);

// One block a receiver offers: its region, holding the block whole from `base` on.
struct OfferedBlock {
  RemoteRegion region;
  uint64_t base = 0;
};

// The largest offer accepted (a packed key is a few hundred bytes, one per block).
inline constexpr uint64_t kMaxOffer = 1 << 20;

// [{"block": B, "base": OFFSET, "region": REMOTE-REGION}, ...]
std::string EncodeOffer(const std::map<uint32_t, OfferedBlock>& blocks);
// Reads an offer for model `model`, whose block b is block_bytes[b] long: an entry that is
// malformed, names a block the model lacks, cannot hold its block or repeats one is refused,
// naming it.
Result<std::map<uint32_t, OfferedBlock>> ParseOffer(const std::string& text, const std::vector<uint64_t>& block_bytes,
                                                    const std::string& model);

}  // namespace modelcast::fabric
