// Fuzzes the safetensors header parser with whole files. On success the parse must describe
// a file whose tensors tile the data region exactly and whose sizes agree with their shapes.
#include <cstdint>
#include <cstdlib>
#include <span>

#include "modelcast/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace modelcast;
  auto h = model::ParseSafetensorsHeader(std::span<const uint8_t>(data, size), size, "fuzz.safetensors");
  if (!h.ok()) return 0;
  uint64_t cursor = 0;
  for (const auto& t : h->tensors) {
    if (t.begin != cursor || t.end < t.begin) std::abort();
    uint64_t n = DTypeSize(t.dtype);
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    if (n != t.nbytes()) std::abort();
    cursor = t.end;
  }
  if (cursor != h->data_bytes || h->data_offset + h->data_bytes != size) std::abort();
  return 0;
}
