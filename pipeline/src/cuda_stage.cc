// The CUDA stage: the CPU stage's arithmetic on the GPU. bf16 and fp16 weights stay in their
// dtype on the device (uploaded once, or read in place in the store's GPU arena), their products
// cuBLAS GEMMs with half inputs and fp32 accumulation and output; the KV cache is kept in the
// weights' dtype; norms, softmax, rotary and the residual stream are fp32 (cuda_kernels.cu).
// With StageOptions::widen_weights it computes from fp32 copies in fp32 throughout (cuBLAS's
// pedantic math), answering as the float64 reference does to rounding: for comparisons.
// Each request's KV cache lives on the device and grows by doubling.
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
  // (Spelled out: the C++ header overloads these two for the old cudaDataType compute types.)
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                            const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                            cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
  cublasStatus_t (*gemm_batched_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                                    const void*, cudaDataType, int, long long, const void*, cudaDataType, int,
                                    long long, const void*, void*, cudaDataType, int, long long, int,
                                    cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
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
    b.gemm_ex = reinterpret_cast<decltype(b.gemm_ex)>(::dlsym(lib, "cublasGemmEx"));
    b.gemm_batched_ex = reinterpret_cast<decltype(b.gemm_batched_ex)>(::dlsym(lib, "cublasGemmStridedBatchedEx"));
    if (!b.create || !b.destroy || !b.set_math_mode || !b.sgemm || !b.sgemm_batched || !b.gemm_ex ||
        !b.gemm_batched_ex) {
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

cuda::Elem ElemOf(DType d) { return d == DType::kF16 ? cuda::Elem::kF16 : cuda::Elem::kBF16; }
cudaDataType_t CudaType(cuda::Elem e) {
  return e == cuda::Elem::kBF16 ? CUDA_R_16BF : e == cuda::Elem::kF16 ? CUDA_R_16F : CUDA_R_32F;
}

// One Linear on the device: fp32 weights, or half ones in parts stacked by rows (each [rows, in]),
// views on the store's GPU arena or on `owned`.
struct DeviceLinear {
  struct Part {
    const uint16_t* w = nullptr;
    int64_t rows = 0;
  };
  int64_t out = 0, in = 0;
  cuda::Elem elem = cuda::Elem::kF32;
  DeviceArray<float> w32;
  DeviceArray<uint16_t> owned;
  std::vector<Part> parts;
  DeviceArray<float> b;
  bool bias = false;
  const void* table() const { return elem == cuda::Elem::kF32 ? static_cast<const void*>(w32.get()) : parts[0].w; }
};
struct DeviceLayer {
  DeviceArray<float> input_norm, post_norm, q_norm, k_norm;
  DeviceLinear qkv, o, gate_up, down;
};

// `in_place`: the host Linear's half parts are device addresses already.
Status ToDevice(const Linear& l, bool in_place, DeviceLinear* d) {
  d->out = l.out;
  d->in = l.in;
  if (l.is_half()) {
    d->elem = ElemOf(l.half_dtype);
    if (in_place) {
      for (const auto& p : l.half) d->parts.push_back({p.w, p.rows});
    } else {  // one upload of the parts stacked: one product
      MC_RETURN_IF_ERROR(d->owned.Reserve(static_cast<size_t>(l.out * l.in)));
      int64_t row = 0;
      for (const auto& p : l.half) {
        MC_CUDA(cudaMemcpy(d->owned.get() + row * l.in, p.w, 2 * p.rows * l.in, cudaMemcpyHostToDevice),
                "copying weights to the device");
        row += p.rows;
      }
      d->parts.push_back({d->owned.get(), l.out});
    }
  } else {
    MC_RETURN_IF_ERROR(d->w32.Upload(l.w.data(), l.w.size()));
  }
  d->bias = !l.b.empty();
  if (d->bias) MC_RETURN_IF_ERROR(d->b.Upload(l.b.data(), l.b.size()));
  return Status::Ok();
}

Status UploadVector(const std::vector<float>& v, DeviceArray<float>* d) {
  return v.empty() ? Status::Ok() : d->Upload(v.data(), v.size());
}

struct DeviceCache {
  int64_t length = 0;
  std::vector<DeviceArray<uint8_t>> k, v;  // per layer: [capacity, kv_heads * head_dim] of the KV element
};

class CudaStage final : public CachingStage<DeviceCache> {
 public:
  CudaStage(const model::LlamaConfig& config, LayerRange layers, StageOptions options)
      : CachingStage(config, layers), options_(std::move(options)) {}
  ~CudaStage() override {
    if (blas_) LoadBlas().destroy(blas_);
  }

  Status Init(StageWeights w) {
    MC_CUDA(cudaSetDevice(options_.gpu_device), "selecting the GPU");
    MC_BLAS(LoadBlas().create(&blas_), "creating a handle");
    // fp32 products in fp32, as the reference (no TF32 shortcut); half products on tensor cores.
    MC_BLAS(LoadBlas().set_math_mode(blas_, options_.widen_weights ? CUBLAS_PEDANTIC_MATH : CUBLAS_DEFAULT_MATH),
            "setting the math mode");
    const bool in_place = options_.weights_on_device;
    for (const Layer& L : w.layers) {
      DeviceLayer d;
      MC_RETURN_IF_ERROR(UploadVector(L.input_norm, &d.input_norm));
      MC_RETURN_IF_ERROR(UploadVector(L.post_norm, &d.post_norm));
      MC_RETURN_IF_ERROR(UploadVector(L.q_norm, &d.q_norm));
      MC_RETURN_IF_ERROR(UploadVector(L.k_norm, &d.k_norm));
      MC_RETURN_IF_ERROR(ToDevice(L.qkv, in_place, &d.qkv));
      MC_RETURN_IF_ERROR(ToDevice(L.o, in_place, &d.o));
      MC_RETURN_IF_ERROR(ToDevice(L.gate_up, in_place, &d.gate_up));
      MC_RETURN_IF_ERROR(ToDevice(L.down, in_place, &d.down));
      max_in_ = std::max({max_in_, L.qkv.in, L.o.in, L.gate_up.in, L.down.in});
      layers_.push_back(std::move(d));
    }
    // The KV cache in the dtype of the layers' weights (fp32 when they are fp32 or widened).
    if (!layers_.empty()) kv_ = layers_[0].qkv.elem;
    if (w.embedding) MC_RETURN_IF_ERROR(ToDevice(*w.embedding, in_place, &embedding_));
    if (w.head) {
      MC_RETURN_IF_ERROR(final_norm_.Upload(w.final_norm.data(), w.final_norm.size()));
      if (w.head == w.embedding) {
        tied_ = true;
      } else {
        MC_RETURN_IF_ERROR(ToDevice(*w.head, in_place, &head_));
      }
      max_in_ = std::max(max_in_, w.head->in);
    }
    bytes_ = w.StepBytes();
    weights_ = std::move(w);  // the rotation's frequencies; its matrices are on the device now
    for (Layer& L : weights_.layers) L = Layer();
    weights_.embedding.reset(), weights_.head.reset(), weights_.copies.clear();
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
    const int64_t es = cuda::ElemSize(kv_);
    const bool half_kv = kv_ != cuda::Elem::kF32;

    MC_RETURN_IF_ERROR(x_.Reserve(T * H));
    if (first()) {
      MC_RETURN_IF_ERROR(ids_.Upload(input.tokens.data(), input.tokens.size()));
      cuda::GatherRowsAsync(embedding_.table(), embedding_.elem, ids_.get(), T, H, x_.get());
    } else {
      MC_RETURN_IF_ERROR(x_.Upload(input.hidden.data(), input.hidden.size()));
    }
    std::vector<float> cosv, sinv;
    RopeTables(c, weights_, input.items, &cosv, &sinv);
    MC_RETURN_IF_ERROR(cos_.Upload(cosv.data(), cosv.size()));
    MC_RETURN_IF_ERROR(sin_.Upload(sinv.data(), sinv.size()));
    MC_RETURN_IF_ERROR(h_.Reserve(T * H));
    MC_RETURN_IF_ERROR(qkv_.Reserve(T * QKV));
    MC_RETURN_IF_ERROR(attn_.Reserve(T * NH * D));
    MC_RETURN_IF_ERROR(gu_.Reserve(T * 2 * I));
    MC_RETURN_IF_ERROR(act_.Reserve(T * I));
    MC_RETURN_IF_ERROR(y_.Reserve(T * H));
    MC_RETURN_IF_ERROR(xh_.Reserve(T * std::max(max_in_, QKV)));

    std::vector<DeviceCache*> caches;
    for (const auto& item : input.items) {
      DeviceCache& dc = caches_[item.request];
      if (dc.k.empty()) dc.k.resize(layers_.size()), dc.v.resize(layers_.size());
      caches.push_back(&dc);
    }
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
    const cudaDataType_t kv_type = CudaType(kv_);
    for (size_t l = 0; l < layers_.size(); ++l) {
      DeviceLayer& L = layers_[l];
      cuda::RmsNormAsync(x_.get(), L.input_norm.get(), T, H, eps, h_.get());
      MC_RETURN_IF_ERROR(Apply(L.qkv, h_.get(), T, qkv_.get()));
      if (L.q_norm.get() != nullptr) {  // Qwen3: each head of q and k normalised before the rotation
        cuda::HeadRmsNormAsync(qkv_.get(), T, QKV, NH, D, L.q_norm.get(), eps);
        cuda::HeadRmsNormAsync(qkv_.get() + NH * D, T, QKV, NKV, D, L.k_norm.get(), eps);
      }
      cuda::RopeAsync(qkv_.get(), T, QKV, NH, D, cos_.get(), sin_.get());
      cuda::RopeAsync(qkv_.get() + NH * D, T, QKV, NKV, D, cos_.get(), sin_.get());
      // Attention reads q, k and v in the cache's element type.
      const uint8_t* qkv_in = reinterpret_cast<const uint8_t*>(qkv_.get());
      if (half_kv) {
        cuda::ConvertAsync(qkv_.get(), xh_.get(), kv_, T * QKV);
        qkv_in = reinterpret_cast<const uint8_t*>(xh_.get());
      }
      int64_t t0 = 0;
      for (size_t it = 0; it < input.items.size(); ++it) {
        const StepItem& item = input.items[it];
        const int64_t len = item.position + item.num_tokens;
        DeviceArray<uint8_t>& kc = caches[it]->k[l];
        DeviceArray<uint8_t>& vc = caches[it]->v[l];
        MC_RETURN_IF_ERROR(kc.Reserve(len * KV * es, true));
        MC_RETURN_IF_ERROR(vc.Reserve(len * KV * es, true));
        MC_CUDA(cudaMemcpy2D(kc.get() + item.position * KV * es, KV * es, qkv_in + (t0 * QKV + NH * D) * es, QKV * es,
                             KV * es, item.num_tokens, cudaMemcpyDeviceToDevice),
                "appending keys");
        MC_CUDA(cudaMemcpy2D(vc.get() + item.position * KV * es, KV * es, qkv_in + (t0 * QKV + NH * D + KV) * es,
                             QKV * es, KV * es, item.num_tokens, cudaMemcpyDeviceToDevice),
                "appending values");
        MC_RETURN_IF_ERROR(scores_.Reserve(NH * len));
        if (half_kv) MC_RETURN_IF_ERROR(probs_.Reserve(NH * len));
        for (int32_t j = 0; j < item.num_tokens; ++j) {
          const int64_t keys = item.position + j + 1;  // causal
          const float one = 1.0f, zero = 0.0f;
          const uint8_t* q = qkv_in + (t0 + j) * QKV * es;
          // Per KV head g: scores (group x keys) = scale * Q_g K_g^T, batched over g.
          MC_BLAS(LoadBlas().gemm_batched_ex(blas_, CUBLAS_OP_T, CUBLAS_OP_N, keys, group, D, &scale, kc.get(), kv_type,
                                             KV, D, q, kv_type, D, group * D, &zero, scores_.get(), CUDA_R_32F, keys,
                                             group * keys, NKV, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                  "attention scores");
          cuda::SoftmaxRowsAsync(scores_.get(), NH, keys);
          const void* p = scores_.get();
          if (half_kv) {
            cuda::ConvertAsync(scores_.get(), probs_.get(), kv_, NH * keys);
            p = probs_.get();
          }
          // out_g (group x D) = P_g V_g.
          MC_BLAS(LoadBlas().gemm_batched_ex(blas_, CUBLAS_OP_N, CUBLAS_OP_N, D, group, keys, &one, vc.get(), kv_type,
                                             KV, D, p, kv_type, keys, group * keys, &zero,
                                             attn_.get() + (t0 + j) * NH * D, CUDA_R_32F, D, group * D, NKV,
                                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
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
  // y[T, out] = x[T, in] W^T (+ b): in cuBLAS's column-major terms y^T = W x^T. Half weights
  // multiply x rounded to their dtype, accumulating and writing fp32.
  Status Apply(const DeviceLinear& l, const float* x, int64_t tokens, float* y) {
    const float one = 1.0f, zero = 0.0f;
    if (l.elem == cuda::Elem::kF32) {
      MC_BLAS(LoadBlas().sgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, l.out, tokens, l.in, &one, l.w32.get(), l.in, x, l.in,
                               &zero, y, l.out),
              "a linear layer");
    } else {
      cuda::ConvertAsync(x, xh_.get(), l.elem, tokens * l.in);
      const cudaDataType_t type = CudaType(l.elem);
      int64_t row = 0;
      for (const auto& p : l.parts) {
        MC_BLAS(LoadBlas().gemm_ex(blas_, CUBLAS_OP_T, CUBLAS_OP_N, p.rows, tokens, l.in, &one, p.w, type, l.in,
                                   xh_.get(), type, l.in, &zero, y + row, CUDA_R_32F, l.out, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT),
                "a linear layer");
        row += p.rows;
      }
    }
    if (l.bias) cuda::AddBiasAsync(y, l.b.get(), l.out, tokens * l.out);
    return Status::Ok();
  }

  StageOptions options_;
  cublasHandle_t blas_ = nullptr;
  std::vector<DeviceLayer> layers_;
  DeviceLinear embedding_, head_;
  bool tied_ = false;
  cuda::Elem kv_ = cuda::Elem::kF32;
  int64_t max_in_ = 0;
  DeviceArray<float> final_norm_;
  StageWeights weights_;  // its rotation only (the matrices were dropped once on the device)
  uint64_t bytes_ = 0;
  // Step scratch, kept between steps.
  DeviceArray<float> x_, h_, qkv_, attn_, gu_, act_, y_, scores_, last_, logits_, cos_, sin_;
  DeviceArray<uint16_t> xh_, probs_;  // half inputs of the products
  DeviceArray<int32_t> ids_;
};

}  // namespace

Result<std::unique_ptr<Stage>> CreateCudaStage(const model::LlamaConfig& config, LayerRange layers,
                                               const WeightLookup& weights, StageOptions options) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    return FailedPrecondition("a CUDA stage was asked for, but this machine has no usable GPU");
  }
  if (options.gpu_device < 0 || options.gpu_device >= devices) {
    return InvalidArgument("GPU " + std::to_string(options.gpu_device) + " does not exist (" +
                           std::to_string(devices) + " found)");
  }
  MC_RETURN_IF_ERROR(LoadBlas().status);
  if (options.weights_on_device && !options.weights_owner) {
    return InvalidArgument("weights on the device need an owner that keeps them there (StageOptions::weights_owner)");
  }
  // Half matrices are read where they lie (device weights) or uploaded from the lookup's memory,
  // which lives while this runs: no host copies either way.
  StageWeights::HostFetch fetch;
  if (options.weights_on_device) {
    const int device = options.gpu_device;
    fetch = [device](const uint8_t* src, uint64_t bytes, uint8_t* dst) -> Status {
      MC_CUDA(cudaSetDevice(device), "selecting the GPU");
      MC_CUDA(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "reading a tensor on the device");
      return Status::Ok();
    };
  }
  auto owner = options.weights_owner ? options.weights_owner : std::make_shared<int>(0);
  MC_ASSIGN_OR_RETURN(StageWeights w, StageWeights::Load(config, layers, weights, /*half=*/!options.widen_weights,
                                                         owner, std::move(fetch)));
  auto stage = std::make_unique<CudaStage>(config, layers, options);
  MC_RETURN_IF_ERROR(stage->Init(std::move(w)));
  return std::unique_ptr<Stage>(std::move(stage));
}

}  // namespace modelcast::pipeline
