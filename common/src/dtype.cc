#include "modelcast/common/dtype.h"

#include <string>

namespace modelcast {
namespace {

struct DTypeNames {
  DType type;
  size_t size;
  std::string_view safetensors;
  std::string_view short_name;
  std::string_view torch;
};

constexpr DTypeNames kNames[] = {
    {DType::kF64, 8, "F64", "fp64", "float64"},
    {DType::kF32, 4, "F32", "fp32", "float32"},
    {DType::kF16, 2, "F16", "fp16", "float16"},
    {DType::kBF16, 2, "BF16", "bf16", "bfloat16"},
    {DType::kF8E4M3, 1, "F8_E4M3", "fp8_e4m3", "float8_e4m3fn"},
    {DType::kF8E5M2, 1, "F8_E5M2", "fp8_e5m2", "float8_e5m2"},
    {DType::kI64, 8, "I64", "i64", "int64"},
    {DType::kI32, 4, "I32", "i32", "int32"},
    {DType::kI16, 2, "I16", "i16", "int16"},
    {DType::kI8, 1, "I8", "i8", "int8"},
    {DType::kU64, 8, "U64", "u64", "uint64"},
    {DType::kU32, 4, "U32", "u32", "uint32"},
    {DType::kU16, 2, "U16", "u16", "uint16"},
    {DType::kU8, 1, "U8", "u8", "uint8"},
    {DType::kBool, 1, "BOOL", "bool", "bool"},
};

const DTypeNames& Names(DType t) {
  for (const auto& n : kNames) {
    if (n.type == t) return n;
  }
  return kNames[0];  // unreachable: every enumerator is in the table
}

}  // namespace

size_t DTypeSize(DType t) { return Names(t).size; }
std::string_view DTypeSafetensorsName(DType t) { return Names(t).safetensors; }
std::string_view DTypeShortName(DType t) { return Names(t).short_name; }
std::string_view DTypeTorchName(DType t) { return Names(t).torch; }

std::optional<DType> DTypeFromSafetensorsName(std::string_view name) {
  for (const auto& n : kNames) {
    if (n.safetensors == name) return n.type;
  }
  return std::nullopt;
}

Result<DType> ParseModelDType(std::string_view name) {
  if (name == "bf16" || name == "bfloat16" || name == "BF16") return DType::kBF16;
  if (name == "fp16" || name == "float16" || name == "half" || name == "F16") return DType::kF16;
  if (name == "fp32" || name == "float32" || name == "float" || name == "F32") return DType::kF32;
  return InvalidArgument("unsupported model dtype '" + std::string(name) + "' (expected bf16, fp16 or fp32)");
}

uint16_t FloatToF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or NaN
    return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  const int exp = static_cast<int>(abs >> 23) - 127;
  uint32_t mant = abs & 0x7fffffu;
  if (exp >= -14) {  // normal half
    uint32_t h = (static_cast<uint32_t>(exp + 15) << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent
    return static_cast<uint16_t>(sign | h);
  }
  if (exp < -25) return static_cast<uint16_t>(sign);  // underflows to zero
  // Subnormal half: value = mant_full * 2^(exp-23), half unit = 2^-24.
  mant |= 0x800000u;
  const int shift = -exp - 1;  // 14..24
  uint32_t h = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1);
  if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float F16ToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t out;
  if (exp == 0x1f) {
    out = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    out = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    out = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    out = sign | (static_cast<uint32_t>(112 - e) << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &out, 4);
  return f;
}

}  // namespace modelcast
