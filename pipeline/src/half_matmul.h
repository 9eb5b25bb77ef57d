// Products of bf16 or fp16 weights with fp32 activations, the weights read where they lie (no
// fp32 copy) and widened in registers; products and sums in fp32. (AVX-512 BF16's dot product
// would round the activations to bf16 too, and the stage would no longer match the float64
// reference to 1e-5, so it is not used.)
#pragma once

#include <cstdint>
#include <vector>

#include "modelcast/common/dtype.h"

namespace modelcast::pipeline {

// One matrix [rows, in], row-major, of bf16 or fp16, where it lies.
struct HalfRows {
  const uint16_t* w = nullptr;
  int64_t rows = 0;
};

// y[t, o] = sum_i w[o, i] * x[t, i] for t < tokens, o < the matrices' rows, the matrices
// stacked by rows (q/k/v, gate/up: one product, one hand-off to the cores); y has row stride
// `ldy`. Batch 1 and small batches read each weight once; larger ones widen tiles of the
// weights and multiply them with OpenBLAS. Rows are shared among the machine's cores.
void HalfMatMul(const std::vector<HalfRows>& parts, DType dtype, int64_t in, const float* x, int64_t tokens, float* y,
                int64_t ldy);

// Row r of w widened to fp32 (the embedding's rows).
void WidenRow(const uint16_t* w, DType dtype, int64_t in, int64_t row, float* out);

}  // namespace modelcast::pipeline
