#include "modelcast/model/checkpoint.h"

#include <set>

#include "modelcast/common/file_util.h"

namespace modelcast::model {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Status ValidShardName(const std::string& name, const std::string& source) {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
    return InvalidArgument(source + ": shard file name '" + name +
                           "' must be a plain file name in the checkpoint directory");
  }
  return Status::Ok();
}

}  // namespace

Result<HfCheckpoint> HfCheckpoint::Open(const fs::path& dir) {
  HfCheckpoint c;
  c.dir_ = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return NotFound(dir.string() + " is not a directory");
  const fs::path config_path = dir / "config.json";
  if (!fs::exists(config_path, ec)) return NotFound(config_path.string() + " does not exist (not an HF checkpoint?)");
  MC_ASSIGN_OR_RETURN(std::string text, ReadFileToString(config_path, 16ull << 20));
  c.raw_config_ = json::parse(text, nullptr, false);
  if (c.raw_config_.is_discarded()) return InvalidArgument(config_path.string() + ": invalid JSON");
  MC_ASSIGN_OR_RETURN(c.config_, LlamaConfig::FromJson(c.raw_config_, config_path.string()));

  std::map<std::string, std::string> weight_map;  // tensor -> shard file, for sharded checkpoints
  std::vector<std::string> shard_names;
  if (fs::exists(dir / kHfSingleFile, ec)) {
    shard_names.push_back(kHfSingleFile);
  } else if (fs::exists(dir / kHfIndexFile, ec)) {
    c.sharded_ = true;
    const fs::path index_path = dir / kHfIndexFile;
    const std::string source = index_path.string();
    MC_ASSIGN_OR_RETURN(std::string itext, ReadFileToString(index_path, 64ull << 20));
    json index = json::parse(itext, nullptr, false);
    if (index.is_discarded() || !index.is_object()) return InvalidArgument(source + ": invalid JSON");
    auto wm = index.find("weight_map");
    if (wm == index.end() || !wm->is_object()) return InvalidArgument(source + ": missing 'weight_map' object");
    std::set<std::string> names;
    for (const auto& [tensor, shard] : wm->items()) {
      if (!shard.is_string()) return InvalidArgument(source + ": weight_map['" + tensor + "'] is not a file name");
      const std::string s = shard.get<std::string>();
      MC_RETURN_IF_ERROR(ValidShardName(s, source));
      weight_map[tensor] = s;
      if (names.insert(s).second) shard_names.push_back(s);
    }
    if (shard_names.empty()) return InvalidArgument(source + ": weight_map is empty");
  } else {
    return NotFound(dir.string() + " has neither " + kHfSingleFile + " nor " + kHfIndexFile);
  }

  std::map<std::string, size_t> shard_index;
  for (const auto& name : shard_names) {
    MC_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open(dir / name));
    shard_index[name] = c.files_.size();
    c.files_.push_back(std::make_unique<SafetensorsFile>(std::move(f)));
  }
  for (const auto& f : c.files_) {
    for (const auto& t : f->header().tensors) {
      if (c.sharded_) {
        auto it = weight_map.find(t.name);
        if (it == weight_map.end()) continue;         // not in the index: HF loaders ignore it too
        if (dir / it->second != f->path()) continue;  // the index says it lives elsewhere
      }
      auto [pos, inserted] = c.tensors_.emplace(t.name, Entry{f.get(), &t});
      if (!inserted) {
        return InvalidArgument(dir.string() + ": tensor '" + t.name + "' appears in both " +
                               pos->second.file->path().filename().string() + " and " + f->path().filename().string());
      }
    }
  }
  for (const auto& [tensor, shard] : weight_map) {
    if (!c.tensors_.count(tensor)) {
      return InvalidArgument((dir / kHfIndexFile).string() + ": tensor '" + tensor + "' is mapped to " + shard +
                             ", which does not contain it");
    }
  }
  return c;
}

const HfCheckpoint::Entry* HfCheckpoint::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

uint64_t HfCheckpoint::TensorBytes() const {
  uint64_t n = 0;
  for (const auto& [_, e] : tensors_) n += e.tensor->nbytes();
  return n;
}

Result<DType> HfCheckpoint::CheckAgainstConfig(std::vector<std::string>* unexpected) const {
  std::optional<DType> dtype;
  std::set<std::string> expected;
  for (const auto& spec : config_.ExpectedTensors()) {
    expected.insert(spec.name);
    const Entry* e = Find(spec.name);
    const std::string where = spec.role == TensorRole::kLayer ? " of layer " + std::to_string(spec.layer) : "";
    if (e == nullptr) {
      return InvalidArgument(dir_.string() + ": missing tensor '" + spec.name + "'" + where);
    }
    if (e->tensor->shape != spec.shape) {
      return InvalidArgument(e->file->path().string() + ": tensor '" + spec.name + "' has shape " +
                             ShapeString(e->tensor->shape) + ", config.json implies " + ShapeString(spec.shape));
    }
    const DType t = e->tensor->dtype;
    if (t != DType::kBF16 && t != DType::kF16 && t != DType::kF32) {
      return InvalidArgument(e->file->path().string() + ": tensor '" + spec.name + "' has dtype " +
                             std::string(DTypeSafetensorsName(t)) + " (supported: BF16, F16, F32)");
    }
    if (dtype && *dtype != t) {
      return InvalidArgument(e->file->path().string() + ": tensor '" + spec.name + "' is " +
                             std::string(DTypeSafetensorsName(t)) + " but earlier tensors are " +
                             std::string(DTypeSafetensorsName(*dtype)) + " (mixed dtypes are not supported)");
    }
    dtype = t;
  }
  if (unexpected) {
    for (const auto& [name, _] : tensors_) {
      if (!expected.count(name) && !IsIgnorableTensor(name)) unexpected->push_back(name);
    }
  }
  return *dtype;
}

}  // namespace modelcast::model
