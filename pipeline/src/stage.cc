#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include "modelcast/pipeline/stage.h"
#include "stage_internal.h"

namespace modelcast::pipeline {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// dst[i] = widen(src[i]) for i < n, on every core for large tensors: a stage's weights are
// converted when it starts serving, which is on the path to its first token.
template <typename Widen>
void Convert(const uint8_t* src, float* dst, uint64_t n, Widen widen) {
  auto run = [&](uint64_t begin, uint64_t end) {
    for (uint64_t i = begin; i < end; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      dst[i] = widen(h);
    }
  };
  const unsigned threads = std::min<unsigned>(std::max(1u, std::thread::hardware_concurrency()), 8);
  if (n < (1u << 20) || threads == 1) return run(0, n);
  std::vector<std::thread> ts;
  const uint64_t per = (n + threads - 1) / threads;
  for (unsigned t = 0; t < threads; ++t) {
    const uint64_t b = std::min(n, t * per), e = std::min(n, b + per);
    if (b < e) ts.emplace_back(run, b, e);
  }
  for (auto& t : ts) t.join();
}

// Tensor `name`, which must have `shape`.
Result<TensorRef> FindTensor(const WeightLookup& lookup, const std::string& name, const std::vector<int64_t>& shape) {
  MC_ASSIGN_OR_RETURN(TensorRef t, lookup(name));
  if (t.shape != shape) {
    return InvalidArgument("tensor " + name + " has shape " + ShapeString(t.shape) + ", the config implies " +
                           ShapeString(shape));
  }
  return t;
}

// Tensor `t` (named `name`) into dst, widened to fp32; read through `fetch` when it is given (the
// tensor then lies in device memory).
Status WidenTensor(TensorRef t, const std::string& name, float* dst, const StageWeights::HostFetch& fetch) {
  uint64_t n = 1;
  for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
  std::vector<uint8_t> staged;
  if (fetch && (t.dtype == DType::kF32 || t.dtype == DType::kBF16 || t.dtype == DType::kF16)) {
    staged.resize(n * DTypeSize(t.dtype));
    MC_RETURN_IF_ERROR(fetch(t.data, staged.size(), staged.data()).WithContext("reading tensor " + name));
    t.data = staged.data();
  }
  switch (t.dtype) {
    case DType::kF32:
      std::memcpy(dst, t.data, n * sizeof(float));
      return Status::Ok();
    case DType::kBF16:
      Convert(t.data, dst, n, [](uint16_t h) { return Bf16ToFloat(h); });
      return Status::Ok();
    case DType::kF16:
      Convert(t.data, dst, n, [](uint16_t h) { return F16ToFloat(h); });
      return Status::Ok();
    default:
      return InvalidArgument("tensor " + name + " is " + std::string(DTypeShortName(t.dtype)) +
                             "; the executor computes from bf16, fp16 or fp32 weights");
  }
}

// Reads tensor `name` (of `shape`) into dst, widened to fp32.
Status LoadTensor(const WeightLookup& lookup, const std::string& name, const std::vector<int64_t>& shape,
                  float* dst, const StageWeights::HostFetch& fetch) {
  MC_ASSIGN_OR_RETURN(TensorRef t, FindTensor(lookup, name, shape));
  return WidenTensor(t, name, dst, fetch);
}

// Fills `l` with the tensors `parts` stacked by rows (each [rows_i, in]), and their biases. With
// `w->half`, bf16/fp16 parts of one dtype stay as they are (views, or copies when the stage owns
// no source); otherwise they are widened to fp32.
Status LoadLinear(const WeightLookup& lookup, const std::vector<std::pair<std::string, int64_t>>& parts, int64_t in,
                  bool bias, Linear* l, StageWeights* w) {
  l->in = in;
  l->out = 0;
  for (const auto& p : parts) l->out += p.second;
  if (bias) l->b.resize(static_cast<size_t>(l->out));
  std::vector<TensorRef> refs;
  for (const auto& [prefix, rows] : parts) {
    MC_ASSIGN_OR_RETURN(TensorRef t, FindTensor(lookup, prefix + ".weight", {rows, in}));
    refs.push_back(std::move(t));
  }
  bool half = w->half;
  for (const auto& t : refs) half = half && (t.dtype == DType::kBF16 || t.dtype == DType::kF16) && t.dtype == refs[0].dtype;
  int64_t row = 0;
  if (half) {
    l->half_dtype = refs[0].dtype;
    for (size_t i = 0; i < parts.size(); ++i) {
      const auto* data = reinterpret_cast<const uint16_t*>(refs[i].data);
      if (!w->owner) {  // nothing keeps the source alive: the same bytes, copied
        w->copies.emplace_back(data, data + parts[i].second * in);
        data = w->copies.back().data();
      }
      l->half.push_back({data, parts[i].second});
    }
  } else {
    l->w.resize(static_cast<size_t>(l->out * in));
    for (size_t i = 0; i < parts.size(); ++i) {
      MC_RETURN_IF_ERROR(WidenTensor(refs[i], parts[i].first + ".weight", l->w.data() + row * in, w->fetch));
      row += parts[i].second;
    }
  }
  row = 0;
  for (const auto& [prefix, rows] : parts) {
    if (bias) MC_RETURN_IF_ERROR(LoadTensor(lookup, prefix + ".bias", {rows}, l->b.data() + row, w->fetch));
    row += rows;
  }
  return Status::Ok();
}

uint64_t LinearBytes(const Linear& l) {
  return (l.is_half() ? 2 * static_cast<uint64_t>(l.out * l.in) : sizeof(float) * l.w.size()) + sizeof(float) * l.b.size();
}

}  // namespace

void* AllocateWeights(size_t bytes) {
  constexpr size_t kHuge = 2u << 20;
  if (bytes < 2 * kHuge) {
    void* p = std::malloc(std::max<size_t>(bytes, 1));
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
  void* p = std::aligned_alloc(kHuge, rounded);
  if (p == nullptr) throw std::bad_alloc();
  ::madvise(p, rounded, MADV_HUGEPAGE);  // a hint: without THP it is ignored
  return p;
}

std::string LayerRange::ToString() const {
  return "layers " + std::to_string(first) + "-" + std::to_string(end - 1);
}

size_t StepInput::total_tokens() const {
  size_t n = 0;
  for (const auto& item : items) n += static_cast<size_t>(std::max<int32_t>(item.num_tokens, 0));
  return n;
}

Result<StageWeights> StageWeights::Load(const model::LlamaConfig& c, LayerRange range, const WeightLookup& lookup,
                                        bool half, std::shared_ptr<const void> owner, HostFetch fetch) {
  MC_RETURN_IF_ERROR(c.Validate("config"));
  if (c.hidden_act != "silu") {
    return Unimplemented("hidden_act '" + c.hidden_act + "': the executor implements Llama's silu");
  }
  if (c.head_dim % 2 != 0) return InvalidArgument("head_dim " + std::to_string(c.head_dim) + " is odd");
  if (range.first < 0 || range.first >= range.end || range.end > c.num_hidden_layers) {
    return InvalidArgument("layer range [" + std::to_string(range.first) + ", " + std::to_string(range.end) +
                           ") is not a non-empty range inside the model's " + std::to_string(c.num_hidden_layers) +
                           " layers");
  }
  const int64_t H = c.hidden_size, D = c.head_dim, NH = c.num_attention_heads, NKV = c.num_key_value_heads;
  const int64_t I = c.intermediate_size, V = c.vocab_size;
  StageWeights w;
  w.half = half;
  w.owner = std::move(owner);
  w.fetch = std::move(fetch);
  for (int64_t l = range.first; l < range.end; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Layer L;
    L.input_norm.resize(H);
    L.post_norm.resize(H);
    MC_RETURN_IF_ERROR(LoadTensor(lookup, p + "input_layernorm.weight", {H}, L.input_norm.data(), w.fetch));
    MC_RETURN_IF_ERROR(LoadTensor(lookup, p + "post_attention_layernorm.weight", {H}, L.post_norm.data(), w.fetch));
    MC_RETURN_IF_ERROR(LoadLinear(
        lookup, {{p + "self_attn.q_proj", NH * D}, {p + "self_attn.k_proj", NKV * D}, {p + "self_attn.v_proj", NKV * D}},
        H, c.q_bias(), &L.qkv, &w));
    MC_RETURN_IF_ERROR(LoadLinear(lookup, {{p + "self_attn.o_proj", H}}, NH * D, c.attention_bias, &L.o, &w));
    if (c.qk_norm) {
      L.q_norm.resize(D);
      L.k_norm.resize(D);
      MC_RETURN_IF_ERROR(LoadTensor(lookup, p + "self_attn.q_norm.weight", {D}, L.q_norm.data(), w.fetch));
      MC_RETURN_IF_ERROR(LoadTensor(lookup, p + "self_attn.k_norm.weight", {D}, L.k_norm.data(), w.fetch));
    }
    MC_RETURN_IF_ERROR(
        LoadLinear(lookup, {{p + "mlp.gate_proj", I}, {p + "mlp.up_proj", I}}, H, c.mlp_bias, &L.gate_up, &w));
    MC_RETURN_IF_ERROR(LoadLinear(lookup, {{p + "mlp.down_proj", H}}, I, c.mlp_bias, &L.down, &w));
    w.layers.push_back(std::move(L));
  }
  const bool last = range.end == c.num_hidden_layers;
  if (range.first == 0 || (last && c.tie_word_embeddings)) {
    w.embedding = std::make_shared<Linear>();
    MC_RETURN_IF_ERROR(LoadLinear(lookup, {{"model.embed_tokens", V}}, H, false, w.embedding.get(), &w));
  }
  if (last) {
    w.final_norm.resize(H);
    MC_RETURN_IF_ERROR(LoadTensor(lookup, "model.norm.weight", {H}, w.final_norm.data(), w.fetch));
    if (c.tie_word_embeddings) {
      w.head = w.embedding;
    } else {
      w.head = std::make_shared<Linear>();
      MC_RETURN_IF_ERROR(LoadLinear(lookup, {{"lm_head", V}}, H, false, w.head.get(), &w));
    }
  }
  w.inv_freq = c.RopeInvFreq(c.max_position_embeddings);
  w.rope_scale = c.RopeAttentionFactor();
  return w;
}

void RopeTables(const model::LlamaConfig& c, const StageWeights& w, const std::vector<StepItem>& items,
                std::vector<float>* cos, std::vector<float>* sin) {
  const int64_t half = c.head_dim / 2;
  int64_t tokens = 0;
  for (const auto& item : items) tokens += item.num_tokens;
  cos->resize(static_cast<size_t>(tokens * half));
  sin->resize(static_cast<size_t>(tokens * half));
  const bool dynamic = c.rope_scaling.type == model::RopeScaling::Type::kDynamic;
  int64_t t = 0;
  for (const auto& item : items) {
    const std::vector<double> inv = dynamic ? c.RopeInvFreq(item.position + item.num_tokens) : std::vector<double>();
    const std::vector<double>& freq = dynamic ? inv : w.inv_freq;
    for (int32_t j = 0; j < item.num_tokens; ++j, ++t) {
      const double pos = static_cast<double>(item.position + j);
      for (int64_t i = 0; i < half; ++i) {
        const double angle = pos * freq[i];
        (*cos)[t * half + i] = static_cast<float>(std::cos(angle) * w.rope_scale);
        (*sin)[t * half + i] = static_cast<float>(std::sin(angle) * w.rope_scale);
      }
    }
  }
}

uint64_t StageWeights::StepBytes() const {
  uint64_t n = 0;
  for (const Layer& L : layers) {
    n += sizeof(float) * (L.input_norm.size() + L.post_norm.size());
    n += LinearBytes(L.qkv) + LinearBytes(L.o) + LinearBytes(L.gate_up) + LinearBytes(L.down);
  }
  if (head) n += LinearBytes(*head) + sizeof(float) * final_norm.size();
  return n;
}

Status CheckStep(const Stage& stage, const StepInput& input, int64_t max_requests,
                 const std::function<int64_t(uint64_t)>& held, size_t active) {
  const auto& c = stage.config();
  if (input.items.empty()) return InvalidArgument("a step with no requests");
  std::set<uint64_t> seen;
  size_t fresh = 0;
  for (const auto& item : input.items) {
    const std::string who = "request " + std::to_string(item.request);
    if (!seen.insert(item.request).second) return InvalidArgument(who + " appears twice in one step");
    if (item.num_tokens <= 0) return InvalidArgument(who + " has no tokens in this step");
    const int64_t have = held(item.request);
    if (have == 0 && item.position > 0) {
      // Nothing of it here: the stage was started again since its earlier steps (a pipeline's
      // stage stopped, and another engine's started under the same key). The engine's fault:
      // the router goes on with the request elsewhere.
      return NotFound(who + " arrives at position " + std::to_string(item.position) + " but " +
                      stage.layers().ToString() + " holds none of its tokens (started again since its earlier steps)");
    }
    if (item.position != have) {
      return FailedPrecondition(who + " arrives at position " + std::to_string(item.position) + " but " +
                                stage.layers().ToString() + " holds " + std::to_string(have) + " of its tokens");
    }
    if (item.position + item.num_tokens > c.MaxPositions()) {
      const std::string limit = std::to_string(c.MaxPositions());
      return OutOfRange(who + " would reach " + std::to_string(item.position + item.num_tokens) + " tokens, past " +
                        (c.sliding_window && *c.sliding_window == c.MaxPositions()
                             ? "the sliding window of " + limit +
                                   " (modelcast serves sequences within it, where attention is full)"
                         : c.MaxPositions() == c.max_position_embeddings
                             ? "max_position_embeddings " + limit
                             : "the " + limit + " positions its rope_scaling reaches"));
    }
    if (have == 0) ++fresh;
  }
  if (static_cast<int64_t>(active + fresh) > max_requests) {
    return ResourceExhausted(stage.layers().ToString() + " holds " + std::to_string(active) + " requests; " +
                             std::to_string(fresh) + " more would pass its limit of " + std::to_string(max_requests));
  }
  const size_t total = input.total_tokens();
  if (stage.first()) {
    if (input.tokens.size() != total) {
      return InvalidArgument("the step has " + std::to_string(total) + " tokens in its requests but " +
                             std::to_string(input.tokens.size()) + " token ids");
    }
    for (int32_t t : input.tokens) {
      if (t < 0 || t >= c.vocab_size) {
        return InvalidArgument("token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                               std::to_string(c.vocab_size) + ")");
      }
    }
  } else if (input.hidden.size() != total * static_cast<size_t>(c.hidden_size)) {
    return InvalidArgument("the step has " + std::to_string(total) + " tokens but " +
                           std::to_string(input.hidden.size()) + " activation values (hidden size " +
                           std::to_string(c.hidden_size) + ")");
  }
  return Status::Ok();
}

Result<std::unique_ptr<Stage>> Stage::Create(const model::LlamaConfig& config, LayerRange layers,
                                             const WeightLookup& weights, StageOptions options) {
  if (options.device == Device::kCuda) return CreateCudaStage(config, layers, weights, options);
  return CreateCpuStage(config, layers, weights, options);
}

Result<std::vector<LayerRange>> SplitLayers(int64_t num_layers, int stages) {
  if (stages < 1 || stages > num_layers) {
    return InvalidArgument("cannot split " + std::to_string(num_layers) + " layers into " + std::to_string(stages) +
                           " stages");
  }
  std::vector<LayerRange> out;
  int64_t first = 0;
  for (int s = 0; s < stages; ++s) {
    const int64_t size = num_layers / stages + (s < num_layers % stages ? 1 : 0);
    out.push_back({first, first + size});
    first += size;
  }
  return out;
}

}  // namespace modelcast::pipeline
