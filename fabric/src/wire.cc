#include "modelcast/fabric/wire.h"

#include <nlohmann/json.hpp>

namespace modelcast::fabric {

namespace {
void PutLe(std::vector<uint8_t>& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint64_t GetLe(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}
}  // namespace

std::vector<uint8_t> EncodeU32(uint32_t v) {
  std::vector<uint8_t> h;
  PutLe(h, v, 4);
  return h;
}

bool DecodeU32(const std::vector<uint8_t>& h, uint32_t* v) {
  if (h.size() != 4) return false;
  *v = static_cast<uint32_t>(GetLe(h.data(), 4));
  return true;
}

std::vector<uint8_t> EncodePieceHeader(const Piece& piece, bool with_length) {
  std::vector<uint8_t> h;
  PutLe(h, piece.slice, 4);
  PutLe(h, piece.offset, 8);
  if (with_length) PutLe(h, piece.length, 8);
  return h;
}

bool DecodePieceHeader(const std::vector<uint8_t>& h, bool with_length, Piece* piece) {
  if (h.size() != (with_length ? 20u : 12u)) return false;
  piece->slice = static_cast<uint32_t>(GetLe(h.data(), 4));
  piece->offset = GetLe(h.data() + 4, 8);
  if (with_length) piece->length = GetLe(h.data() + 12, 8);
  return true;
}

// A region as it travels to the peers that may write into it: address:length:hex-key.
std::string RemoteRegion::Serialize() const {
  std::string out = std::to_string(address) + ":" + std::to_string(length) + ":";
  static constexpr char kHex[] = "0123456789abcdef";
  for (unsigned char c : key) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

Result<RemoteRegion> RemoteRegion::Parse(std::string_view text) {
  const auto a = text.find(':');
  const auto b = a == std::string_view::npos ? a : text.find(':', a + 1);
  if (b == std::string_view::npos)
    return InvalidArgument("remote region '" + std::string(text.substr(0, 40)) + "' is not address:length:key");
  RemoteRegion r;
  try {
    r.address = std::stoull(std::string(text.substr(0, a)));
    r.length = std::stoull(std::string(text.substr(a + 1, b - a - 1)));
  } catch (...) {
    return InvalidArgument("remote region: bad address or length");
  }
  const std::string_view hex = text.substr(b + 1);
  if (hex.size() % 2 != 0) return InvalidArgument("remote region: odd-length key");
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (size_t i = 0; i < hex.size(); i += 2) {
    const int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return InvalidArgument("remote region: key is not hex");
    r.key.push_back(static_cast<char>(hi << 4 | lo));
  }
  return r;
}

std::string EncodeOffer(const std::map<uint32_t, OfferedBlock>& blocks) {
  nlohmann::json offer = nlohmann::json::array();
  for (const auto& [b, o] : blocks) offer.push_back({{"block", b}, {"base", o.base}, {"region", o.region.Serialize()}});
  return offer.dump();
}

Result<std::map<uint32_t, OfferedBlock>> ParseOffer(const std::string& text, const std::vector<uint64_t>& block_bytes,
                                                    const std::string& model) {
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_array()) return InvalidArgument("not a list of block regions");
  std::map<uint32_t, OfferedBlock> blocks;
  for (const auto& e : j) {
    if (!e.is_object() || !e.contains("block") || !e["block"].is_number_unsigned() || !e.contains("base") ||
        !e["base"].is_number_unsigned() || !e.contains("region") || !e["region"].is_string()) {
      return InvalidArgument("an entry is not {block, base, region}: " + e.dump().substr(0, 200));
    }
    const uint64_t b = e["block"].get<uint64_t>(), base = e["base"].get<uint64_t>();
    if (b >= block_bytes.size()) {
      return InvalidArgument("block " + std::to_string(b) + " is not in model '" + model + "' (" +
                             std::to_string(block_bytes.size()) + " blocks)");
    }
    MC_ASSIGN_OR_RETURN(auto region, RemoteRegion::Parse(e["region"].get<std::string>()));
    if (base > region.length || region.length - base < block_bytes[b]) {
      return InvalidArgument("the region of block " + std::to_string(b) + " (" + std::to_string(region.length) +
                             " bytes from " + std::to_string(base) + ") cannot hold its " +
                             std::to_string(block_bytes[b]) + " bytes");
    }
    if (!blocks.emplace(static_cast<uint32_t>(b), OfferedBlock{std::move(region), base}).second) {
      return InvalidArgument("block " + std::to_string(b) + " offered twice");
    }
  }
  return blocks;
}

}  // namespace modelcast::fabric
