// The manifest of a prepared model package (manifest.json).
//
// A package is the model re-laid-out for loading: one contiguous file per block (a group of
// consecutive layers; block 0 also holds the embeddings, the last block the final norm and
// LM head), each cut into slices of equal size (the unit of transfer, checksum and storage
// I/O): a block of B bytes is cut into ceil(B / max) slices of ceil(B / count) bytes rounded
// up to 4 KiB, so that no slice is much shorter than the others (a multicast round lasts as
// long as its largest slice).
// The manifest says where every tensor and slice lives and what every slice's XXH3 is.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "modelcast/common/dtype.h"
#include "modelcast/common/status.h"
#include "modelcast/model/llama_config.h"

namespace modelcast::model {

inline constexpr const char* kManifestFile = "manifest.json";
inline constexpr const char* kPackageFormat = "modelcast-package";
inline constexpr int kPackageFormatVersion = 1;
inline constexpr uint64_t kFileAlignment = 4096;   // block files and slices: O_DIRECT-friendly
inline constexpr uint64_t kTensorAlignment = 256;  // tensors inside a block: vector/GPU loads
inline constexpr uint64_t kMaxSliceBytes = 1ull << 30;

struct SliceEntry {
  uint32_t index = 0;  // global, 0..num_slices-1, in block order
  uint32_t block = 0;
  uint64_t offset = 0;  // within the block file; a multiple of the block's slice_bytes
  uint64_t length = 0;
  uint64_t xxh3 = 0;
};

struct TensorEntry {
  std::string name;
  uint32_t block = 0;
  uint64_t offset = 0;  // within the block file
  uint64_t nbytes = 0;
  DType dtype = DType::kBF16;
  std::vector<int64_t> shape;
};

struct BlockEntry {
  uint32_t index = 0;
  std::string file;         // e.g. "block-0003.bin", relative to the package directory
  int64_t first_layer = 0;  // layers [first_layer, end_layer)
  int64_t end_layer = 0;
  bool embeddings = false;  // holds model.embed_tokens
  bool head = false;        // holds model.norm and lm_head
  uint64_t bytes = 0;       // meaningful bytes (tensors and the padding between them)
  uint64_t file_bytes = 0;  // bytes rounded up to kFileAlignment (zero-filled tail)
  uint32_t first_slice = 0;
  uint32_t num_slices = 0;
  uint64_t slice_bytes = 0;  // this block's slice size: every slice but the last has it
};

// The slice size for a block of `bytes` bytes under a maximum of `max_slice_bytes`: the
// equal cut, rounded up to 4 KiB.
uint64_t BlockSliceBytes(uint64_t bytes, uint64_t max_slice_bytes);

// A file of the checkpoint's tokenizer kept beside the blocks (tokenizer.json or a SentencePiece
// tokenizer.model, tokenizer_config.json, generation_config.json), with its size and checksum.
struct TextFileEntry {
  std::string name;
  uint64_t bytes = 0;
  uint64_t xxh3 = 0;
};
// The files a package may carry beside its blocks.
inline constexpr const char* kTextFiles[] = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                                             "generation_config.json"};

struct Manifest {
  std::string name;
  DType dtype = DType::kBF16;
  LlamaConfig config;
  nlohmann::json hf_config;  // config.json as the source checkpoint had it
  uint64_t slice_bytes = 0;  // the maximum slice size (blocks cut theirs equally below it)
  std::vector<BlockEntry> blocks;
  std::vector<SliceEntry> slices;
  std::vector<TensorEntry> tensors;
  std::vector<std::string> skipped_tensors;  // in the source checkpoint, not used by the model
  std::vector<TextFileEntry> text_files;     // empty: no tokenizer (served with the byte-level fallback)

  uint64_t TotalBytes() const;  // sum of blocks' bytes
  const TensorEntry* FindTensor(const std::string& name) const;
  // The block whose layer range contains `layer`.
  const BlockEntry* BlockForLayer(int64_t layer) const;

  // Parses and fully validates manifest.json text; errors start with `source`.
  static Result<Manifest> Parse(std::string_view text, const std::string& source);
  std::string Serialize() const;
  // Internal consistency: blocks tile the layers, slices tile the blocks, tensors sit inside
  // their block without overlap, and every tensor the config implies is present in the block
  // that holds its layer.
  Status Validate(const std::string& source) const;
};

// Splits `num_layers` into `num_blocks` contiguous ranges whose sizes differ by at most one.
Result<std::vector<std::pair<int64_t, int64_t>>> PartitionLayers(int64_t num_layers, int64_t num_blocks);

// Lays a model out into blocks, tensors and slices (checksums left zero): what prepare fills.
Result<Manifest> PlanPackageLayout(const LlamaConfig& config, const nlohmann::json& hf_config, DType dtype,
                                   std::string name, int64_t num_blocks, uint64_t slice_bytes);

}  // namespace modelcast::model
