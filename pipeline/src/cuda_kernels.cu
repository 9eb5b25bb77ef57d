// The CUDA stage's element-wise kernels and their launchers (compiled by nvcc on their own,
// with nothing of modelcast's headers: the stage itself is plain C++ over the CUDA runtime).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda_kernels.h"

namespace modelcast::pipeline::cuda {
namespace {

__global__ void GatherRows(const float* table, const int32_t* ids, int64_t cols, float* out) {
  const int64_t t = blockIdx.x;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) out[t * cols + i] = table[ids[t] * cols + i];
}

__global__ void RmsNormKernel(const float* x, const float* w, int64_t h, float eps, float* y) {
  const int64_t t = blockIdx.x;
  __shared__ float part[256];
  float ss = 0;
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x) ss += x[t * h + i] * x[t * h + i];
  part[threadIdx.x] = ss;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  const float inv = rsqrtf(part[0] / static_cast<float>(h) + eps);
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x) y[t * h + i] = w[i] * (x[t * h + i] * inv);
}

// Rotary embeddings in HF's rotate_half layout, in place on `heads` heads of each token's row.
__global__ void RopeKernel(float* rows, int64_t row_stride, int64_t heads, int64_t dim, const int64_t* pos,
                           const double* inv_freq) {
  const int64_t t = blockIdx.x, half = dim / 2;
  for (int64_t k = threadIdx.x; k < heads * half; k += blockDim.x) {
    const int64_t h = k / half, i = k % half;
    float* x = rows + t * row_stride + h * dim;
    const double angle = static_cast<double>(pos[t]) * inv_freq[i];
    const float c = static_cast<float>(cos(angle)), s = static_cast<float>(sin(angle));
    const float x1 = x[i], x2 = x[i + half];
    x[i] = x1 * c - x2 * s;
    x[i + half] = x2 * c + x1 * s;
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
  part[threadIdx.x] = sum;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  const float inv = 1.0f / part[0];
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

void GatherRowsAsync(const float* table, const int32_t* ids, int64_t rows, int64_t cols, float* out) {
  GatherRows<<<static_cast<unsigned>(rows), 256>>>(table, ids, cols, out);
}
void RmsNormAsync(const float* x, const float* w, int64_t tokens, int64_t h, float eps, float* y) {
  RmsNormKernel<<<static_cast<unsigned>(tokens), 256>>>(x, w, h, eps, y);
}
void RopeAsync(float* rows, int64_t tokens, int64_t row_stride, int64_t heads, int64_t dim, const int64_t* pos,
               const double* inv_freq) {
  RopeKernel<<<static_cast<unsigned>(tokens), 256>>>(rows, row_stride, heads, dim, pos, inv_freq);
}
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
