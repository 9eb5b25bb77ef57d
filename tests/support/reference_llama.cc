#include "support/reference_llama.h"

#include <cmath>
#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace modelcast::testing {
namespace {

using Vec = std::vector<double>;

// y = W x, W is [rows, cols] row-major (HF's nn.Linear weight layout: [out, in]).
Vec MatVec(const Vec& w, const Vec& x, size_t rows) {
  const size_t cols = x.size();
  Vec y(rows, 0.0);
  for (size_t r = 0; r < rows; ++r) {
    double acc = 0;
    for (size_t c = 0; c < cols; ++c) acc += w[r * cols + c] * x[c];
    y[r] = acc;
  }
  return y;
}

Vec RmsNorm(const Vec& x, const Vec& weight, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + eps);
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = weight[i] * (x[i] * inv);
  return y;
}

void AddBias(Vec& y, const ReferenceWeights& w, const std::string& name) {
  if (!w.tensors.count(name)) return;
  const Vec& b = w.at(name);
  for (size_t i = 0; i < y.size(); ++i) y[i] += b[i];
}

// Rotary inverse frequencies as transformers' modeling_rope_utils defines each rope_type,
// written out here again from its definitions (not the executor's code), for a forward call
// whose sequence reaches `seq_len` tokens; and the factor cos and sin are scaled by.
std::vector<double> InvFreq(const model::LlamaConfig& c, int64_t seq_len, double* attention_factor) {
  using Type = model::RopeScaling::Type;
  const auto& r = c.rope_scaling;
  const double d = static_cast<double>(c.head_dim);
  const size_t half = static_cast<size_t>(c.head_dim / 2);
  *attention_factor = 1.0;
  double theta = c.rope_theta;
  if (r.type == Type::kDynamic) {
    const double n = static_cast<double>(std::max(seq_len, c.max_position_embeddings));
    const double m = static_cast<double>(c.max_position_embeddings);
    theta = theta * std::pow((r.factor * n / m) - (r.factor - 1), d / (d - 2));
  }
  std::vector<double> plain(half);
  for (size_t i = 0; i < half; ++i) plain[i] = std::pow(theta, -2.0 * static_cast<double>(i) / d);
  std::vector<double> out = plain;
  const double pi = std::acos(-1.0);
  switch (r.type) {
    case Type::kNone:
    case Type::kDynamic:
      break;
    case Type::kLinear:
      for (size_t i = 0; i < half; ++i) out[i] = plain[i] / r.factor;
      break;
    case Type::kLlama3: {
      // Wavelengths shorter than original/high_freq_factor keep their frequency, longer than
      // original/low_freq_factor are divided by factor, and those between are mixed by
      // smooth = (original/wavelength - low) / (high - low).
      const double orig = static_cast<double>(r.original_max_position_embeddings);
      for (size_t i = 0; i < half; ++i) {
        const double wavelength = 2 * pi / plain[i];
        if (wavelength < orig / r.high_freq_factor) continue;
        if (wavelength > orig / r.low_freq_factor) {
          out[i] = plain[i] / r.factor;
          continue;
        }
        const double smooth = (orig / wavelength - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
        out[i] = (1 - smooth) * (plain[i] / r.factor) + smooth * plain[i];
      }
      break;
    }
    case Type::kYarn: {
      const double orig = static_cast<double>(r.original_max_position_embeddings > 0 ? r.original_max_position_embeddings
                                                                                      : c.max_position_embeddings);
      // The dimension index at which a frequency makes `rotations` turns over the original context.
      auto dim_at = [&](double rotations) { return d * std::log(orig / (rotations * 2 * pi)) / (2 * std::log(theta)); };
      double lo = dim_at(r.beta_fast), hi = dim_at(r.beta_slow);
      if (r.truncate) {
        lo = std::floor(lo);
        hi = std::ceil(hi);
      }
      lo = std::max(lo, 0.0);
      hi = std::min(hi, d - 1);
      if (hi == lo) hi = lo + 0.001;
      for (size_t i = 0; i < half; ++i) {
        double ramp = (static_cast<double>(i) - lo) / (hi - lo);
        ramp = std::min(1.0, std::max(0.0, ramp));
        // ramp 0: the frequency as trained (extrapolated), ramp 1: divided by factor.
        out[i] = plain[i] * (1 - ramp) + (plain[i] / r.factor) * ramp;
      }
      if (r.attention_factor) {
        *attention_factor = *r.attention_factor;
      } else {
        auto m = [&](double k) { return r.factor <= 1 ? 1.0 : 0.1 * k * std::log(r.factor) + 1.0; };
        *attention_factor = (r.mscale && r.mscale_all_dim && *r.mscale != 0 && *r.mscale_all_dim != 0)
                                ? m(*r.mscale) / m(*r.mscale_all_dim)
                                : m(1.0);
      }
      break;
    }
  }
  return out;
}

// HF's rotate_half layout: the head dimension is split in halves (x1, x2), and the pair
// (x1[i], x2[i]) rotates by angle pos * inv_freq[i], cos and sin scaled by `scale`.
void ApplyRope(Vec& v, size_t heads, size_t dim, int64_t pos, const std::vector<double>& inv_freq, double scale) {
  const size_t half = dim / 2;
  for (size_t h = 0; h < heads; ++h) {
    double* x = v.data() + h * dim;
    for (size_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(pos) * inv_freq[i];
      const double c = std::cos(angle) * scale, s = std::sin(angle) * scale;
      const double x1 = x[i], x2 = x[i + half];
      x[i] = x1 * c - x2 * s;
      x[i + half] = x2 * c + x1 * s;
    }
  }
}

// Qwen3: each head normalised on its own (RMSNorm over head_dim) before the rotation.
void HeadNorm(Vec& v, size_t heads, size_t dim, const Vec& weight, double eps) {
  for (size_t h = 0; h < heads; ++h) {
    Vec head(v.begin() + static_cast<std::ptrdiff_t>(h * dim), v.begin() + static_cast<std::ptrdiff_t>((h + 1) * dim));
    head = RmsNorm(head, weight, eps);
    std::copy(head.begin(), head.end(), v.begin() + static_cast<std::ptrdiff_t>(h * dim));
  }
}

double Silu(double x) { return x / (1.0 + std::exp(-x)); }

double Rms(const Vec& x) {
  double ss = 0;
  for (double v : x) ss += v * v;
  return std::sqrt(ss / static_cast<double>(x.size()));
}

}  // namespace

const std::vector<double>& ReferenceWeights::at(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) throw std::out_of_range("reference weights have no tensor " + name);
  return it->second;
}

Result<ReferenceWeights> LoadReferenceWeights(const model::HfCheckpoint& checkpoint) {
  ReferenceWeights w;
  w.config = checkpoint.config();
  for (const auto& spec : w.config.ExpectedTensors()) {
    const auto* e = checkpoint.Find(spec.name);
    if (e == nullptr) return NotFound("reference: missing tensor " + spec.name);
    std::vector<uint8_t> raw(e->tensor->nbytes());
    MC_RETURN_IF_ERROR(e->file->Read(*e->tensor, 0, raw));
    Vec v(spec.NumElements());
    for (size_t i = 0; i < v.size(); ++i) {
      switch (e->tensor->dtype) {
        case DType::kF32: {
          float f;
          std::memcpy(&f, raw.data() + 4 * i, 4);
          v[i] = f;
          break;
        }
        case DType::kBF16: {
          uint16_t h;
          std::memcpy(&h, raw.data() + 2 * i, 2);
          v[i] = Bf16ToFloat(h);
          break;
        }
        case DType::kF16: {
          uint16_t h;
          std::memcpy(&h, raw.data() + 2 * i, 2);
          v[i] = F16ToFloat(h);
          break;
        }
        default:
          return InvalidArgument("reference: unsupported dtype for " + spec.name);
      }
    }
    w.tensors[spec.name] = std::move(v);
  }
  return w;
}

std::vector<Vec> ReferenceLayer(const ReferenceWeights& w, int64_t l, const std::vector<Vec>& in,
                                const std::vector<int64_t>& call_end) {
  const auto& c = w.config;
  const size_t H = c.hidden_size, D = c.head_dim, NH = c.num_attention_heads, NKV = c.num_key_value_heads;
  const size_t I = c.intermediate_size, T = in.size();
  const size_t group = NH / NKV;
  std::vector<Vec> x = in;
  const std::string p = "model.layers." + std::to_string(l) + ".";
  std::vector<Vec> q(T), k(T), v(T);
  for (size_t t = 0; t < T; ++t) {
    const Vec h = RmsNorm(x[t], w.at(p + "input_layernorm.weight"), c.rms_norm_eps);
    q[t] = MatVec(w.at(p + "self_attn.q_proj.weight"), h, NH * D);
    AddBias(q[t], w, p + "self_attn.q_proj.bias");
    k[t] = MatVec(w.at(p + "self_attn.k_proj.weight"), h, NKV * D);
    AddBias(k[t], w, p + "self_attn.k_proj.bias");
    v[t] = MatVec(w.at(p + "self_attn.v_proj.weight"), h, NKV * D);
    AddBias(v[t], w, p + "self_attn.v_proj.bias");
    if (w.tensors.count(p + "self_attn.q_norm.weight")) {
      HeadNorm(q[t], NH, D, w.at(p + "self_attn.q_norm.weight"), c.rms_norm_eps);
      HeadNorm(k[t], NKV, D, w.at(p + "self_attn.k_norm.weight"), c.rms_norm_eps);
    }
    double scale = 1;
    const std::vector<double> inv_freq = InvFreq(c, call_end.empty() ? static_cast<int64_t>(T) : call_end[t], &scale);
    ApplyRope(q[t], NH, D, static_cast<int64_t>(t), inv_freq, scale);
    ApplyRope(k[t], NKV, D, static_cast<int64_t>(t), inv_freq, scale);
  }
  for (size_t t = 0; t < T; ++t) {
    Vec attn(NH * D, 0.0);
    for (size_t h = 0; h < NH; ++h) {
      const size_t kvh = h / group;
      Vec scores(t + 1);
      double mx = -INFINITY;
      for (size_t s = 0; s <= t; ++s) {
        double dot = 0;
        for (size_t d = 0; d < D; ++d) dot += q[t][h * D + d] * k[s][kvh * D + d];
        scores[s] = dot / std::sqrt(static_cast<double>(D));
        mx = std::max(mx, scores[s]);
      }
      double sum = 0;
      for (double& sc : scores) sum += (sc = std::exp(sc - mx));
      for (size_t s = 0; s <= t; ++s) {
        for (size_t d = 0; d < D; ++d) attn[h * D + d] += scores[s] / sum * v[s][kvh * D + d];
      }
    }
    Vec o = MatVec(w.at(p + "self_attn.o_proj.weight"), attn, H);
    AddBias(o, w, p + "self_attn.o_proj.bias");
    for (size_t i = 0; i < H; ++i) x[t][i] += o[i];
  }
  for (size_t t = 0; t < T; ++t) {
    const Vec h = RmsNorm(x[t], w.at(p + "post_attention_layernorm.weight"), c.rms_norm_eps);
    Vec g = MatVec(w.at(p + "mlp.gate_proj.weight"), h, I);
    AddBias(g, w, p + "mlp.gate_proj.bias");
    Vec u = MatVec(w.at(p + "mlp.up_proj.weight"), h, I);
    AddBias(u, w, p + "mlp.up_proj.bias");
    for (size_t i = 0; i < I; ++i) g[i] = Silu(g[i]) * u[i];
    Vec m = MatVec(w.at(p + "mlp.down_proj.weight"), g, H);
    AddBias(m, w, p + "mlp.down_proj.bias");
    for (size_t i = 0; i < H; ++i) x[t][i] += m[i];
  }
  return x;
}

ReferenceOutput ReferenceForward(const ReferenceWeights& w, const std::vector<int>& tokens,
                                 const std::vector<int64_t>& calls) {
  const auto& c = w.config;
  const size_t H = c.hidden_size, V = c.vocab_size, T = tokens.size();
  ReferenceOutput out;
  std::vector<Vec> x(T);
  const Vec& emb = w.at("model.embed_tokens.weight");
  for (size_t t = 0; t < T; ++t) x[t] = Vec(emb.begin() + tokens[t] * H, emb.begin() + (tokens[t] + 1) * H);
  // Each token's call: where the forward call it was fed in ends (dynamic NTK scaling rotates
  // by the sequence length as of each call).
  std::vector<int64_t> call_end(T, static_cast<int64_t>(T));
  if (!calls.empty()) {
    size_t t = 0;
    int64_t end = 0;
    for (int64_t n : calls) {
      end += n;
      for (; t < T && static_cast<int64_t>(t) < end; ++t) call_end[t] = end;
    }
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    x = ReferenceLayer(w, l, x, call_end);
    double worst = 0;
    for (size_t t = 0; t < T; ++t) worst = std::max(worst, Rms(x[t]));
    out.residual_rms.push_back(worst);
  }
  const Vec& head = c.tie_word_embeddings ? w.at("model.embed_tokens.weight") : w.at("lm_head.weight");
  for (size_t t = 0; t < T; ++t) {
    const Vec h = RmsNorm(x[t], w.at("model.norm.weight"), c.rms_norm_eps);
    out.logits.push_back(MatVec(head, h, V));
  }
  return out;
}

}  // namespace modelcast::testing
