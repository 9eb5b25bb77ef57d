#include "modelcast/model/safetensors.h"

#include <algorithm>
#include <set>

#include <nlohmann/json.hpp>

namespace modelcast::model {
namespace {

using nlohmann::json;

uint64_t LoadLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

Status Bad(const std::string& source, const std::string& what) {
  return InvalidArgument(source + ": invalid safetensors file: " + what);
}

// Parses the JSON header, rejecting duplicated top-level keys (nlohmann keeps the last one
// silently; two tensors with one name is a malformed file).
Status ParseJsonObject(std::string_view text, const std::string& source, json* out) {
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && duplicate.empty()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!seen.insert(k).second) duplicate = k;
    }
    return true;
  };
  *out = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/false);
  if (out->is_discarded()) return Bad(source, "header is not valid JSON");
  if (!duplicate.empty()) return Bad(source, "tensor '" + duplicate + "' appears twice in the header");
  if (!out->is_object()) return Bad(source, "header is not a JSON object");
  return Status::Ok();
}

Status ParseTensor(const std::string& name, const json& v, const std::string& source, SafetensorsTensor* t) {
  const std::string where = "tensor '" + name + "': ";
  if (!v.is_object()) return Bad(source, where + "entry is not an object");
  for (const auto& [k, _] : v.items()) {
    if (k != "dtype" && k != "shape" && k != "data_offsets") return Bad(source, where + "unknown field '" + k + "'");
  }
  auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) return Bad(source, where + "missing or non-string dtype");
  auto d = DTypeFromSafetensorsName(dt->get_ref<const std::string&>());
  if (!d) return Bad(source, where + "unknown dtype '" + dt->get<std::string>() + "'");
  t->dtype = *d;
  auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array()) return Bad(source, where + "missing or non-array shape");
  if (sh->size() > 16) return Bad(source, where + "shape has " + std::to_string(sh->size()) + " dimensions");
  uint64_t elements = 1;
  bool overflow = false;
  for (const auto& dim : *sh) {
    if (!dim.is_number_unsigned())
      return Bad(source, where + "shape dimension " + dim.dump() + " is not a non-negative integer");
    const uint64_t n = dim.get<uint64_t>();
    if (n > static_cast<uint64_t>(INT64_MAX)) return Bad(source, where + "shape dimension too large");
    t->shape.push_back(static_cast<int64_t>(n));
    overflow = overflow || __builtin_mul_overflow(elements, n, &elements);
  }
  uint64_t nbytes = 0;
  if (overflow || __builtin_mul_overflow(elements, DTypeSize(t->dtype), &nbytes)) {
    return Bad(source, where + "shape " + sh->dump() + " overflows a 64-bit byte count");
  }
  auto off = v.find("data_offsets");
  if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
      !(*off)[1].is_number_unsigned()) {
    return Bad(source, where + "data_offsets must be [begin, end] with non-negative integers");
  }
  t->begin = (*off)[0].get<uint64_t>();
  t->end = (*off)[1].get<uint64_t>();
  if (t->end < t->begin)
    return Bad(source,
               where + "data_offsets end " + std::to_string(t->end) + " is before begin " + std::to_string(t->begin));
  if (t->end - t->begin != nbytes) {
    return Bad(source, where + "shape " + sh->dump() + " x " + std::string(DTypeSafetensorsName(t->dtype)) + " is " +
                           std::to_string(nbytes) + " bytes but data_offsets span " +
                           std::to_string(t->end - t->begin));
  }
  return Status::Ok();
}

}  // namespace

const SafetensorsTensor* SafetensorsHeader::Find(const std::string& name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

Result<uint64_t> ParseSafetensorsHeaderLength(std::span<const uint8_t> prefix, uint64_t file_size,
                                              const std::string& source) {
  if (file_size < 8 || prefix.size() < 8) {
    return Bad(source, "file is " + std::to_string(file_size) + " bytes, shorter than the 8-byte header length");
  }
  const uint64_t n = LoadLe64(prefix.data());
  if (n > file_size - 8) {
    return Bad(source, "header length " + std::to_string(n) + " runs past the end of the " + std::to_string(file_size) +
                           "-byte file (truncated?)");
  }
  if (n > kMaxSafetensorsHeaderBytes) {
    return Bad(source, "header length " + std::to_string(n) + " exceeds the 100 MB limit");
  }
  if (n < 2) return Bad(source, "header length " + std::to_string(n) + " is too short for a JSON object");
  return n;
}

Result<SafetensorsHeader> ParseSafetensorsHeader(std::span<const uint8_t> bytes, uint64_t file_size,
                                                 const std::string& source) {
  MC_ASSIGN_OR_RETURN(uint64_t n, ParseSafetensorsHeaderLength(bytes, file_size, source));
  if (bytes.size() < 8 + n) return Internal(source + ": caller passed fewer header bytes than the header length");
  SafetensorsHeader h;
  h.header_bytes = n;
  h.data_offset = 8 + n;
  h.data_bytes = file_size - h.data_offset;
  const std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8), n);
  if (text.front() != '{') return Bad(source, "header does not start with '{'");
  json j;
  MC_RETURN_IF_ERROR(ParseJsonObject(text, source, &j));
  for (const auto& [name, v] : j.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) return Bad(source, "__metadata__ is not an object");
      for (const auto& [k, mv] : v.items()) {
        if (!mv.is_string()) return Bad(source, "__metadata__['" + k + "'] is not a string");
        h.metadata[k] = mv.get<std::string>();
      }
      continue;
    }
    if (name.empty()) return Bad(source, "a tensor has an empty name");
    SafetensorsTensor t;
    t.name = name;
    MC_RETURN_IF_ERROR(ParseTensor(name, v, source, &t));
    h.tensors.push_back(std::move(t));
  }
  std::sort(h.tensors.begin(), h.tensors.end(),
            [](const auto& a, const auto& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  // The tensors must tile [0, data_bytes) exactly: each starts where the previous ended.
  uint64_t cursor = 0;
  const SafetensorsTensor* prev = nullptr;
  for (const auto& t : h.tensors) {
    if (t.begin < cursor) {
      return Bad(source, "tensor '" + t.name + "' [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                             ") overlaps tensor '" + prev->name + "' [" + std::to_string(prev->begin) + ", " +
                             std::to_string(prev->end) + ")");
    }
    if (t.begin > cursor) {
      return Bad(source, "gap of " + std::to_string(t.begin - cursor) + " bytes before tensor '" + t.name +
                             "' at data offset " + std::to_string(cursor));
    }
    if (t.end > h.data_bytes) {
      return Bad(source, "tensor '" + t.name + "' ends at data offset " + std::to_string(t.end) +
                             ", past the end of the file's " + std::to_string(h.data_bytes) +
                             " data bytes (truncated?)");
    }
    cursor = t.end;
    prev = &t;
  }
  if (cursor != h.data_bytes) {
    return Bad(source, std::to_string(h.data_bytes - cursor) + " bytes after the last tensor belong to no tensor");
  }
  return h;
}

Result<SafetensorsFile> SafetensorsFile::Open(const std::filesystem::path& path) {
  SafetensorsFile f;
  f.path_ = path;
  MC_ASSIGN_OR_RETURN(f.file_, File::OpenRead(path));
  MC_ASSIGN_OR_RETURN(uint64_t size, f.file_.Size());
  const std::string source = path.string();
  uint8_t prefix[8] = {};
  if (size >= 8) MC_RETURN_IF_ERROR(f.file_.PReadFull(0, prefix));
  MC_ASSIGN_OR_RETURN(uint64_t n, ParseSafetensorsHeaderLength({prefix, size >= 8 ? 8u : 0u}, size, source));
  std::vector<uint8_t> buf(8 + n);
  MC_RETURN_IF_ERROR(f.file_.PReadFull(0, buf));
  MC_ASSIGN_OR_RETURN(f.header_, ParseSafetensorsHeader(buf, size, source));
  return f;
}

Status SafetensorsFile::Read(const SafetensorsTensor& t, uint64_t offset, std::span<uint8_t> dst) const {
  if (offset > t.nbytes() || dst.size() > t.nbytes() - offset) {
    return OutOfRange(path_.string() + ": read of " + std::to_string(dst.size()) + " bytes at offset " +
                      std::to_string(offset) + " of tensor '" + t.name + "' (" + std::to_string(t.nbytes()) +
                      " bytes)");
  }
  return file_.PReadFull(header_.data_offset + t.begin + offset, dst);
}

Status WriteSafetensors(const std::filesystem::path& path, const std::vector<SafetensorsWriteSpec>& tensors,
                        const std::map<std::string, std::string>& metadata, const TensorFiller& fill) {
  // nlohmann's default object is sorted by key; the order of entries in the header does not
  // matter, only data_offsets do, and those follow `tensors`' order.
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::vector<uint64_t> sizes;
  for (const auto& t : tensors) {
    uint64_t n = DTypeSize(t.dtype);
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    header[t.name] = {
        {"dtype", DTypeSafetensorsName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    sizes.push_back(n);
    offset += n;
  }
  std::string text = header.dump();
  text.resize(AlignUp(text.size(), 8), ' ');
  MC_ASSIGN_OR_RETURN(File f, File::Create(path));
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  MC_RETURN_IF_ERROR(f.PWriteFull(0, len));
  MC_RETURN_IF_ERROR(f.PWriteFull(8, {reinterpret_cast<const uint8_t*>(text.data()), text.size()}));
  uint64_t pos = 8 + text.size();
  std::vector<uint8_t> buf;
  for (size_t i = 0; i < tensors.size(); ++i) {
    buf.resize(sizes[i]);
    MC_RETURN_IF_ERROR(fill(tensors[i], buf));
    MC_RETURN_IF_ERROR(f.PWriteFull(pos, buf));
    pos += sizes[i];
  }
  return f.Close();
}

}  // namespace modelcast::model
