#include "modelcast/model/manifest.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

#include "modelcast/common/checksum.h"
#include "modelcast/common/file_util.h"

namespace modelcast::model {
namespace {

using nlohmann::json;

// Reads manifest JSON with errors that name the field's JSON path.
class Reader {
 public:
  Reader(const json& j, std::string path, const std::string& source) : j_(j), path_(std::move(path)), source_(source) {}

  Status Error(const std::string& what) const {
    return InvalidArgument(source_ + ": " + (path_.empty() ? "" : path_ + ": ") + what);
  }
  Result<Reader> Field(const char* key) const {
    if (!j_.is_object()) return Error("expected an object");
    auto it = j_.find(key);
    if (it == j_.end()) return Error(std::string("missing field '") + key + "'");
    return Reader(*it, path_.empty() ? key : path_ + "." + key, source_);
  }
  Result<uint64_t> U64(const char* key) const {
    MC_ASSIGN_OR_RETURN(Reader f, Field(key));
    if (!f.j_.is_number_unsigned()) return f.Error("expected a non-negative integer, got " + f.j_.dump());
    return f.j_.get<uint64_t>();
  }
  Result<int64_t> I64(const char* key) const {
    MC_ASSIGN_OR_RETURN(Reader f, Field(key));
    if (!f.j_.is_number_integer()) return f.Error("expected an integer, got " + f.j_.dump());
    return f.j_.get<int64_t>();
  }
  Result<bool> Bool(const char* key) const {
    MC_ASSIGN_OR_RETURN(Reader f, Field(key));
    if (!f.j_.is_boolean()) return f.Error("expected true or false");
    return f.j_.get<bool>();
  }
  Result<std::string> String(const char* key) const {
    MC_ASSIGN_OR_RETURN(Reader f, Field(key));
    if (!f.j_.is_string()) return f.Error("expected a string");
    return f.j_.get<std::string>();
  }
  Result<std::vector<Reader>> Array(const char* key, size_t max_size) const {
    MC_ASSIGN_OR_RETURN(Reader f, Field(key));
    if (!f.j_.is_array()) return f.Error("expected an array");
    if (f.j_.size() > max_size)
      return f.Error("has " + std::to_string(f.j_.size()) + " entries, more than the limit of " +
                     std::to_string(max_size));
    std::vector<Reader> out;
    out.reserve(f.j_.size());
    for (size_t i = 0; i < f.j_.size(); ++i)
      out.emplace_back(f.j_[i], f.path_ + "[" + std::to_string(i) + "]", source_);
    return out;
  }
  const json& raw() const { return j_; }

 private:
  const json& j_;
  std::string path_;
  const std::string& source_;
};

Result<uint32_t> U32(const Reader& r, const char* key) {
  MC_ASSIGN_OR_RETURN(uint64_t v, r.U64(key));
  if (v > UINT32_MAX) return r.Error(std::string(key) + " " + std::to_string(v) + " is out of range");
  return static_cast<uint32_t>(v);
}

bool ValidFileName(const std::string& f) {
  return !f.empty() && f.size() < 256 && f.find('/') == std::string::npos && f[0] != '.' && f != kManifestFile &&
         f != "config.json";
}

std::string BlockFileName(uint32_t index) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "block-%04u.bin", index);
  return buf;
}

}  // namespace

uint64_t Manifest::TotalBytes() const {
  uint64_t n = 0;
  for (const auto& b : blocks) n += b.bytes;
  return n;
}

const TensorEntry* Manifest::FindTensor(const std::string& name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const BlockEntry* Manifest::BlockForLayer(int64_t layer) const {
  for (const auto& b : blocks) {
    if (layer >= b.first_layer && layer < b.end_layer) return &b;
  }
  return nullptr;
}

Result<Manifest> Manifest::Parse(std::string_view text, const std::string& source) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument(source + ": not valid JSON");
  Reader r(j, "", source);
  if (!j.is_object()) return r.Error("expected a JSON object");
  MC_ASSIGN_OR_RETURN(std::string format, r.String("format"));
  if (format != kPackageFormat) return r.Error("format is '" + format + "', not '" + kPackageFormat + "'");
  MC_ASSIGN_OR_RETURN(int64_t version, r.I64("format_version"));
  if (version > kPackageFormatVersion) {
    return Unimplemented(source + ": format_version " + std::to_string(version) +
                         " was written by a newer modelcast (this one reads version " +
                         std::to_string(kPackageFormatVersion) + ")");
  }
  if (version < 1) return r.Error("format_version " + std::to_string(version) + " is invalid");

  Manifest m;
  MC_ASSIGN_OR_RETURN(m.name, r.String("name"));
  MC_ASSIGN_OR_RETURN(std::string dtype, r.String("dtype"));
  auto d = ParseModelDType(dtype);
  if (!d.ok()) return r.Error("dtype: " + d.status().message());
  m.dtype = *d;
  MC_ASSIGN_OR_RETURN(Reader cfg, r.Field("config"));
  m.hf_config = cfg.raw();
  MC_ASSIGN_OR_RETURN(m.config, LlamaConfig::FromJson(m.hf_config, source + ": config"));
  MC_ASSIGN_OR_RETURN(m.slice_bytes, r.U64("slice_bytes"));
  MC_ASSIGN_OR_RETURN(uint64_t tensor_alignment, r.U64("tensor_alignment"));
  MC_ASSIGN_OR_RETURN(uint64_t file_alignment, r.U64("file_alignment"));
  if (tensor_alignment != kTensorAlignment || file_alignment != kFileAlignment) {
    return r.Error("tensor_alignment/file_alignment " + std::to_string(tensor_alignment) + "/" +
                   std::to_string(file_alignment) + " differ from this format's " + std::to_string(kTensorAlignment) +
                   "/" + std::to_string(kFileAlignment));
  }

  MC_ASSIGN_OR_RETURN(auto blocks, r.Array("blocks", 1u << 16));
  for (const auto& b : blocks) {
    BlockEntry e;
    MC_ASSIGN_OR_RETURN(e.index, U32(b, "index"));
    MC_ASSIGN_OR_RETURN(e.file, b.String("file"));
    MC_ASSIGN_OR_RETURN(Reader layers, b.Field("layers"));
    if (!layers.raw().is_array() || layers.raw().size() != 2 || !layers.raw()[0].is_number_integer() ||
        !layers.raw()[1].is_number_integer()) {
      return layers.Error("expected [first_layer, end_layer]");
    }
    e.first_layer = layers.raw()[0].get<int64_t>();
    e.end_layer = layers.raw()[1].get<int64_t>();
    MC_ASSIGN_OR_RETURN(e.embeddings, b.Bool("embeddings"));
    MC_ASSIGN_OR_RETURN(e.head, b.Bool("head"));
    MC_ASSIGN_OR_RETURN(e.bytes, b.U64("bytes"));
    MC_ASSIGN_OR_RETURN(e.file_bytes, b.U64("file_bytes"));
    MC_ASSIGN_OR_RETURN(e.first_slice, U32(b, "first_slice"));
    MC_ASSIGN_OR_RETURN(e.num_slices, U32(b, "num_slices"));
    MC_ASSIGN_OR_RETURN(e.slice_bytes, b.U64("slice_bytes"));
    m.blocks.push_back(std::move(e));
  }
  MC_ASSIGN_OR_RETURN(auto slices, r.Array("slices", 1u << 24));
  for (const auto& s : slices) {
    SliceEntry e;
    MC_ASSIGN_OR_RETURN(e.index, U32(s, "index"));
    MC_ASSIGN_OR_RETURN(e.block, U32(s, "block"));
    MC_ASSIGN_OR_RETURN(e.offset, s.U64("offset"));
    MC_ASSIGN_OR_RETURN(e.length, s.U64("length"));
    MC_ASSIGN_OR_RETURN(std::string hex, s.String("xxh3"));
    auto c = ChecksumFromHex(hex);
    if (!c.ok()) return s.Error(c.status().message());
    e.xxh3 = *c;
    m.slices.push_back(e);
  }
  MC_ASSIGN_OR_RETURN(auto tensors, r.Array("tensors", 1u << 22));
  for (const auto& t : tensors) {
    TensorEntry e;
    MC_ASSIGN_OR_RETURN(e.name, t.String("name"));
    MC_ASSIGN_OR_RETURN(e.block, U32(t, "block"));
    MC_ASSIGN_OR_RETURN(e.offset, t.U64("offset"));
    MC_ASSIGN_OR_RETURN(std::string td, t.String("dtype"));
    auto tdt = ParseModelDType(td);
    if (!tdt.ok()) return t.Error(tdt.status().message());
    e.dtype = *tdt;
    MC_ASSIGN_OR_RETURN(Reader shape, t.Field("shape"));
    if (!shape.raw().is_array() || shape.raw().size() > 8)
      return shape.Error("expected an array of at most 8 dimensions");
    uint64_t elements = 1;
    for (const auto& dim : shape.raw()) {
      if (!dim.is_number_unsigned() || dim.get<uint64_t>() > (1ull << 40))
        return shape.Error("bad dimension " + dim.dump());
      e.shape.push_back(dim.get<int64_t>());
      if (__builtin_mul_overflow(elements, dim.get<uint64_t>(), &elements)) return shape.Error("shape overflows");
    }
    if (__builtin_mul_overflow(elements, DTypeSize(e.dtype), &e.nbytes)) return shape.Error("shape overflows");
    m.tensors.push_back(std::move(e));
  }
  if (j.contains("skipped_tensors")) {
    MC_ASSIGN_OR_RETURN(auto skipped, r.Array("skipped_tensors", 1u << 20));
    for (const auto& s : skipped) {
      if (!s.raw().is_string()) return s.Error("expected a string");
      m.skipped_tensors.push_back(s.raw().get<std::string>());
    }
  }
  if (j.contains("text_files")) {
    MC_ASSIGN_OR_RETURN(auto files, r.Array("text_files", 16));
    for (const auto& f : files) {
      TextFileEntry e;
      MC_ASSIGN_OR_RETURN(e.name, f.String("name"));
      if (std::none_of(std::begin(kTextFiles), std::end(kTextFiles), [&](const char* n) { return e.name == n; })) {
        return f.Error("name '" + e.name + "' is not one of the tokenizer's files a package carries");
      }
      MC_ASSIGN_OR_RETURN(e.bytes, f.U64("bytes"));
      MC_ASSIGN_OR_RETURN(std::string hex, f.String("xxh3"));
      auto c = ChecksumFromHex(hex);
      if (!c.ok()) return f.Error("xxh3: " + c.status().message());
      e.xxh3 = *c;
      m.text_files.push_back(std::move(e));
    }
  }
  MC_ASSIGN_OR_RETURN(uint64_t total, r.U64("total_bytes"));
  MC_RETURN_IF_ERROR(m.Validate(source));
  if (total != m.TotalBytes()) {
    return r.Error("total_bytes " + std::to_string(total) + " is not the blocks' sum " +
                   std::to_string(m.TotalBytes()));
  }
  return m;
}

Status Manifest::Validate(const std::string& source) const {
  auto bad = [&](const std::string& what) { return InvalidArgument(source + ": " + what); };
  if (name.empty()) return bad("name is empty");
  if (slice_bytes == 0 || slice_bytes % kFileAlignment != 0 || slice_bytes > kMaxSliceBytes) {
    return bad("slice_bytes " + std::to_string(slice_bytes) + " must be a positive multiple of " +
               std::to_string(kFileAlignment) + " up to " + std::to_string(kMaxSliceBytes));
  }
  const int64_t layers = config.num_hidden_layers;
  if (blocks.empty()) return bad("no blocks");
  if (static_cast<int64_t>(blocks.size()) > layers) {
    return bad(std::to_string(blocks.size()) + " blocks for " + std::to_string(layers) + " layers");
  }
  std::set<std::string> files;
  int64_t next_layer = 0;
  uint32_t next_slice = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const BlockEntry& b = blocks[i];
    const std::string where = "blocks[" + std::to_string(i) + "]: ";
    if (b.index != i) return bad(where + "index is " + std::to_string(b.index));
    if (!ValidFileName(b.file)) return bad(where + "file '" + b.file + "' is not a plain file name");
    if (!files.insert(b.file).second) return bad(where + "file '" + b.file + "' is used by two blocks");
    if (b.first_layer != next_layer || b.end_layer <= b.first_layer || b.end_layer > layers) {
      return bad(where + "layers [" + std::to_string(b.first_layer) + ", " + std::to_string(b.end_layer) +
                 ") do not continue from layer " + std::to_string(next_layer) + " within " + std::to_string(layers));
    }
    next_layer = b.end_layer;
    if (b.embeddings != (i == 0)) return bad(where + "only block 0 holds the embeddings");
    if (b.head != (i + 1 == blocks.size())) return bad(where + "only the last block holds the head");
    if (b.bytes == 0 || b.bytes > (1ull << 44))
      return bad(where + "bytes " + std::to_string(b.bytes) + " out of range");
    if (b.file_bytes != AlignUp(b.bytes, kFileAlignment)) {
      return bad(where + "file_bytes " + std::to_string(b.file_bytes) + " is not bytes rounded up to " +
                 std::to_string(kFileAlignment));
    }
    const uint64_t want_stride = BlockSliceBytes(b.bytes, slice_bytes);
    if (b.slice_bytes != want_stride) {
      return bad(where + "slice_bytes " + std::to_string(b.slice_bytes) + " should be " + std::to_string(want_stride) +
                 " (the equal cut of " + std::to_string(b.bytes) + " bytes under " + std::to_string(slice_bytes) + ")");
    }
    const uint64_t want_slices = (b.bytes + want_stride - 1) / want_stride;
    if (b.first_slice != next_slice || b.num_slices != want_slices) {
      return bad(where + "slices [" + std::to_string(b.first_slice) + ", +" + std::to_string(b.num_slices) +
                 ") should be [" + std::to_string(next_slice) + ", +" + std::to_string(want_slices) + ")");
    }
    next_slice += b.num_slices;
  }
  if (next_layer != layers)
    return bad("blocks cover layers up to " + std::to_string(next_layer) + " of " + std::to_string(layers));
  if (slices.size() != next_slice) {
    return bad(std::to_string(slices.size()) + " slices listed, blocks account for " + std::to_string(next_slice));
  }
  for (const BlockEntry& b : blocks) {
    for (uint32_t k = 0; k < b.num_slices; ++k) {
      const SliceEntry& s = slices[b.first_slice + k];
      const uint64_t off = static_cast<uint64_t>(k) * b.slice_bytes;
      const uint64_t len = std::min(b.slice_bytes, b.bytes - off);
      if (s.index != b.first_slice + k || s.block != b.index || s.offset != off || s.length != len) {
        return bad("slices[" + std::to_string(b.first_slice + k) + "]: expected index " +
                   std::to_string(b.first_slice + k) + ", block " + std::to_string(b.index) + ", offset " +
                   std::to_string(off) + ", length " + std::to_string(len));
      }
    }
  }

  std::map<std::string, const TensorEntry*> by_name;
  std::vector<std::vector<const TensorEntry*>> per_block(blocks.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorEntry& t = tensors[i];
    const std::string where = "tensors[" + std::to_string(i) + "] '" + t.name + "': ";
    if (t.name.empty()) return bad("tensors[" + std::to_string(i) + "]: empty name");
    if (!by_name.emplace(t.name, &t).second) return bad(where + "listed twice");
    if (t.block >= blocks.size()) return bad(where + "block " + std::to_string(t.block) + " does not exist");
    if (t.dtype != dtype) return bad(where + "dtype differs from the package's " + std::string(DTypeShortName(dtype)));
    if (t.offset % kTensorAlignment != 0) return bad(where + "offset " + std::to_string(t.offset) + " is not aligned");
    if (t.offset > blocks[t.block].bytes || t.nbytes > blocks[t.block].bytes - t.offset) {
      return bad(where + "[" + std::to_string(t.offset) + ", +" + std::to_string(t.nbytes) + ") runs past block " +
                 std::to_string(t.block) + "'s " + std::to_string(blocks[t.block].bytes) + " bytes");
    }
    per_block[t.block].push_back(&t);
  }
  for (auto& list : per_block) {
    std::sort(list.begin(), list.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
    for (size_t k = 1; k < list.size(); ++k) {
      if (list[k - 1]->offset + list[k - 1]->nbytes > list[k]->offset) {
        return bad("tensors '" + list[k - 1]->name + "' and '" + list[k]->name + "' overlap");
      }
    }
  }
  const auto expected = config.ExpectedTensors();
  if (expected.size() != tensors.size()) {
    return bad(std::to_string(tensors.size()) + " tensors listed, the config implies " +
               std::to_string(expected.size()));
  }
  for (const auto& spec : expected) {
    auto it = by_name.find(spec.name);
    if (it == by_name.end()) return bad("missing tensor '" + spec.name + "'");
    const TensorEntry& t = *it->second;
    if (t.shape != spec.shape) return bad("tensor '" + spec.name + "' has the wrong shape for the config");
    uint32_t want_block = 0;
    if (spec.role == TensorRole::kFinal) want_block = static_cast<uint32_t>(blocks.size() - 1);
    if (spec.role == TensorRole::kLayer) want_block = BlockForLayer(spec.layer)->index;
    if (t.block != want_block) {
      return bad("tensor '" + spec.name + "' is in block " + std::to_string(t.block) + ", belongs in block " +
                 std::to_string(want_block));
    }
  }
  return Status::Ok();
}

std::string Manifest::Serialize() const {
  json j;
  j["format"] = kPackageFormat;
  j["format_version"] = kPackageFormatVersion;
  j["name"] = name;
  j["dtype"] = DTypeShortName(dtype);
  j["config"] = hf_config;
  j["slice_bytes"] = slice_bytes;
  j["tensor_alignment"] = kTensorAlignment;
  j["file_alignment"] = kFileAlignment;
  j["total_bytes"] = TotalBytes();
  json jb = json::array();
  for (const auto& b : blocks) {
    jb.push_back({{"index", b.index},
                  {"file", b.file},
                  {"layers", {b.first_layer, b.end_layer}},
                  {"embeddings", b.embeddings},
                  {"head", b.head},
                  {"bytes", b.bytes},
                  {"file_bytes", b.file_bytes},
                  {"first_slice", b.first_slice},
                  {"num_slices", b.num_slices},
                  {"slice_bytes", b.slice_bytes}});
  }
  j["blocks"] = std::move(jb);
  json js = json::array();
  for (const auto& s : slices) {
    js.push_back({{"index", s.index},
                  {"block", s.block},
                  {"offset", s.offset},
                  {"length", s.length},
                  {"xxh3", ChecksumToHex(s.xxh3)}});
  }
  j["slices"] = std::move(js);
  json jt = json::array();
  for (const auto& t : tensors) {
    jt.push_back({{"name", t.name},
                  {"block", t.block},
                  {"offset", t.offset},
                  {"dtype", DTypeShortName(t.dtype)},
                  {"shape", t.shape}});
  }
  j["tensors"] = std::move(jt);
  if (!skipped_tensors.empty()) j["skipped_tensors"] = skipped_tensors;
  if (!text_files.empty()) {
    json jf = json::array();
    for (const auto& f : text_files) jf.push_back({{"name", f.name}, {"bytes", f.bytes}, {"xxh3", ChecksumToHex(f.xxh3)}});
    j["text_files"] = std::move(jf);
  }
  return j.dump(1) + "\n";
}

uint64_t BlockSliceBytes(uint64_t bytes, uint64_t max_slice_bytes) {
  if (bytes == 0 || max_slice_bytes == 0) return max_slice_bytes;
  const uint64_t count = (bytes + max_slice_bytes - 1) / max_slice_bytes;
  return std::min(max_slice_bytes, AlignUp((bytes + count - 1) / count, kFileAlignment));
}

Result<std::vector<std::pair<int64_t, int64_t>>> PartitionLayers(int64_t num_layers, int64_t num_blocks) {
  if (num_blocks < 1) return InvalidArgument("--blocks must be at least 1, got " + std::to_string(num_blocks));
  if (num_blocks > num_layers) {
    return InvalidArgument("--blocks " + std::to_string(num_blocks) + " is more than the model's " +
                           std::to_string(num_layers) + " layers (a block holds whole layers)");
  }
  std::vector<std::pair<int64_t, int64_t>> out;
  const int64_t base = num_layers / num_blocks, extra = num_layers % num_blocks;
  int64_t first = 0;
  for (int64_t b = 0; b < num_blocks; ++b) {
    const int64_t n = base + (b < extra ? 1 : 0);
    out.emplace_back(first, first + n);
    first += n;
  }
  return out;
}

Result<Manifest> PlanPackageLayout(const LlamaConfig& config, const json& hf_config, DType dtype, std::string name,
                                   int64_t num_blocks, uint64_t slice_bytes) {
  if (slice_bytes == 0 || slice_bytes % kFileAlignment != 0 || slice_bytes > kMaxSliceBytes) {
    return InvalidArgument("slice size " + std::to_string(slice_bytes) +
                           " bytes must be a positive multiple of 4 KiB up to 1 GiB");
  }
  MC_ASSIGN_OR_RETURN(auto ranges, PartitionLayers(config.num_hidden_layers, num_blocks));
  Manifest m;
  m.name = std::move(name);
  m.dtype = dtype;
  m.config = config;
  m.hf_config = hf_config;
  m.slice_bytes = slice_bytes;
  for (size_t i = 0; i < ranges.size(); ++i) {
    BlockEntry b;
    b.index = static_cast<uint32_t>(i);
    b.file = BlockFileName(b.index);
    b.first_layer = ranges[i].first;
    b.end_layer = ranges[i].second;
    b.embeddings = i == 0;
    b.head = i + 1 == ranges.size();
    m.blocks.push_back(b);
  }
  std::vector<uint64_t> cursor(m.blocks.size(), 0);
  for (const auto& spec : config.ExpectedTensors()) {
    uint32_t block = 0;
    if (spec.role == TensorRole::kFinal) block = static_cast<uint32_t>(m.blocks.size() - 1);
    if (spec.role == TensorRole::kLayer) block = m.BlockForLayer(spec.layer)->index;
    TensorEntry t;
    t.name = spec.name;
    t.block = block;
    t.dtype = dtype;
    t.shape = spec.shape;
    t.nbytes = spec.NumElements() * DTypeSize(dtype);
    t.offset = AlignUp(cursor[block], kTensorAlignment);
    cursor[block] = t.offset + t.nbytes;
    m.tensors.push_back(std::move(t));
  }
  uint32_t next_slice = 0;
  for (auto& b : m.blocks) {
    b.bytes = cursor[b.index];
    b.file_bytes = AlignUp(b.bytes, kFileAlignment);
    b.first_slice = next_slice;
    b.slice_bytes = BlockSliceBytes(b.bytes, slice_bytes);
    b.num_slices = static_cast<uint32_t>((b.bytes + b.slice_bytes - 1) / b.slice_bytes);
    for (uint32_t k = 0; k < b.num_slices; ++k) {
      SliceEntry s;
      s.index = next_slice + k;
      s.block = b.index;
      s.offset = static_cast<uint64_t>(k) * b.slice_bytes;
      s.length = std::min(b.slice_bytes, b.bytes - s.offset);
      m.slices.push_back(s);
    }
    next_slice += b.num_slices;
  }
  MC_RETURN_IF_ERROR(m.Validate("planned layout of " + m.name));
  return m;
}

}  // namespace modelcast::model
