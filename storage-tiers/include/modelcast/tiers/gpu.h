// The GPU side of the store: finding devices, pinning the host pool, device memory and copies
// between host and device on several CUDA streams.
//
// Built without CUDA, or run where there is no driver or no device, Probe() finds nothing and
// the store has no GPU tier; nothing here then makes a CUDA call beyond the one probe
// (cudaGetDeviceCount), which needs no device.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "modelcast/common/status.h"

namespace modelcast::tiers::gpu {

struct DeviceInfo {
  int index = 0;
  std::string name;
  uint64_t total_memory = 0;
};

// Whether this build has the CUDA parts.
bool Compiled();
// The usable devices. When there are none, `why` (if given) says why: not compiled with CUDA,
// no driver, no device.
std::vector<DeviceInfo> Probe(std::string* why = nullptr);

// Page-locks host memory for fast, asynchronous copies (cudaHostRegister). Only call when
// Probe() found a device.
Status HostRegister(void* ptr, uint64_t bytes);
void HostUnregister(void* ptr);

// The device memory's bandwidth: bytes read plus bytes written per second by a device-to-device
// cudaMemcpy of `bytes` (best of `reps`, after a warm-up).
Result<double> DeviceCopyBandwidth(int device, uint64_t bytes, int reps);
// Bytes of the device's memory in use (by every process), after the device's queued work.
Result<uint64_t> MemoryInUse(int device);

// A region of device memory allocated once (cudaMalloc) and freed on destruction.
class DeviceMemory {
 public:
  static Result<std::unique_ptr<DeviceMemory>> Allocate(int device, uint64_t bytes);
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  int device() const { return device_; }
  uint8_t* base() const { return base_; }
  uint64_t size() const { return size_; }

 private:
  DeviceMemory(int device, uint8_t* base, uint64_t size) : device_(device), base_(base), size_(size) {}
  int device_;
  uint8_t* base_;
  uint64_t size_;
};

enum class Direction { kHostToDevice, kDeviceToHost };

// A synchronous copy (cudaMemcpy), for the rare paths that must finish before they return
// (demoting a block under eviction pressure).
Status CopySync(int device, Direction direction, void* dst, const void* src, uint64_t bytes);

// Copies between host and one device on `streams` CUDA streams, each driven by its own
// thread: a copy is queued to the least busy stream, and `done` runs on that stream's thread
// when the copy has completed (it may itself queue more copies). With the host memory pinned,
// several streams keep the PCIe link busy while each completion is reported as it happens.
class CopyEngine {
 public:
  static Result<std::unique_ptr<CopyEngine>> Create(int device, int streams);
  ~CopyEngine();  // waits for the queued copies
  CopyEngine(const CopyEngine&) = delete;
  CopyEngine& operator=(const CopyEngine&) = delete;

  void Copy(Direction direction, void* dst, const void* src, uint64_t bytes, std::function<void(Status)> done);

 private:
  struct Job {
    Direction direction;
    void* dst;
    const void* src;
    uint64_t bytes;
    std::function<void(Status)> done;
  };
  struct Lane {
    void* stream = nullptr;
    std::deque<Job> jobs;
    uint64_t queued_bytes = 0;
    std::thread thread;
  };
  explicit CopyEngine(int device) : device_(device) {}
  void Run(Lane* lane);

  int device_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::vector<std::unique_ptr<Lane>> lanes_;
};

}  // namespace modelcast::tiers::gpu
