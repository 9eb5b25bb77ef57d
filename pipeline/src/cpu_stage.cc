// The CPU stage: fp32 arithmetic; bf16 and fp16 weights read as they are (half_matmul.h), fp32
// ones through OpenBLAS.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "modelcast/pipeline/stage.h"
#include "half_matmul.h"
#include "stage_internal.h"

namespace modelcast::pipeline {
namespace {

// y[T, out] = x[T, in] W^T (+ b), W row-major [out, in] as HF stores nn.Linear weights.
void Apply(const Linear& l, const float* x, int64_t tokens, float* y) {
  if (l.is_half()) {
    HalfMatMul(l.half, l.half_dtype, l.in, x, tokens, y, l.out);
  } else if (tokens == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(l.out), static_cast<int>(l.in), 1.0f, l.w.data(),
                static_cast<int>(l.in), x, 1, 0.0f, y, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(tokens), static_cast<int>(l.out),
                static_cast<int>(l.in), 1.0f, x, static_cast<int>(l.in), l.w.data(), static_cast<int>(l.in), 0.0f, y,
                static_cast<int>(l.out));
  }
  if (!l.b.empty()) {
    for (int64_t t = 0; t < tokens; ++t) {
      float* row = y + t * l.out;
      for (int64_t i = 0; i < l.out; ++i) row[i] += l.b[i];
    }
  }
}

// HF's LlamaRMSNorm: x / sqrt(mean(x^2) + eps), times the weight.
void RmsNorm(const float* x, const std::vector<float>& weight, double eps, int64_t tokens, float* y) {
  const int64_t h = static_cast<int64_t>(weight.size());
  for (int64_t t = 0; t < tokens; ++t) {
    const float* xr = x + t * h;
    float* yr = y + t * h;
    double ss = 0;
    for (int64_t i = 0; i < h; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(h) + eps));
    for (int64_t i = 0; i < h; ++i) yr[i] = weight[i] * (xr[i] * inv);
  }
}

void Softmax(float* row, int64_t n) {
  float mx = row[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, row[i]);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += (row[i] = std::exp(row[i] - mx));
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) row[i] *= inv;
}

struct RequestCache {
  int64_t length = 0;
  std::vector<std::vector<float>> k, v;  // per layer of the stage: [length, kv_heads * head_dim]
};

class CpuStage final : public CachingStage<RequestCache> {
 public:
  CpuStage(const model::LlamaConfig& config, LayerRange layers, StageWeights weights, StageOptions options)
      : CachingStage(config, layers), w_(std::move(weights)), options_(options) {}

  uint64_t weight_bytes() const override { return w_.StepBytes(); }

  Status Forward(const StepInput& input, StepOutput* output) override {
    std::lock_guard<std::mutex> lock(mu_);
    MC_RETURN_IF_ERROR(CheckStep(*this, input, options_.max_requests, [this](uint64_t r) { return HeldLocked(r); },
                                 caches_.size()));
    const auto& c = config_;
    const int64_t H = c.hidden_size, D = c.head_dim, NH = c.num_attention_heads, NKV = c.num_key_value_heads;
    const int64_t I = c.intermediate_size, T = static_cast<int64_t>(input.total_tokens());
    const int64_t QKV = (NH + 2 * NKV) * D, KV = NKV * D, group = NH / NKV;
    const int64_t layers = layers_.end - layers_.first;

    std::vector<float> x(static_cast<size_t>(T * H));
    if (first()) {
      for (int64_t t = 0; t < T; ++t) {
        const Linear& e = *w_.embedding;
        if (e.is_half()) {
          WidenRow(e.half[0].w, e.half_dtype, H, input.tokens[t], x.data() + t * H);
        } else {
          std::memcpy(x.data() + t * H, e.w.data() + static_cast<int64_t>(input.tokens[t]) * H, sizeof(float) * H);
        }
      }
    } else {
      x = input.hidden;
    }

    const int64_t half = D / 2;
    std::vector<float> cosv, sinv;
    RopeTables(c, w_, input.items, &cosv, &sinv);
    auto rope = [&](float* v, int64_t heads, int64_t t) {
      for (int64_t h = 0; h < heads; ++h) {
        float* xh = v + h * D;
        for (int64_t i = 0; i < half; ++i) {
          const float c0 = cosv[t * half + i], s0 = sinv[t * half + i];
          const float x1 = xh[i], x2 = xh[i + half];
          xh[i] = x1 * c0 - x2 * s0;
          xh[i + half] = x2 * c0 + x1 * s0;
        }
      }
    };

    std::vector<RequestCache*> caches;
    for (const auto& item : input.items) {
      RequestCache& rc = caches_[item.request];
      if (rc.k.empty()) rc.k.resize(layers), rc.v.resize(layers);
      caches.push_back(&rc);
    }

    std::vector<float> h(T * H), qkv(T * QKV), attn(T * NH * D), gu(T * 2 * I), act(T * I), y(T * H);
    std::vector<float> scores;
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
    for (int64_t l = 0; l < layers; ++l) {
      const Layer& L = w_.layers[l];
      RmsNorm(x.data(), L.input_norm, c.rms_norm_eps, T, h.data());
      Apply(L.qkv, h.data(), T, qkv.data());
      int64_t t0 = 0;
      for (size_t it = 0; it < input.items.size(); ++it) {
        const StepItem& item = input.items[it];
        RequestCache& rc = *caches[it];
        std::vector<float>& kc = rc.k[l];
        std::vector<float>& vc = rc.v[l];
        kc.resize((item.position + item.num_tokens) * KV);
        vc.resize((item.position + item.num_tokens) * KV);
        for (int32_t j = 0; j < item.num_tokens; ++j) {
          float* row = qkv.data() + (t0 + j) * QKV;
          if (!L.q_norm.empty()) {  // Qwen3: each head of q and k normalised before the rotation
            RmsNorm(row, L.q_norm, c.rms_norm_eps, NH, row);
            RmsNorm(row + NH * D, L.k_norm, c.rms_norm_eps, NKV, row + NH * D);
          }
          rope(row, NH, t0 + j);
          rope(row + NH * D, NKV, t0 + j);
          std::memcpy(kc.data() + (item.position + j) * KV, row + NH * D, sizeof(float) * KV);
          std::memcpy(vc.data() + (item.position + j) * KV, row + NH * D + KV, sizeof(float) * KV);
        }
        for (int32_t j = 0; j < item.num_tokens; ++j) {
          const int64_t len = item.position + j + 1;  // causal: keys 0..position+j
          scores.resize(group * len);
          const float* q = qkv.data() + (t0 + j) * QKV;
          float* out = attn.data() + (t0 + j) * NH * D;
          for (int64_t g = 0; g < NKV; ++g) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(group), static_cast<int>(len),
                        static_cast<int>(D), scale, q + g * group * D, static_cast<int>(D), kc.data() + g * D,
                        static_cast<int>(KV), 0.0f, scores.data(), static_cast<int>(len));
            for (int64_t r = 0; r < group; ++r) Softmax(scores.data() + r * len, len);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(group), static_cast<int>(D),
                        static_cast<int>(len), 1.0f, scores.data(), static_cast<int>(len), vc.data() + g * D,
                        static_cast<int>(KV), 0.0f, out + g * group * D, static_cast<int>(D));
          }
        }
        t0 += item.num_tokens;
      }
      Apply(L.o, attn.data(), T, y.data());
      for (int64_t i = 0; i < T * H; ++i) x[i] += y[i];

      RmsNorm(x.data(), L.post_norm, c.rms_norm_eps, T, h.data());
      Apply(L.gate_up, h.data(), T, gu.data());
      for (int64_t t = 0; t < T; ++t) {
        const float* g = gu.data() + t * 2 * I;
        const float* u = g + I;
        float* a = act.data() + t * I;
        for (int64_t i = 0; i < I; ++i) a[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
      }
      Apply(L.down, act.data(), T, y.data());
      for (int64_t i = 0; i < T * H; ++i) x[i] += y[i];
    }
    for (size_t it = 0; it < input.items.size(); ++it) caches[it]->length += input.items[it].num_tokens;

    output->hidden.clear();
    output->logits.clear();
    if (!last()) {
      output->hidden = std::move(x);
      return Status::Ok();
    }
    // The final norm and the LM head, for each item's last token only.
    const int64_t n = static_cast<int64_t>(input.items.size());
    std::vector<float> lastx(n * H), normed(n * H);
    int64_t t0 = 0;
    for (int64_t it = 0; it < n; ++it) {
      t0 += input.items[it].num_tokens;
      std::memcpy(lastx.data() + it * H, x.data() + (t0 - 1) * H, sizeof(float) * H);
    }
    RmsNorm(lastx.data(), w_.final_norm, c.rms_norm_eps, n, normed.data());
    output->logits.resize(n * c.vocab_size);
    Apply(*w_.head, normed.data(), n, output->logits.data());
    return Status::Ok();
  }

 private:
  StageWeights w_;
  StageOptions options_;
};

}  // namespace

Result<std::unique_ptr<Stage>> CreateCpuStage(const model::LlamaConfig& config, LayerRange layers,
                                              const WeightLookup& weights, StageOptions options) {
  MC_ASSIGN_OR_RETURN(StageWeights w,
                      StageWeights::Load(config, layers, weights, /*half=*/!options.widen_weights, options.weights_owner));
  return std::unique_ptr<Stage>(new CpuStage(config, layers, std::move(w), options));
}

}  // namespace modelcast::pipeline
