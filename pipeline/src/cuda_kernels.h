// Launchers of the CUDA stage's kernels, on the default stream (asynchronous: errors show at
// the next synchronising call or cudaGetLastError).
#pragma once

#include <cstdint>

namespace modelcast::pipeline::cuda {

void GatherRowsAsync(const float* table, const int32_t* ids, int64_t rows, int64_t cols, float* out);
void RmsNormAsync(const float* x, const float* w, int64_t tokens, int64_t h, float eps, float* y);
void RopeAsync(float* rows, int64_t tokens, int64_t row_stride, int64_t heads, int64_t dim, const int64_t* pos,
               const double* inv_freq);
void SoftmaxRowsAsync(float* rows, int64_t nrows, int64_t n);
void AddBiasAsync(float* y, const float* b, int64_t out, int64_t total);
void AddIntoAsync(float* x, const float* y, int64_t total);
void SwiGluAsync(const float* gu, int64_t inter, int64_t tokens, float* out);

}  // namespace modelcast::pipeline::cuda
