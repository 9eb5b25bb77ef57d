#include "support/reference_llama.h"

#include <cmath>
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

// HF's rotate_half layout: the head dimension is split in halves (x1, x2), and the pair
// (x1[i], x2[i]) rotates by angle pos * theta^(-2i/d).
void ApplyRope(Vec& v, size_t heads, size_t dim, int pos, double theta) {
  const size_t half = dim / 2;
  for (size_t h = 0; h < heads; ++h) {
    double* x = v.data() + h * dim;
    for (size_t i = 0; i < half; ++i) {
      const double inv_freq = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(dim));
      const double angle = pos * inv_freq;
      const double c = std::cos(angle), s = std::sin(angle);
      const double x1 = x[i], x2 = x[i + half];
      x[i] = x1 * c - x2 * s;
      x[i + half] = x2 * c + x1 * s;
    }
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

std::vector<Vec> ReferenceLayer(const ReferenceWeights& w, int64_t l, const std::vector<Vec>& in) {
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
    ApplyRope(q[t], NH, D, static_cast<int>(t), c.rope_theta);
    ApplyRope(k[t], NKV, D, static_cast<int>(t), c.rope_theta);
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

ReferenceOutput ReferenceForward(const ReferenceWeights& w, const std::vector<int>& tokens) {
  const auto& c = w.config;
  const size_t H = c.hidden_size, V = c.vocab_size, T = tokens.size();
  ReferenceOutput out;
  std::vector<Vec> x(T);
  const Vec& emb = w.at("model.embed_tokens.weight");
  for (size_t t = 0; t < T; ++t) x[t] = Vec(emb.begin() + tokens[t] * H, emb.begin() + (tokens[t] + 1) * H);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    x = ReferenceLayer(w, l, x);
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
