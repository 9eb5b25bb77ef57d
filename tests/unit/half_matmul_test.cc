// bf16 and fp16 weights multiplied where they lie, against the same products in float64: every
// path (decode rows shared among cores, a prompt's widened tiles through OpenBLAS), shapes that
// are not multiples of the vector width, and rows written at a stride.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "half_matmul.h"
#include "modelcast/common/dtype.h"

namespace modelcast::pipeline {
namespace {

void Check(DType dtype, int64_t rows, int64_t in, int64_t tokens) {
  std::mt19937 rng(static_cast<uint32_t>(rows * 131 + in * 7 + tokens));
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<uint16_t> w(static_cast<size_t>(rows * in));
  for (auto& h : w) h = dtype == DType::kBF16 ? FloatToBf16(u(rng)) : FloatToF16(u(rng));
  std::vector<float> x(static_cast<size_t>(tokens * in));
  for (auto& v : x) v = u(rng);
  const int64_t ldy = rows + 3;  // a stride wider than the rows, as q/k/v parts write
  std::vector<float> y(static_cast<size_t>(tokens * ldy), 12345.0f);
  HalfMatMul({{w.data(), rows}}, dtype, in, x.data(), tokens, y.data(), ldy);
  double worst = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      double want = 0, scale = 0;
      for (int64_t i = 0; i < in; ++i) {
        const double wv = dtype == DType::kBF16 ? Bf16ToFloat(w[r * in + i]) : F16ToFloat(w[r * in + i]);
        want += wv * x[t * in + i];
        scale += std::fabs(wv * x[t * in + i]);
      }
      worst = std::max(worst, std::fabs(y[t * ldy + r] - want) / (scale + 1e-30));
    }
    for (int64_t r = rows; r < ldy; ++r) EXPECT_EQ(y[t * ldy + r], 12345.0f) << "written past the rows";
  }
  // fp32 sums of `in` terms: a few ulps of the terms' magnitude.
  EXPECT_LT(worst, 1e-6) << DTypeShortName(dtype) << " rows " << rows << " in " << in << " tokens " << tokens;
}

TEST(HalfMatMulTest, MatchesFloat64OnEveryPathAndShape) {
  for (DType d : {DType::kBF16, DType::kF16}) {
    for (int64_t tokens : {1, 3, 8, 9, 40}) {  // 1-8: rows read once per pass; 9+: widened tiles
      Check(d, 4, 16, tokens);
      Check(d, 7, 33, tokens);     // rows past the groups of four, a masked tail
      Check(d, 257, 100, tokens);  // more than one tile of rows
      Check(d, 64, 1, tokens);
    }
  }
}

TEST(HalfMatMulTest, WidenRowGivesTheRowsValues) {
  const std::vector<uint16_t> w = {FloatToBf16(1.5f), FloatToBf16(-2.0f), FloatToBf16(0.25f), FloatToBf16(8.0f)};
  float out[2];
  WidenRow(w.data(), DType::kBF16, 2, 1, out);
  EXPECT_EQ(out[0], 0.25f);
  EXPECT_EQ(out[1], 8.0f);
}

}  // namespace
}  // namespace modelcast::pipeline
