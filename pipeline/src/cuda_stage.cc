// The CUDA stage: the CPU stage's arithmetic on the GPU, fp32 throughout (so that it answers as
// the reference does), matrix products through cuBLAS, the small element-wise steps as kernels
// (cuda_kernels.cu).
// Weights are converted on the host (stage_internal.h) and copied to the device once; each
// request's KV cache lives on the device and grows by doubling.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cmath>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>
#include <algorithm>

#include "modelcast/pipeline/stage.h"
#include "cuda_kernels.h"
#include "stage_internal.h"

namespace modelcast::pipeline {
namespace {

// cuBLAS, opened when the first CUDA stage is made rather than linked: its libraries are large
// enough that loading them would slow the start of every process that links the pipeline.
struct Blas {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  decltype(&cublasSgemm_v2) sgemm = nullptr;
  decltype(&cublasSgemmStridedBatched) sgemm_batched = nullptr;
  Status status;
};

const Blas& LoadBlas() {
  static const Blas blas = [] {
    Blas b;
    void* lib = nullptr;
    for (const char* name : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"}) {
      if ((lib = ::dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
    }
    if (lib == nullptr) {
      b.status = FailedPrecondition(std::string("a CUDA stage needs cuBLAS, which cannot be loaded: ") + ::dlerror());
      return b;
    }
    b.create = reinterpret_cast<decltype(b.create)>(::dlsym(lib, "cublasCreate_v2"));
    b.destroy = reinterpret_cast<decltype(b.destroy)>(::dlsym(lib, "cublasDestroy_v2"));
    b.set_math_mode = reinterpret_cast<decltype(b.set_math_mode)>(::dlsym(lib, "cublasSetMathMode"));
    b.sgemm = reinterpret_cast<decltype(b.sgemm)>(::dlsym(lib, "cublasSgemm_v2"));
    b.sgemm_batched = reinterpret_cast<decltype(b.sgemm_batched)>(::dlsym(lib, "cublasSgemmStridedBatched"));
    if (!b.create || !b.destroy || !b.set_math_mode || !b.sgemm || !b.sgemm_batched) {
      b.status = FailedPrecondition("the cuBLAS found lacks a function the CUDA stage uses");
    }
    return b;
  }();
  return blas;
}

Status CudaError(cudaError_t e, const char* what) {
  return Internal(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}
Status BlasError(cublasStatus_t s, const char* what) {
  return Internal(std::string("cuBLAS: ") + what + " failed with status " + std::to_string(static_cast<int>(s)));
}
#define MC_CUDA(expr, what)                              \
  do {                                                   \
    cudaError_t mc_e = (expr);                           \
    if (mc_e != cudaSuccess) return CudaError(mc_e, what); \
  } while (0)
#define MC_BLAS(expr, what)                                         \
  do {                                                              \
    cublasStatus_t mc_s = (expr);                                   \
    if (mc_s != CUBLAS_STATUS_SUCCESS) return BlasError(mc_s, what); \
  } while (0)

// A device buffer of floats (or ints), freed on destruction.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  ~DeviceArray() {
    if (p_) cudaFree(p_);
  }
  // Makes room for n elements (contents kept when `keep`).
  Status Reserve(size_t n, bool keep = false) {
    if (n <= n_) return Status::Ok();
    size_t cap = std::max<size_t>(n, n_ * 2);
    T* q = nullptr;
    MC_CUDA(cudaMalloc(&q, cap * sizeof(T)), "allocating device memory");
    if (keep && p_) {
      cudaError_t e = cudaMemcpy(q, p_, n_ * sizeof(T), cudaMemcpyDeviceToDevice);
      if (e != cudaSuccess) {
        cudaFree(q);
        return CudaError(e, "growing a device buffer");
      }
    }
    if (p_) cudaFree(p_);
    p_ = q;
    n_ = cap;
    return Status::Ok();
  }
  Status Upload(const T* host, size_t n) {
    MC_RETURN_IF_ERROR(Reserve(n));
    MC_CUDA(cudaMemcpy(p_, host, n * sizeof(T), cudaMemcpyHostToDevice), "copying to the device");
    return Status::Ok();
  }
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

struct DeviceLinear {
  DeviceArray<float> w, b;
  int64_t out = 0, in = 0;
  bool bias = false;
};
struct DeviceLayer {
  DeviceArray<float> input_norm, post_norm;
  DeviceLinear qkv, o, gate_up, down;
};

Status ToDevice(const Linear& l, DeviceLinear* d) {
  d->out = l.out;
  d->in = l.in;
  MC_RETURN_IF_ERROR(d->w.Upload(l.w.data(), l.w.size()));
  d->bias = !l.b.empty();
  if (d->bias) MC_RETURN_IF_ERROR(d->b.Upload(l.b.data(), l.b.size()));
  return Status::Ok();
}


struct DeviceCache {
  int64_t length = 0;
  std::vector<DeviceArray<float>> k, v;  // per layer: [capacity, kv_heads * head_dim]
};

class CudaStage final : public CachingStage<DeviceCache> {
 public:
  CudaStage(const model::LlamaConfig& config, LayerRange layers, StageOptions options)
      : CachingStage(config, layers), options_(options) {}
  ~CudaStage() override {
    if (blas_) LoadBlas().destroy(blas_);
  }

  Status Init(const StageWeights& w) {
    MC_CUDA(cudaSetDevice(options_.gpu_device), "selecting the GPU");
    MC_BLAS(LoadBlas().create(&blas_), "creating a handle");
    // fp32 products in fp32, as the reference (no TF32 shortcut).
    MC_BLAS(LoadBlas().set_math_mode(blas_, CUBLAS_PEDANTIC_MATH), "setting the math mode");
    for (const Layer& L : w.layers) {
      DeviceLayer d;
      MC_RETURN_IF_ERROR(d.input_norm.Upload(L.input_norm.data(), L.input_norm.size()));
      MC_RETURN_IF_ERROR(d.post_norm.Upload(L.post_norm.data(), L.post_norm.size()));
      MC_RETURN_IF_ERROR(ToDevice(L.qkv, &d.qkv));
      MC_RETURN_IF_ERROR(ToDevice(L.o, &d.o));
      MC_RETURN_IF_ERROR(ToDevice(L.gate_up, &d.gate_up));
      MC_RETURN_IF_ERROR(ToDevice(L.down, &d.down));
      layers_.push_back(std::move(d));
    }
    if (w.embedding) MC_RETURN_IF_ERROR(ToDevice(*w.embedding, &embedding_));
    if (w.head) {
      MC_RETURN_IF_ERROR(final_norm_.Upload(w.final_norm.data(), w.final_norm.size()));
      if (w.head == w.embedding) {
        tied_ = true;
      } else {
        MC_RETURN_IF_ERROR(ToDevice(*w.head, &head_));
      }
    }
    MC_RETURN_IF_ERROR(inv_freq_.Upload(w.inv_freq.data(), w.inv_freq.size()));
    bytes_ = w.StepBytes();
    return Status::Ok();
  }

  uint64_t weight_bytes() const override { return bytes_; }

  Status Forward(const StepInput& input, StepOutput* output) override {
    std::lock_guard<std::mutex> lock(mu_);
    MC_RETURN_IF_ERROR(CheckStep(*this, input, options_.max_requests, [this](uint64_t r) { return HeldLocked(r); },
                                 caches_.size()));
    MC_CUDA(cudaSetDevice(options_.gpu_device), "selecting the GPU");
    const auto& c = config_;
    const int64_t H = c.hidden_size, D = c.head_dim, NH = c.num_attention_heads, NKV = c.num_key_value_heads;
    const int64_t I = c.intermediate_size, T = static_cast<int64_t>(input.total_tokens());
    const int64_t QKV = (NH + 2 * NKV) * D, KV = NKV * D, group = NH / NKV;
    const float eps = static_cast<float>(c.rms_norm_eps);

    MC_RETURN_IF_ERROR(x_.Reserve(T * H));
    if (first()) {
      MC_RETURN_IF_ERROR(ids_.Upload(input.tokens.data(), input.tokens.size()));
      cuda::GatherRowsAsync(embedding_.w.get(), ids_.get(), T, H, x_.get());
    } else {
      MC_RETURN_IF_ERROR(x_.Upload(input.hidden.data(), input.hidden.size()));
    }
    std::vector<int64_t> pos;
    for (const auto& item : input.items) {
      for (int32_t j = 0; j < item.num_tokens; ++j) pos.push_back(item.position + j);
    }
    MC_RETURN_IF_ERROR(pos_.Upload(pos.data(), pos.size()));
    MC_RETURN_IF_ERROR(h_.Reserve(T * H));
    MC_RETURN_IF_ERROR(qkv_.Reserve(T * QKV));
    MC_RETURN_IF_ERROR(attn_.Reserve(T * NH * D));
    MC_RETURN_IF_ERROR(gu_.Reserve(T * 2 * I));
    MC_RETURN_IF_ERROR(act_.Reserve(T * I));
    MC_RETURN_IF_ERROR(y_.Reserve(T * H));

    std::vector<DeviceCache*> caches;
    for (const auto& item : input.items) {
      DeviceCache& dc = caches_[item.request];
      if (dc.k.empty()) dc.k.resize(layers_.size()), dc.v.resize(layers_.size());
      caches.push_back(&dc);
    }
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
    for (size_t l = 0; l < layers_.size(); ++l) {
      DeviceLayer& L = layers_[l];
      cuda::RmsNormAsync(x_.get(), L.input_norm.get(), T, H, eps, h_.get());
      MC_RETURN_IF_ERROR(Apply(L.qkv, h_.get(), T, qkv_.get()));
      cuda::RopeAsync(qkv_.get(), T, QKV, NH, D, pos_.get(), inv_freq_.get());
      cuda::RopeAsync(qkv_.get() + NH * D, T, QKV, NKV, D, pos_.get(), inv_freq_.get());
      int64_t t0 = 0;
      for (size_t it = 0; it < input.items.size(); ++it) {
        const StepItem& item = input.items[it];
        const int64_t len = item.position + item.num_tokens;
        DeviceArray<float>& kc = caches[it]->k[l];
        DeviceArray<float>& vc = caches[it]->v[l];
        MC_RETURN_IF_ERROR(kc.Reserve(len * KV, true));
        MC_RETURN_IF_ERROR(vc.Reserve(len * KV, true));
        MC_CUDA(cudaMemcpy2D(kc.get() + item.position * KV, KV * sizeof(float), qkv_.get() + t0 * QKV + NH * D,
                             QKV * sizeof(float), KV * sizeof(float), item.num_tokens, cudaMemcpyDeviceToDevice),
                "appending keys");
        MC_CUDA(cudaMemcpy2D(vc.get() + item.position * KV, KV * sizeof(float), qkv_.get() + t0 * QKV + NH * D + KV,
                             QKV * sizeof(float), KV * sizeof(float), item.num_tokens, cudaMemcpyDeviceToDevice),
                "appending values");
        MC_RETURN_IF_ERROR(scores_.Reserve(NH * len));
        for (int32_t j = 0; j < item.num_tokens; ++j) {
          const int64_t keys = item.position + j + 1;  // causal
          const float one = 1.0f, zero = 0.0f;
          const float* q = qkv_.get() + (t0 + j) * QKV;
          // Per KV head g: scores (group x keys) = scale * Q_g K_g^T, batched over g.
          MC_BLAS(LoadBlas().sgemm_batched(blas_, CUBLAS_OP_T, CUBLAS_OP_N, keys, group, D, &scale, kc.get(), KV, D,
                                            q, D, group * D, &zero, scores_.get(), keys, group * keys, NKV),
                  "attention scores");
          cuda::SoftmaxRowsAsync(scores_.get(), NH, keys);
          // out_g (group x D) = P_g V_g.
          MC_BLAS(LoadBlas().sgemm_batched(blas_, CUBLAS_OP_N, CUBLAS_OP_N, D, group, keys, &one, vc.get(), KV, D,
                                            scores_.get(), keys, group * keys, &zero,
                                            attn_.get() + (t0 + j) * NH * D, D, group * D, NKV),
                  "attention values");
        }
        t0 += item.num_tokens;
      }
      MC_RETURN_IF_ERROR(Apply(L.o, attn_.get(), T, y_.get()));
      cuda::AddIntoAsync(x_.get(), y_.get(), T * H);
      cuda::RmsNormAsync(x_.get(), L.post_norm.get(), T, H, eps, h_.get());
      MC_RETURN_IF_ERROR(Apply(L.gate_up, h_.get(), T, gu_.get()));
      cuda::SwiGluAsync(gu_.get(), I, T, act_.get());
      MC_RETURN_IF_ERROR(Apply(L.down, act_.get(), T, y_.get()));
      cuda::AddIntoAsync(x_.get(), y_.get(), T * H);
    }
    MC_CUDA(cudaGetLastError(), "a kernel launch");
    for (size_t it = 0; it < input.items.size(); ++it) caches[it]->length += input.items[it].num_tokens;
    output->hidden.clear();
    output->logits.clear();
    if (!last()) {
      output->hidden.resize(T * H);
      MC_CUDA(cudaMemcpy(output->hidden.data(), x_.get(), T * H * sizeof(float), cudaMemcpyDeviceToHost),
              "copying activations back");
      return Status::Ok();
    }
    const int64_t n = static_cast<int64_t>(input.items.size());
    MC_RETURN_IF_ERROR(last_.Reserve(n * H));
    int64_t t0 = 0;
    for (int64_t it = 0; it < n; ++it) {
      t0 += input.items[it].num_tokens;
      MC_CUDA(cudaMemcpy(last_.get() + it * H, x_.get() + (t0 - 1) * H, H * sizeof(float), cudaMemcpyDeviceToDevice),
              "gathering last tokens");
    }
    cuda::RmsNormAsync(last_.get(), final_norm_.get(), n, H, eps, h_.get());
    MC_RETURN_IF_ERROR(logits_.Reserve(n * c.vocab_size));
    MC_RETURN_IF_ERROR(Apply(tied_ ? embedding_ : head_, h_.get(), n, logits_.get()));
    output->logits.resize(n * c.vocab_size);
    MC_CUDA(cudaMemcpy(output->logits.data(), logits_.get(), n * c.vocab_size * sizeof(float), cudaMemcpyDeviceToHost),
            "copying logits back");
    return Status::Ok();
  }

 private:
  // y[T, out] = x[T, in] W^T (+ b): in cuBLAS's column-major terms y^T = W x^T.
  Status Apply(const DeviceLinear& l, const float* x, int64_t tokens, float* y) {
    const float one = 1.0f, zero = 0.0f;
    MC_BLAS(LoadBlas().sgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, l.out, tokens, l.in, &one, l.w.get(), l.in, x, l.in, &zero, y,
                        l.out),
            "a linear layer");
    if (l.bias) cuda::AddBiasAsync(y, l.b.get(), l.out, tokens * l.out);
    return Status::Ok();
  }

  StageOptions options_;
  cublasHandle_t blas_ = nullptr;
  std::vector<DeviceLayer> layers_;
  DeviceLinear embedding_, head_;
  bool tied_ = false;
  DeviceArray<float> final_norm_;
  DeviceArray<double> inv_freq_;
  uint64_t bytes_ = 0;
  // Step scratch, kept between steps.
  DeviceArray<float> x_, h_, qkv_, attn_, gu_, act_, y_, scores_, last_, logits_;
  DeviceArray<int32_t> ids_;
  DeviceArray<int64_t> pos_;
};

}  // namespace

Result<std::unique_ptr<Stage>> CreateCudaStage(const model::LlamaConfig& config, LayerRange layers,
                                               const WeightLookup& weights, StageOptions options) {
  // What the CUDA kernels do not do yet is refused, never computed without.
  if (config.qk_norm) return Unimplemented("the CUDA stage does not normalise q and k per head (Qwen3) yet");
  if (config.rope_scaling.type == model::RopeScaling::Type::kDynamic ||
      config.rope_scaling.type == model::RopeScaling::Type::kYarn) {
    return Unimplemented("the CUDA stage does not implement rope_scaling " + config.rope_scaling.Describe() + " yet");
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    return FailedPrecondition("a CUDA stage was asked for, but this machine has no usable GPU");
  }
  if (options.gpu_device < 0 || options.gpu_device >= devices) {
    return InvalidArgument("GPU " + std::to_string(options.gpu_device) + " does not exist (" +
                           std::to_string(devices) + " found)");
  }
  MC_RETURN_IF_ERROR(LoadBlas().status);
  MC_ASSIGN_OR_RETURN(StageWeights w, StageWeights::Load(config, layers, weights));
  auto stage = std::make_unique<CudaStage>(config, layers, options);
  MC_RETURN_IF_ERROR(stage->Init(w));
  return std::unique_ptr<Stage>(std::move(stage));
}

}  // namespace modelcast::pipeline
