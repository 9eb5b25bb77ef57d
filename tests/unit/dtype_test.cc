#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "modelcast/common/dtype.h"

namespace modelcast {
namespace {

TEST(DTypeTest, NamesRoundTrip) {
  for (DType t :
       {DType::kF64, DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3, DType::kF8E5M2, DType::kI64, DType::kI32,
        DType::kI16, DType::kI8, DType::kU64, DType::kU32, DType::kU16, DType::kU8, DType::kBool}) {
    auto back = DTypeFromSafetensorsName(DTypeSafetensorsName(t));
    ASSERT_TRUE(back.has_value()) << DTypeSafetensorsName(t);
    EXPECT_EQ(*back, t);
  }
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF64), 8u);
  EXPECT_FALSE(DTypeFromSafetensorsName("F128").has_value());
  EXPECT_EQ(*ParseModelDType("bfloat16"), DType::kBF16);
  EXPECT_EQ(*ParseModelDType("half"), DType::kF16);
  EXPECT_EQ(*ParseModelDType("fp32"), DType::kF32);
  auto bad = ParseModelDType("int4");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("int4"), std::string::npos);
}

TEST(DTypeTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(Bf16ToFloat(0x3f80), 1.0f);
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3*2^-8 is halfway between 1+2^-7 (odd mantissa) and 1+2^-6: ties to even (up).
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(Bf16ToFloat(FloatToBf16(std::numeric_limits<float>::infinity()))));
}

TEST(DTypeTest, F16RoundTripsEveryValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = F16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(f)))) << h;
      continue;
    }
    EXPECT_EQ(FloatToF16(f), h) << "half 0x" << std::hex << h << " = " << f;
  }
}

TEST(DTypeTest, F16EdgeCases) {
  EXPECT_EQ(F16ToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(FloatToF16(65519.0f), 0x7bff);               // below the halfway point to 65536
  EXPECT_EQ(FloatToF16(65520.0f), 0x7c00);               // halfway: rounds to even = infinity
  EXPECT_EQ(F16ToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -25)), 0x0000);  // halfway to 2^-24: ties to even (0)
  EXPECT_EQ(FloatToF16(std::ldexp(3.0f, -26)), 0x0001);  // above halfway
  EXPECT_EQ(FloatToF16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToF16(1e-30f), 0x0000);
}

}  // namespace
}  // namespace modelcast
