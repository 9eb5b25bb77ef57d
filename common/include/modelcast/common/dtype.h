// Element types of model tensors, their names in the formats modelcast reads and writes, and
// the float <-> bf16/fp16 conversions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

#include "modelcast/common/status.h"

namespace modelcast {

enum class DType : uint8_t {
  kF64,
  kF32,
  kF16,
  kBF16,
  kF8E4M3,
  kF8E5M2,
  kI64,
  kI32,
  kI16,
  kI8,
  kU64,
  kU32,
  kU16,
  kU8,
  kBool,
};

// Bytes per element.
size_t DTypeSize(DType t);
// Safetensors' spelling: "F32", "BF16", ...
std::string_view DTypeSafetensorsName(DType t);
std::optional<DType> DTypeFromSafetensorsName(std::string_view name);
// Short spelling used by modelcast's CLI and manifest: "fp32", "fp16", "bf16", ...
std::string_view DTypeShortName(DType t);
// PyTorch's spelling used by HF's config.json ("torch_dtype"): "float32", "bfloat16", ...
std::string_view DTypeTorchName(DType t);
// Parses the floating-point model dtypes in any of the spellings above
// (bf16 / bfloat16 / BF16, fp16 / float16 / half / F16, fp32 / float32 / float / F32).
Result<DType> ParseModelDType(std::string_view name);

// Round-to-nearest-even float -> bf16; NaN stays NaN.
inline uint16_t FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float Bf16ToFloat(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE binary16 conversions, round-to-nearest-even, with subnormals, infinities and NaN.
uint16_t FloatToF16(float f);
float F16ToFloat(uint16_t h);

}  // namespace modelcast
