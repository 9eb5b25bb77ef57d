// The CUDA stage's element-wise kernels and their launchers (compiled by nvcc on their own,
// with nothing of modelcast's headers: the stage itself is plain C++ over the CUDA runtime).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda_kernels.h"

namespace modelcast::pipeline::cuda {
namespace {

__device__ __forceinline__ float Load(const void* p, Elem e, int64_t i) {
  switch (e) {
    case Elem::kBF16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case Elem::kF16:
      return __half2float(static_cast<const __half*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

__global__ void GatherRows(const void* table, Elem elem, const int32_t* ids, int64_t cols, float* out) {
  const int64_t t = blockIdx.x;
  const int64_t base = static_cast<int64_t>(ids[t]) * cols;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) out[t * cols + i] = Load(table, elem, base + i);
}

// Block-wide sum over blockDim.x (256) threads.
__device__ float BlockSum(float v, float* part) {
  part[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  const float total = part[0];
  __syncthreads();
  return total;
}

// One block per row of h values at x + row * stride (+ offset of its head).
__global__ void RmsNormRows(const float* x, int64_t per_token, int64_t stride, int64_t h, const float* w, float eps,
                            float* y) {
  __shared__ float part[256];
  const int64_t t = blockIdx.x / per_token, k = blockIdx.x % per_token;
  const float* xr = x + t * stride + k * h;
  float* yr = y + t * stride + k * h;
  float ss = 0;
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x) ss += xr[i] * xr[i];
  const float inv = rsqrtf(BlockSum(ss, part) / static_cast<float>(h) + eps);
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x) yr[i] = w[i] * (xr[i] * inv);
}

__global__ void RopeKernel(float* rows, int64_t row_stride, int64_t heads, int64_t dim, const float* cos,
                           const float* sin) {
  const int64_t t = blockIdx.x, half = dim / 2;
  for (int64_t k = threadIdx.x; k < heads * half; k += blockDim.x) {
    const int64_t h = k / half, i = k % half;
    float* x = rows + t * row_stride + h * dim;
    const float c = cos[t * half + i], s = sin[t * half + i];
    const float x1 = x[i], x2 = x[i + half];
    x[i] = x1 * c - x2 * s;
    x[i + half] = x2 * c + x1 * s;
  }
}

__global__ void Convert(const float* src, void* dst, Elem elem, int64_t n) {
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    if (elem == Elem::kBF16) {
      static_cast<__nv_bfloat16*>(dst)[i] = __float2bfloat16_rn(src[i]);
    } else if (elem == Elem::kF16) {
      static_cast<__half*>(dst)[i] = __float2half_rn(src[i]);
    } else {
      static_cast<float*>(dst)[i] = src[i];
    }
  }
}

__global__ void SoftmaxRows(float* rows, int64_t n) {
  float* r = rows + blockIdx.x * n;
  __shared__ float part[256];
  float mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) mx = fmaxf(mx, r[i]);
  part[threadIdx.x] = mx;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) part[threadIdx.x] = fmaxf(part[threadIdx.x], part[threadIdx.x + s]);
    __syncthreads();
  }
  mx = part[0];
  __syncthreads();
  float sum = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += (r[i] = expf(r[i] - mx));
  const float inv = 1.0f / BlockSum(sum, part);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) r[i] *= inv;
}

__global__ void AddBias(float* y, const float* b, int64_t out, int64_t total) {
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) y[i] += b[i % out];
}

__global__ void AddInto(float* x, const float* y, int64_t total) {
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) x[i] += y[i];
}

__global__ void SwiGlu(const float* gu, int64_t inter, int64_t tokens, float* out) {
  const int64_t total = tokens * inter;
  for (int64_t k = blockIdx.x * blockDim.x + threadIdx.x; k < total; k += gridDim.x * blockDim.x) {
    const int64_t t = k / inter, i = k % inter;
    const float g = gu[t * 2 * inter + i], u = gu[t * 2 * inter + inter + i];
    out[k] = g / (1.0f + expf(-g)) * u;
  }
}

int Blocks(int64_t total) { return static_cast<int>(total < 256 * 4096 ? (total + 255) / 256 : 4096); }

}  // namespace

void GatherRowsAsync(const void* table, Elem elem, const int32_t* ids, int64_t rows, int64_t cols, float* out) {
  GatherRows<<<static_cast<unsigned>(rows), 256>>>(table, elem, ids, cols, out);
}
void RmsNormAsync(const float* x, const float* w, int64_t tokens, int64_t h, float eps, float* y) {
  RmsNormRows<<<static_cast<unsigned>(tokens), 256>>>(x, 1, h, h, w, eps, y);
}
void HeadRmsNormAsync(float* rows, int64_t tokens, int64_t row_stride, int64_t heads, int64_t dim, const float* w,
                      float eps) {
  RmsNormRows<<<static_cast<unsigned>(tokens * heads), 256>>>(rows, heads, row_stride, dim, w, eps, rows);
}
void RopeAsync(float* rows, int64_t tokens, int64_t row_stride, int64_t heads, int64_t dim, const float* cos,
               const float* sin) {
  RopeKernel<<<static_cast<unsigned>(tokens), 256>>>(rows, row_stride, heads, dim, cos, sin);
}
void ConvertAsync(const float* src, void* dst, Elem elem, int64_t n) { Convert<<<Blocks(n), 256>>>(src, dst, elem, n); }
void SoftmaxRowsAsync(float* rows, int64_t nrows, int64_t n) {
  SoftmaxRows<<<static_cast<unsigned>(nrows), 256>>>(rows, n);
}
void AddBiasAsync(float* y, const float* b, int64_t out, int64_t total) {
  AddBias<<<Blocks(total), 256>>>(y, b, out, total);
}
void AddIntoAsync(float* x, const float* y, int64_t total) { AddInto<<<Blocks(total), 256>>>(x, y, total); }
void SwiGluAsync(const float* gu, int64_t inter, int64_t tokens, float* out) {
  SwiGlu<<<Blocks(tokens * inter), 256>>>(gu, inter, tokens, out);
}

}  // namespace modelcast::pipeline::cuda
