#include "half_matmul.h"

#include <cblas.h>

// GCC 12's AVX-512 headers start some intrinsics from _mm512_undefined_*(), which it then
// reports as maybe uninitialised when they are inlined here: a known false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace modelcast::pipeline {
namespace {

float Widen(uint16_t h, DType dtype) { return dtype == DType::kBF16 ? Bf16ToFloat(h) : F16ToFloat(h); }

// Workers that share a product's rows with the calling thread: one per further core, woken by a
// generation counter (a short spin, then a condition variable), so a decode step's many small
// products do not each pay for starting threads.
class RowPool {
 public:
  static RowPool& Get() {
    static RowPool pool(std::max(1u, std::min(8u, std::thread::hardware_concurrency())));
    return pool;
  }
  // fn(part, parts) for part < parts, the caller taking part 0.
  void Run(const std::function<void(unsigned, unsigned)>& fn) {
    const unsigned parts = static_cast<unsigned>(workers_.size()) + 1;
    if (parts == 1) return fn(0, 1);
    std::lock_guard<std::mutex> serial(run_mu_);  // one product at a time shares the workers
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &fn;
      pending_.store(parts - 1, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    fn(0, parts);
    while (pending_.load(std::memory_order_acquire) != 0) _mm_pause();
  }
  ~RowPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  explicit RowPool(unsigned cores) {
    for (unsigned k = 1; k < cores; ++k) workers_.emplace_back([this, k, cores] { Work(k, cores); });
  }
  void Work(unsigned part, unsigned parts) {
    uint64_t seen = 0;
    for (;;) {
      // Spin briefly (a decode step's products come back to back), then sleep.
      for (int i = 0; i < 20000 && generation_.load(std::memory_order_acquire) == seen; ++i) _mm_pause();
      const std::function<void(unsigned, unsigned)>* job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        seen = generation_.load(std::memory_order_acquire);
        if (stop_) return;
        job = job_;
      }
      (*job)(part, parts);
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }

  std::mutex run_mu_, mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  bool stop_ = false;
  const std::function<void(unsigned, unsigned)>* job_ = nullptr;
  std::atomic<unsigned> pending_{0};
  std::vector<std::thread> workers_;
};

bool HaveAvx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("f16c");
  return yes;
}

// 16 weights widened to fp32.
template <bool kBf16>
__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) inline __m512 Load16(const uint16_t* p, __mmask16 m) {
  const __m256i h = m == 0xffff ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                : _mm256_maskz_loadu_epi16(m, p);
  if constexpr (kBf16) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    return _mm512_cvtph_ps(h);
  }
}

// 16 columns from i of four rows, for nt (<= 4) tokens.
template <bool kBf16>
__attribute__((target("avx512f,avx512bw,avx512vl,f16c"), always_inline)) inline void Step4(
    const uint16_t* p0, const uint16_t* p1, const uint16_t* p2, const uint16_t* p3, const float* x, int64_t in, int nt,
    int64_t i, __mmask16 m, __m512 (&acc)[4][4]) {
  const __m512 w0 = Load16<kBf16>(p0 + i, m);
  const __m512 w1 = Load16<kBf16>(p1 + i, m);
  const __m512 w2 = Load16<kBf16>(p2 + i, m);
  const __m512 w3 = Load16<kBf16>(p3 + i, m);
  for (int t = 0; t < nt; ++t) {
    const __m512 xv = _mm512_maskz_loadu_ps(m, x + t * in + i);
    acc[0][t] = _mm512_fmadd_ps(w0, xv, acc[0][t]);
    acc[1][t] = _mm512_fmadd_ps(w1, xv, acc[1][t]);
    acc[2][t] = _mm512_fmadd_ps(w2, xv, acc[2][t]);
    acc[3][t] = _mm512_fmadd_ps(w3, xv, acc[3][t]);
  }
}

// Rows [r0, r1) of y for `tokens` tokens: four rows at a time, each weight loaded once for up to
// four tokens (the rows' weights stay in L1/L2 for the next four). Full vectors unmasked, the
// tail masked.
template <bool kBf16>
__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) void RowsAvx512(const uint16_t* w, int64_t in,
                                                                        const float* x, int64_t tokens, float* y,
                                                                        int64_t ldy, int64_t r0, int64_t r1) {
  constexpr int kT = 4;          // tokens per pass
  constexpr int64_t kAhead = 512;  // elements (1 KiB) of each row prefetched ahead
  const int64_t body = in / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (in - body)) - 1);
  for (int64_t t0 = 0; t0 < tokens; t0 += kT) {
    const int nt = static_cast<int>(std::min<int64_t>(kT, tokens - t0));
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
      __m512 acc[4][4];
      for (auto& row : acc)
        for (auto& a : row) a = _mm512_setzero_ps();
      const uint16_t* p0 = w + (r + 0) * in;
      const uint16_t* p1 = w + (r + 1) * in;
      const uint16_t* p2 = w + (r + 2) * in;
      const uint16_t* p3 = w + (r + 3) * in;
      for (int64_t i = 0; i < body; i += 16) {
        // The rows stream from memory: ask for them a few cache lines ahead.
        if ((i & 31) == 0 && i + kAhead < in) {
          _mm_prefetch(reinterpret_cast<const char*>(p0 + i + kAhead), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(p1 + i + kAhead), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(p2 + i + kAhead), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(p3 + i + kAhead), _MM_HINT_T0);
        }
        Step4<kBf16>(p0, p1, p2, p3, x + t0 * in, in, nt, i, 0xffff, acc);
      }
      if (tail) Step4<kBf16>(p0, p1, p2, p3, x + t0 * in, in, nt, body, tail, acc);
      for (int t = 0; t < nt; ++t) {
        for (int k = 0; k < 4; ++k) y[(t0 + t) * ldy + r + k] = _mm512_reduce_add_ps(acc[k][t]);
      }
    }
    for (; r < r1; ++r) {
      for (int t = 0; t < nt; ++t) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t i = 0; i < in; i += 16) {
          const __mmask16 m = i < body ? static_cast<__mmask16>(0xffff) : tail;
          acc = _mm512_fmadd_ps(Load16<kBf16>(w + r * in + i, m), _mm512_maskz_loadu_ps(m, x + (t0 + t) * in + i), acc);
        }
        y[(t0 + t) * ldy + r] = _mm512_reduce_add_ps(acc);
      }
    }
  }
}

// Row r of w widened, 16 at a time.
template <bool kBf16>
__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) void WidenAvx512(const uint16_t* p, int64_t in,
                                                                         float* out) {
  for (int64_t i = 0; i < in; i += 16) {
    const __mmask16 m = in - i >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (in - i)) - 1);
    _mm512_mask_storeu_ps(out + i, m, Load16<kBf16>(p + i, m));
  }
}

void RowsScalar(const uint16_t* w, DType dtype, int64_t in, const float* x, int64_t tokens, float* y, int64_t ldy,
                int64_t r0, int64_t r1) {
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t r = r0; r < r1; ++r) {
      float acc = 0;
      for (int64_t i = 0; i < in; ++i) acc += Widen(w[r * in + i], dtype) * x[t * in + i];
      y[t * ldy + r] = acc;
    }
  }
}

void Rows(const uint16_t* w, DType dtype, int64_t in, const float* x, int64_t tokens, float* y, int64_t ldy,
          int64_t r0, int64_t r1) {
  if (!HaveAvx512()) return RowsScalar(w, dtype, in, x, tokens, y, ldy, r0, r1);
  if (dtype == DType::kBF16) return RowsAvx512<true>(w, in, x, tokens, y, ldy, r0, r1);
  return RowsAvx512<false>(w, in, x, tokens, y, ldy, r0, r1);
}

// A prompt: tiles of rows widened into a scratch buffer, each multiplied by OpenBLAS (which uses
// every core itself); a weight is widened once per step, not once per token.
void WidenedProduct(const uint16_t* w, DType dtype, int64_t rows, int64_t in, const float* x, int64_t tokens, float* y,
                    int64_t ldy) {
  constexpr int64_t kTileRows = 256;
  thread_local std::vector<float> tile;
  tile.resize(static_cast<size_t>(std::min(rows, kTileRows) * in));
  for (int64_t r = 0; r < rows; r += kTileRows) {
    const int64_t n = std::min(kTileRows, rows - r);
    for (int64_t k = 0; k < n; ++k) WidenRow(w, dtype, in, r + k, tile.data() + k * in);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(tokens), static_cast<int>(n),
                static_cast<int>(in), 1.0f, x, static_cast<int>(in), tile.data(), static_cast<int>(in), 0.0f, y + r,
                static_cast<int>(ldy));
  }
}

}  // namespace

void WidenRow(const uint16_t* w, DType dtype, int64_t in, int64_t row, float* out) {
  const uint16_t* p = w + row * in;
  if (HaveAvx512()) return dtype == DType::kBF16 ? WidenAvx512<true>(p, in, out) : WidenAvx512<false>(p, in, out);
  for (int64_t i = 0; i < in; ++i) out[i] = Widen(p[i], dtype);
}

void HalfMatMul(const std::vector<HalfRows>& mats, DType dtype, int64_t in, const float* x, int64_t tokens, float* y,
                int64_t ldy) {
  // Up to a batch of decode steps, each weight is read once per four tokens from L1/L2; longer
  // prompts widen tiles of rows once and multiply them with OpenBLAS.
  constexpr int64_t kDirectTokens = 32;
  if (tokens <= kDirectTokens) {
    int64_t rows = 0;
    for (const auto& m : mats) rows += m.rows;
    // Each core its share of the stacked rows, in multiples of 4, cut where one matrix ends.
    RowPool::Get().Run([&](unsigned part, unsigned parts) {
      const int64_t per = (rows / 4 + parts - 1) / parts * 4;
      const int64_t g0 = std::min(rows, per * part), g1 = part + 1 == parts ? rows : std::min(rows, g0 + per);
      int64_t base = 0;
      for (const auto& m : mats) {
        const int64_t r0 = std::max<int64_t>(g0 - base, 0), r1 = std::min(g1 - base, m.rows);
        if (r0 < r1) Rows(m.w, dtype, in, x, tokens, y + base, ldy, r0, r1);
        base += m.rows;
      }
    });
    return;
  }
  int64_t base = 0;
  for (const auto& m : mats) {
    WidenedProduct(m.w, dtype, m.rows, in, x, tokens, y + base, ldy);
    base += m.rows;
  }
}

}  // namespace modelcast::pipeline
