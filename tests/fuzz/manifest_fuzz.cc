// Fuzzes the manifest parser. Whatever parses must validate, and must survive a
// serialize/parse round trip unchanged.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "modelcast/model/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace modelcast;
  auto m = model::Manifest::Parse(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz/manifest.json");
  if (!m.ok()) return 0;
  if (!m->Validate("fuzz").ok()) std::abort();
  const std::string text = m->Serialize();
  auto again = model::Manifest::Parse(text, "fuzz/manifest.json");
  if (!again.ok() || again->Serialize() != text) std::abort();
  return 0;
}
