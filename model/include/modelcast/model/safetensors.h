// The safetensors format: an 8-byte little-endian header length N, N bytes of JSON mapping
// tensor names to {dtype, shape, data_offsets}, then the tensor bytes.
//
// The parser trusts nothing in the file: the header length against the file size, the JSON,
// every dtype and shape (and that shape x dtype size equals the byte length, without
// overflow), and that the tensors tile the data region exactly, with no overlap and no gap,
// as the reference implementation requires.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "modelcast/common/dtype.h"
#include "modelcast/common/file_util.h"
#include "modelcast/common/status.h"

namespace modelcast::model {

// The same limit the reference implementation applies to the JSON header.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct SafetensorsTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data region
  uint64_t end = 0;

  uint64_t nbytes() const { return end - begin; }
};

struct SafetensorsHeader {
  uint64_t header_bytes = 0;               // N
  uint64_t data_offset = 0;                // 8 + N: where the data region starts in the file
  uint64_t data_bytes = 0;                 // file size - data_offset
  std::vector<SafetensorsTensor> tensors;  // sorted by begin
  std::map<std::string, std::string> metadata;

  const SafetensorsTensor* Find(const std::string& name) const;
};

// Reads the 8-byte length prefix. `prefix` holds at least the first 8 bytes of the file.
Result<uint64_t> ParseSafetensorsHeaderLength(std::span<const uint8_t> prefix, uint64_t file_size,
                                              const std::string& source);

// Parses and validates a header. `bytes` holds at least the first 8 + N bytes of a file whose
// total size is `file_size`; errors start with `source` (the file name).
Result<SafetensorsHeader> ParseSafetensorsHeader(std::span<const uint8_t> bytes, uint64_t file_size,
                                                 const std::string& source);

// An open safetensors file whose header has been validated.
class SafetensorsFile {
 public:
  static Result<SafetensorsFile> Open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  const File& file() const { return file_; }

  // Reads `dst.size()` bytes of tensor `t` starting `offset` bytes into it.
  Status Read(const SafetensorsTensor& t, uint64_t offset, std::span<uint8_t> dst) const;

 private:
  std::filesystem::path path_;
  File file_;
  SafetensorsHeader header_;
};

// One tensor to write: its bytes come from `fill`, called once with a buffer of exactly
// prod(shape) * DTypeSize(dtype) bytes.
struct SafetensorsWriteSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
};

using TensorFiller = std::function<Status(const SafetensorsWriteSpec&, std::span<uint8_t>)>;

// Writes a safetensors file with the tensors in the given order (header padded with spaces to
// a multiple of 8 bytes, as the reference implementation does). Does not fsync.
Status WriteSafetensors(const std::filesystem::path& path, const std::vector<SafetensorsWriteSpec>& tensors,
                        const std::map<std::string, std::string>& metadata, const TensorFiller& fill);

}  // namespace modelcast::model
