#include "modelcast/model/package.h"

#include <algorithm>

#include "modelcast/common/checksum.h"
#include "modelcast/common/file_util.h"

namespace modelcast::model {
namespace fs = std::filesystem;

Result<Package> Package::Open(const fs::path& dir) {
  Package p;
  p.dir_ = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return NotFound(dir.string() + " is not a directory");
  const fs::path mpath = dir / kManifestFile;
  if (!fs::exists(mpath, ec)) return NotFound(mpath.string() + " does not exist (not a prepared package?)");
  MC_ASSIGN_OR_RETURN(std::string text, ReadFileToString(mpath, 512ull << 20));
  MC_ASSIGN_OR_RETURN(p.manifest_, Manifest::Parse(text, mpath.string()));
  for (const auto& b : p.manifest_.blocks) {
    const fs::path path = dir / b.file;
    const auto size = fs::file_size(path, ec);
    if (ec)
      return NotFound(path.string() + ": block " + std::to_string(b.index) + "'s file is missing (" + ec.message() +
                      ")");
    if (size != b.file_bytes) {
      return Corruption(path.string() + ": block " + std::to_string(b.index) + "'s file is " + std::to_string(size) +
                        " bytes, the manifest says " + std::to_string(b.file_bytes));
    }
  }
  return p;
}

fs::path Package::BlockPath(uint32_t block) const { return dir_ / manifest_.blocks.at(block).file; }

std::string ChecksumMismatch(uint64_t expected, uint64_t got) {
  return "checksum mismatch (expected " + ChecksumToHex(expected) + ", got " + ChecksumToHex(got) + ")";
}

std::string DescribeSlice(const Manifest& m, uint32_t slice, const std::string& path, const std::string& problem) {
  const SliceEntry& s = m.slices.at(slice);
  return "model '" + m.name + "': block " + std::to_string(s.block) + " slice " +
         std::to_string(slice - m.blocks.at(s.block).first_slice) + " (slice " + std::to_string(slice) +
         " of the model) in " + path + " at offset " + std::to_string(s.offset) + ": " + problem;
}

std::string Package::Describe(const BadSlice& bad) const {
  return "model '" + manifest_.name + "': block " + std::to_string(bad.block) + " slice " +
         std::to_string(bad.slice_in_block) + " (slice " + std::to_string(bad.slice) + " of the model) in " + bad.path +
         " at offset " + std::to_string(bad.offset) + ": " + bad.problem;
}

Status Package::CheckSlice(uint32_t slice, std::span<const uint8_t> bytes) const {
  if (slice >= manifest_.slices.size()) {
    return OutOfRange("model '" + manifest_.name + "' has no slice " + std::to_string(slice));
  }
  const SliceEntry& s = manifest_.slices[slice];
  BadSlice bad{slice,    s.block, slice - manifest_.blocks[s.block].first_slice, BlockPath(s.block).string(),
               s.offset, ""};
  if (bytes.size() != s.length) {
    bad.problem = "length " + std::to_string(bytes.size()) + " differs from the manifest's " + std::to_string(s.length);
    return Corruption(Describe(bad));
  }
  const uint64_t got = Xxh3(bytes.data(), bytes.size());
  if (got != s.xxh3) {
    bad.problem = ChecksumMismatch(s.xxh3, got);
    return Corruption(Describe(bad));
  }
  return Status::Ok();
}

Status Package::ReadSlice(uint32_t slice, std::span<uint8_t> dst) const {
  if (slice >= manifest_.slices.size()) {
    return OutOfRange("model '" + manifest_.name + "' has no slice " + std::to_string(slice));
  }
  const SliceEntry& s = manifest_.slices[slice];
  if (dst.size() != s.length) {
    return InvalidArgument("slice " + std::to_string(slice) + " is " + std::to_string(s.length) + " bytes, buffer is " +
                           std::to_string(dst.size()));
  }
  MC_ASSIGN_OR_RETURN(File f, File::OpenRead(BlockPath(s.block)));
  MC_RETURN_IF_ERROR(f.PReadFull(s.offset, dst));
  return CheckSlice(slice, dst);
}

Status Package::ReadTensor(const std::string& name, std::vector<uint8_t>* out) const {
  const TensorEntry* t = manifest_.FindTensor(name);
  if (t == nullptr) return NotFound("model '" + manifest_.name + "' has no tensor '" + name + "'");
  MC_ASSIGN_OR_RETURN(File f, File::OpenRead(BlockPath(t->block)));
  out->resize(t->nbytes);
  return f.PReadFull(t->offset, *out);
}

Result<VerifyReport> Package::Verify(const std::function<void(uint64_t)>& progress) const {
  VerifyReport report;
  AlignedBuffer buf(manifest_.slice_bytes);
  for (const auto& b : manifest_.blocks) {
    MC_ASSIGN_OR_RETURN(File f, File::OpenRead(BlockPath(b.index)));
    for (uint32_t k = 0; k < b.num_slices; ++k) {
      const uint32_t idx = b.first_slice + k;
      const SliceEntry& s = manifest_.slices[idx];
      std::span<uint8_t> dst(buf.data(), s.length);
      MC_RETURN_IF_ERROR(f.PReadFull(s.offset, dst));
      const uint64_t got = Xxh3(dst.data(), dst.size());
      if (got != s.xxh3) {
        report.bad.push_back({idx, b.index, k, BlockPath(b.index).string(), s.offset, ChecksumMismatch(s.xxh3, got)});
      }
      ++report.slices_checked;
      report.bytes_checked += s.length;
      if (progress) progress(s.length);
    }
    if (b.file_bytes > b.bytes) {  // the zero tail that aligns the file
      std::span<uint8_t> tail(buf.data(), b.file_bytes - b.bytes);
      MC_RETURN_IF_ERROR(f.PReadFull(b.bytes, tail));
      if (std::any_of(tail.begin(), tail.end(), [](uint8_t c) { return c != 0; })) {
        const uint32_t last = b.first_slice + b.num_slices - 1;
        report.bad.push_back({last, b.index, b.num_slices - 1, BlockPath(b.index).string(), b.bytes,
                              "non-zero bytes in the alignment padding after the last slice"});
      }
    }
  }
  std::stable_sort(report.bad.begin(), report.bad.end(),
                   [](const auto& a, const auto& c) { return a.slice < c.slice; });
  // The tokenizer's files.
  for (const auto& f : manifest_.text_files) {
    auto bytes = ReadTextFile(f);
    if (!bytes.ok()) report.bad_files.push_back(bytes.status().message());
    ++report.files_checked;
  }
  return report;
}

Result<std::string> Package::ReadTextFile(const TextFileEntry& f) const {
  const auto path = dir_ / f.name;
  auto bytes = ReadFileToString(path, 1ull << 30);
  if (!bytes.ok()) return Corruption(path.string() + ": " + bytes.status().message());
  if (bytes->size() != f.bytes) {
    return Corruption(path.string() + ": it has " + std::to_string(bytes->size()) + " bytes, the manifest says " +
                      std::to_string(f.bytes));
  }
  if (uint64_t got = Xxh3(bytes->data(), bytes->size()); got != f.xxh3) {
    return Corruption(path.string() + ": " + ChecksumMismatch(f.xxh3, got));
  }
  return bytes;
}

Result<std::map<std::string, std::string>> Package::ReadTextFiles() const {
  std::map<std::string, std::string> out;
  for (const auto& f : manifest_.text_files) {
    MC_ASSIGN_OR_RETURN(out[f.name], ReadTextFile(f));
  }
  return out;
}

}  // namespace modelcast::model
