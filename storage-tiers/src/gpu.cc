#include "modelcast/tiers/gpu.h"

#include <glog/logging.h>

#include <algorithm>

#if MODELCAST_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace modelcast::tiers::gpu {

#if MODELCAST_HAVE_CUDA
namespace {
Status CudaError(const std::string& what, cudaError_t err) {
  return Internal(what + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}
}  // namespace

bool Compiled() { return true; }

std::vector<DeviceInfo> Probe(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    if (why) {
      *why = err != cudaSuccess ? std::string("no usable CUDA driver or device (") + cudaGetErrorName(err) + ")"
                                : "no CUDA device";
    }
    return {};
  }
  std::vector<DeviceInfo> devices;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    devices.push_back({i, prop.name, static_cast<uint64_t>(prop.totalGlobalMem)});
  }
  if (devices.empty() && why) *why = "no CUDA device answered cudaGetDeviceProperties";
  return devices;
}

Status HostRegister(void* ptr, uint64_t bytes) {
  const cudaError_t err = cudaHostRegister(ptr, bytes, cudaHostRegisterPortable);
  if (err != cudaSuccess) return CudaError("cudaHostRegister of " + std::to_string(bytes) + " bytes", err);
  return Status::Ok();
}

void HostUnregister(void* ptr) { cudaHostUnregister(ptr); }

Result<double> DeviceCopyBandwidth(int device, uint64_t bytes, int reps) {
  MC_ASSIGN_OR_RETURN(auto a, DeviceMemory::Allocate(device, bytes));
  MC_ASSIGN_OR_RETURN(auto b, DeviceMemory::Allocate(device, bytes));
  cudaEvent_t start = nullptr, stop = nullptr;
  cudaError_t err = cudaEventCreate(&start);
  if (err == cudaSuccess) err = cudaEventCreate(&stop);
  double best = 0;
  for (int r = 0; err == cudaSuccess && r < reps + 1; ++r) {  // the first is a warm-up
    err = cudaEventRecord(start);
    if (err == cudaSuccess) err = cudaMemcpy(b->base(), a->base(), bytes, cudaMemcpyDeviceToDevice);
    if (err == cudaSuccess) err = cudaEventRecord(stop);
    if (err == cudaSuccess) err = cudaEventSynchronize(stop);
    float ms = 0;
    if (err == cudaSuccess) err = cudaEventElapsedTime(&ms, start, stop);
    if (err == cudaSuccess && r > 0 && ms > 0) best = std::max(best, 2.0 * static_cast<double>(bytes) / (ms / 1e3));
  }
  if (start) cudaEventDestroy(start);
  if (stop) cudaEventDestroy(stop);
  if (err != cudaSuccess) return CudaError("timing a device-to-device copy", err);
  return best;
}

Result<uint64_t> MemoryInUse(int device) {
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return CudaError("cudaSetDevice(" + std::to_string(device) + ")", err);
  err = cudaDeviceSynchronize();
  if (err != cudaSuccess) return CudaError("cudaDeviceSynchronize", err);
  size_t free = 0, total = 0;
  err = cudaMemGetInfo(&free, &total);
  if (err != cudaSuccess) return CudaError("cudaMemGetInfo", err);
  return static_cast<uint64_t>(total - free);
}

Result<std::unique_ptr<DeviceMemory>> DeviceMemory::Allocate(int device, uint64_t bytes) {
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return CudaError("cudaSetDevice(" + std::to_string(device) + ")", err);
  void* p = nullptr;
  err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    return ResourceExhausted("GPU " + std::to_string(device) + ": cannot allocate the " + std::to_string(bytes) +
                             "-byte arena: " + cudaGetErrorString(err));
  }
  return std::unique_ptr<DeviceMemory>(new DeviceMemory(device, static_cast<uint8_t*>(p), bytes));
}

DeviceMemory::~DeviceMemory() {
  cudaSetDevice(device_);
  cudaFree(base_);
}

Status CopySync(int device, Direction direction, void* dst, const void* src, uint64_t bytes) {
  cudaError_t err = cudaSetDevice(device);
  if (err == cudaSuccess) {
    err = cudaMemcpy(dst, src, bytes,
                     direction == Direction::kHostToDevice ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost);
  }
  if (err != cudaSuccess) return CudaError("cudaMemcpy of " + std::to_string(bytes) + " bytes", err);
  return Status::Ok();
}

Result<std::unique_ptr<CopyEngine>> CopyEngine::Create(int device, int streams) {
  if (streams < 1) return InvalidArgument("copy streams must be at least 1, got " + std::to_string(streams));
  std::unique_ptr<CopyEngine> engine(new CopyEngine(device));
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return CudaError("cudaSetDevice(" + std::to_string(device) + ")", err);
  for (int i = 0; i < streams; ++i) {
    auto lane = std::make_unique<Lane>();
    cudaStream_t s = nullptr;
    err = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    if (err != cudaSuccess) return CudaError("cudaStreamCreate", err);
    lane->stream = s;
    engine->lanes_.push_back(std::move(lane));
  }
  for (auto& lane : engine->lanes_) lane->thread = std::thread([e = engine.get(), l = lane.get()] { e->Run(l); });
  return engine;
}

CopyEngine::~CopyEngine() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& lane : lanes_) {
    if (lane->thread.joinable()) lane->thread.join();
    if (lane->stream) cudaStreamDestroy(static_cast<cudaStream_t>(lane->stream));
  }
}

void CopyEngine::Copy(Direction direction, void* dst, const void* src, uint64_t bytes,
                      std::function<void(Status)> done) {
  {
    std::lock_guard lock(mu_);
    Lane* best = lanes_.front().get();
    for (auto& lane : lanes_) {
      if (lane->queued_bytes < best->queued_bytes) best = lane.get();
    }
    best->queued_bytes += bytes;
    best->jobs.push_back({direction, dst, src, bytes, std::move(done)});
  }
  cv_.notify_all();
}

void CopyEngine::Run(Lane* lane) {
  cudaSetDevice(device_);
  auto stream = static_cast<cudaStream_t>(lane->stream);
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !lane->jobs.empty(); });
      if (lane->jobs.empty()) return;  // stopping, and nothing left to copy
      job = std::move(lane->jobs.front());
      lane->jobs.pop_front();
    }
    const auto kind = job.direction == Direction::kHostToDevice ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
    cudaError_t err = cudaMemcpyAsync(job.dst, job.src, job.bytes, kind, stream);
    if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
    {
      std::lock_guard lock(mu_);
      lane->queued_bytes -= job.bytes;
    }
    job.done(err == cudaSuccess ? Status::Ok()
                                : CudaError("cudaMemcpyAsync of " + std::to_string(job.bytes) + " bytes", err));
  }
}

#else  // !MODELCAST_HAVE_CUDA

namespace {
Status NotBuilt() { return Unimplemented("modelcast was built without CUDA"); }
}  // namespace

bool Compiled() { return false; }

std::vector<DeviceInfo> Probe(std::string* why) {
  if (why) *why = "modelcast was built without CUDA";
  return {};
}

Status HostRegister(void*, uint64_t) { return NotBuilt(); }
void HostUnregister(void*) {}
Result<uint64_t> MemoryInUse(int) { return NotBuilt(); }
Result<double> DeviceCopyBandwidth(int, uint64_t, int) { return NotBuilt(); }

Result<std::unique_ptr<DeviceMemory>> DeviceMemory::Allocate(int, uint64_t) { return NotBuilt(); }
DeviceMemory::~DeviceMemory() = default;

Status CopySync(int, Direction, void*, const void*, uint64_t) { return NotBuilt(); }
Result<std::unique_ptr<CopyEngine>> CopyEngine::Create(int, int) { return NotBuilt(); }
CopyEngine::~CopyEngine() = default;
void CopyEngine::Copy(Direction, void*, const void*, uint64_t, std::function<void(Status)> done) { done(NotBuilt()); }
void CopyEngine::Run(Lane*) {}

#endif

}  // namespace modelcast::tiers::gpu
