// Launchers of the CUDA stage's kernels, on the default stream (asynchronous: errors show at
// the next synchronising call or cudaGetLastError). Plain C++: the stage includes no CUDA
// device headers.
#pragma once

#include <cstdint>

namespace modelcast::pipeline::cuda {

// The element type of weights, KV caches and the activations fed to a half-precision product.
enum class Elem { kF32, kBF16, kF16 };
inline int ElemSize(Elem e) { return e == Elem::kF32 ? 4 : 2; }

// out[t] = table[ids[t]] widened to fp32 (table [*, cols] of `elem`).
void GatherRowsAsync(const void* table, Elem elem, const int32_t* ids, int64_t rows, int64_t cols, float* out);
// HF's RMSNorm of `tokens` contiguous rows of h.
void RmsNormAsync(const float* x, const float* w, int64_t tokens, int64_t h, float eps, float* y);
// RMSNorm in place of `heads` rows of `dim` in each token's row (Qwen3's q and k norms).
void HeadRmsNormAsync(float* rows, int64_t tokens, int64_t row_stride, int64_t heads, int64_t dim, const float* w,
                      float eps);
// Rotary embeddings (rotate_half layout) in place on `heads` heads of each token's row, by the
// step's tables cos/sin [tokens, dim / 2].
void RopeAsync(float* rows, int64_t tokens, int64_t row_stride, int64_t heads, int64_t dim, const float* cos,
               const float* sin);
// dst[i] = src[i] rounded to `elem` (to nearest even).
void ConvertAsync(const float* src, void* dst, Elem elem, int64_t n);
void SoftmaxRowsAsync(float* rows, int64_t nrows, int64_t n);
void AddBiasAsync(float* y, const float* b, int64_t out, int64_t total);
void AddIntoAsync(float* x, const float* y, int64_t total);
void SwiGluAsync(const float* gu, int64_t inter, int64_t tokens, float* out);

}  // namespace modelcast::pipeline::cuda
