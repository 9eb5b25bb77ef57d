// A Hugging Face checkpoint directory: config.json plus either model.safetensors or a
// model.safetensors.index.json naming the shards.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "modelcast/model/llama_config.h"
#include "modelcast/model/safetensors.h"

namespace modelcast::model {

inline constexpr const char* kHfSingleFile = "model.safetensors";
inline constexpr const char* kHfIndexFile = "model.safetensors.index.json";

class HfCheckpoint {
 public:
  struct Entry {
    const SafetensorsFile* file = nullptr;
    const SafetensorsTensor* tensor = nullptr;
  };

  // Opens and validates config.json and every safetensors file; every tensor of the index
  // must exist in the shard the index names, and no tensor may appear in two shards.
  static Result<HfCheckpoint> Open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  const LlamaConfig& config() const { return config_; }
  const nlohmann::json& raw_config() const { return raw_config_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  bool sharded() const { return sharded_; }

  // Null when absent.
  const Entry* Find(const std::string& name) const;
  const std::map<std::string, Entry>& tensors() const { return tensors_; }
  uint64_t TensorBytes() const;

  // Checks that every tensor the config implies is present with the expected shape, and that
  // all of them share one floating-point dtype, which is returned. Tensors the model does not
  // use (other than ignorable rotary buffers) are reported in `unexpected`.
  Result<DType> CheckAgainstConfig(std::vector<std::string>* unexpected) const;

 private:
  std::filesystem::path dir_;
  LlamaConfig config_;
  nlohmann::json raw_config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry> tensors_;
  bool sharded_ = false;
};

}  // namespace modelcast::model
