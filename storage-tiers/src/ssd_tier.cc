#include "ssd_tier.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <glog/logging.h>
#include <nlohmann/json.hpp>

#include "modelcast/common/checksum.h"
#include "modelcast/model/package.h"

namespace modelcast::tiers {
namespace fs = std::filesystem;

namespace {

bool IsLeftover(const std::string& name) {
  return name.find(".partial-") != std::string::npos || name.find(".tmp-") != std::string::npos;
}

Status CheckModelName(const std::string& name) {
  if (name.empty() || name[0] == '.' || name.find('/') != std::string::npos || name.size() > 200) {
    return InvalidArgument("model name '" + name + "' cannot name a directory in the SSD tier");
  }
  return Status::Ok();
}

struct FileId {
  uint64_t size = 0, mtime_ns = 0, ino = 0;
  bool operator==(const FileId&) const = default;
};

std::optional<FileId> Identify(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return FileId{static_cast<uint64_t>(st.st_size),
                static_cast<uint64_t>(st.st_mtim.tv_sec) * 1000000000ull + static_cast<uint64_t>(st.st_mtim.tv_nsec),
                static_cast<uint64_t>(st.st_ino)};
}

// Re-reads a block file and checks every slice; the error names model, block, slice and path.
Status VerifyBlock(const model::Manifest& m, uint32_t block, const fs::path& path) {
  MC_ASSIGN_OR_RETURN(File f, File::OpenRead(path));
  const auto& b = m.blocks[block];
  AlignedBuffer buf(AlignUp(std::max<uint64_t>(b.slice_bytes, 1), 4096));
  for (uint32_t s = b.first_slice; s < b.first_slice + b.num_slices; ++s) {
    const auto& slice = m.slices[s];
    MC_RETURN_IF_ERROR(f.PReadFull(slice.offset, buf.span().subspan(0, slice.length)));
    const uint64_t got = Xxh3(buf.data(), slice.length);
    if (got != slice.xxh3)
      return Corruption(model::DescribeSlice(m, s, path.string(), model::ChecksumMismatch(slice.xxh3, got)));
  }
  return Status::Ok();
}

// The fraction of the file's pages in the page cache (mincore over a mapping; no I/O).
double CachedFraction(const File& f, uint64_t size) {
  if (size == 0) return 0;
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, f.fd(), 0);
  if (p == MAP_FAILED) return 0;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((size + page - 1) / page);
  double fraction = 0;
  if (::mincore(p, size, vec.data()) == 0) {
    uint64_t in = 0;
    for (unsigned char v : vec) in += v & 1;
    fraction = static_cast<double>(in) / static_cast<double>(vec.size());
  }
  ::munmap(p, size);
  return fraction;
}

uint64_t ManifestId(const model::Manifest& m) {
  const std::string text = m.Serialize();
  return Xxh3(text.data(), text.size());
}

}  // namespace

Status WriteTrustFile(const fs::path& dir, const model::Manifest& manifest, const std::vector<bool>& blocks) {
  nlohmann::json j;
  j["manifest_xxh3"] = ChecksumToHex(ManifestId(manifest));
  nlohmann::json files = nlohmann::json::object();
  for (uint32_t b = 0; b < blocks.size(); ++b) {
    if (!blocks[b]) continue;
    const auto id = Identify(dir / manifest.blocks[b].file);
    if (!id) continue;
    files[manifest.blocks[b].file] = {id->size, id->mtime_ns, id->ino};
  }
  j["blocks"] = std::move(files);
  return WriteFileAtomic(dir / kTrustFile, j.dump(1));
}

Result<std::unique_ptr<SsdTier>> SsdTier::Open(const fs::path& root, uint64_t capacity, OpenReport* report) {
  if (capacity == 0) return InvalidArgument("ssd tier: capacity must be more than 0 bytes");
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return IOError("ssd tier: cannot create " + root.string() + ": " + ec.message());
  if (!fs::is_directory(root, ec)) return InvalidArgument("ssd tier: " + root.string() + " is not a directory");
  // Writable? A probe file, created and removed (as root, permission bits alone do not tell).
  const fs::path probe = root / (".write-probe.tmp-" + std::to_string(::getpid()));
  const int fd = ::open(probe.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
  if (fd < 0) return IOError("ssd tier: " + root.string() + " is not writable", errno);
  ::close(fd);
  ::unlink(probe.c_str());
  std::unique_ptr<SsdTier> tier(new SsdTier(root, capacity));
  OpenReport local;
  MC_RETURN_IF_ERROR(tier->Scan(report ? report : &local));
  if (tier->used() > capacity) {
    LOG(WARNING) << "ssd tier " << root << " holds " << tier->used() << " bytes, more than its capacity of " << capacity
                 << ": nothing more is written until models are removed";
  }
  return tier;
}

Status SsdTier::Scan(OpenReport* report) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root_, ec)) {
    const std::string name = entry.path().filename().string();
    if (IsLeftover(name)) {
      LOG(INFO) << "ssd tier: removing " << entry.path() << ", left over from an interrupted write";
      fs::remove_all(entry.path(), ec);
      report->leftovers_removed++;
      continue;
    }
    if (!entry.is_directory() || name[0] == '.') continue;
    const fs::path mpath = entry.path() / model::kManifestFile;
    if (!fs::exists(mpath)) continue;
    auto text = ReadFileToString(mpath, 512ull << 20);
    Result<model::Manifest> parsed =
        text.ok() ? model::Manifest::Parse(*text, mpath.string()) : Result<model::Manifest>(text.status());
    if (!parsed.ok()) {
      report->problems.push_back(parsed.status().message());
      LOG(WARNING) << "ssd tier: set aside " << entry.path() << ": " << parsed.status().message();
      continue;
    }
    if (parsed->name != name) {
      report->problems.push_back(entry.path().string() + ": manifest names model '" + parsed->name + "'");
      LOG(WARNING) << "ssd tier: set aside " << entry.path() << ": its manifest names model '" << parsed->name << "'";
      continue;
    }
    auto manifest = std::make_shared<const model::Manifest>(std::move(*parsed));
    // Leftover temporary files inside the package.
    for (const auto& f : fs::directory_iterator(entry.path(), ec)) {
      if (IsLeftover(f.path().filename().string())) {
        fs::remove_all(f.path(), ec);
        report->leftovers_removed++;
      }
    }
    std::map<std::string, FileId> trusted;
    if (auto t = ReadFileToString(entry.path() / kTrustFile, 64ull << 20); t.ok()) {
      auto j = nlohmann::json::parse(*t, nullptr, false);
      if (j.is_object() && j.value("manifest_xxh3", "") == ChecksumToHex(ManifestId(*manifest)) &&
          j.contains("blocks") && j["blocks"].is_object()) {
        for (auto& [file, v] : j["blocks"].items()) {
          if (v.is_array() && v.size() == 3)
            trusted[file] = {v[0].get<uint64_t>(), v[1].get<uint64_t>(), v[2].get<uint64_t>()};
        }
      }
    }
    Entry e;
    e.manifest = manifest;
    e.dir = entry.path();
    e.committed = true;
    e.blocks.assign(manifest->blocks.size(), false);
    bool verified_any = false;
    for (const auto& b : manifest->blocks) {
      const fs::path path = entry.path() / b.file;
      const auto id = Identify(path);
      if (!id) {
        report->problems.push_back(path.string() + ": missing");
        continue;
      }
      if (id->size != b.file_bytes) {
        report->problems.push_back(path.string() + ": " + std::to_string(id->size) + " bytes, the manifest says " +
                                   std::to_string(b.file_bytes));
        LOG(WARNING) << "ssd tier: block " << b.index << " of model '" << name << "' not used: " << path << " is "
                     << id->size << " bytes, the manifest says " << b.file_bytes;
        continue;
      }
      auto it = trusted.find(b.file);
      if (it == trusted.end() || !(it->second == *id)) {
        Status st = VerifyBlock(*manifest, b.index, path);
        report->blocks_verified++;
        verified_any = true;
        if (!st.ok()) {
          report->problems.push_back(st.message());
          LOG(WARNING) << "ssd tier: block " << b.index << " not used: " << st.message();
          continue;
        }
      }
      e.blocks[b.index] = true;
      e.bytes += b.file_bytes;
    }
    if (verified_any) {
      Status st = WriteTrustFile(entry.path(), *manifest, e.blocks);
      if (!st.ok()) LOG(WARNING) << "ssd tier: " << st.message();
    }
    report->models[name] = Found{manifest, e.blocks};
    entries_.emplace(name, std::move(e));
  }
  if (ec) return IOError("ssd tier: listing " + root_.string() + ": " + ec.message());
  return Status::Ok();
}

uint64_t SsdTier::used() const {
  std::lock_guard lock(mu_);
  uint64_t total = 0;
  for (const auto& [name, e] : entries_) total += e.bytes + e.old_bytes;
  return total;
}

uint64_t SsdTier::direct_refused() const {
  std::lock_guard lock(mu_);
  return direct_refused_;
}

Result<std::shared_ptr<BlockFiles>> SsdTier::OpenBlock(const std::string& model, uint32_t block) {
  fs::path path;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(model);
    if (it == entries_.end() || block >= it->second.blocks.size() || !it->second.blocks[block]) {
      return NotFound("ssd tier has no block " + std::to_string(block) + " of model '" + model + "'");
    }
    path = it->second.dir / it->second.manifest->blocks[block].file;
  }
  auto files = std::make_shared<BlockFiles>();
  files->path = path.string();
  auto direct = File::Open(path, O_RDONLY | O_DIRECT);
  if (direct.ok()) {
    files->direct = std::move(*direct);
  } else {
    std::lock_guard lock(mu_);
    if (direct_refused_++ == 0) {
      LOG(WARNING) << "ssd tier: O_DIRECT open of " << path << " refused (" << direct.status().message()
                   << "): reads go through the page cache (logged once)";
    }
  }
  MC_ASSIGN_OR_RETURN(files->buffered, File::OpenRead(path));
  MC_ASSIGN_OR_RETURN(uint64_t size, files->buffered.Size());
  files->cached = CachedFraction(files->buffered, size) >= 0.9;
  return files;
}

Status SsdTier::BeginWrite(std::shared_ptr<const model::Manifest> manifest) {
  MC_RETURN_IF_ERROR(CheckModelName(manifest->name));
  std::lock_guard lock(mu_);
  auto& e = entries_[manifest->name];
  if (e.staging) return Status::Ok();  // already being written
  if (e.committed && e.manifest && e.manifest->Serialize() == manifest->Serialize()) return Status::Ok();
  MC_ASSIGN_OR_RETURN(StagingDirectory staging, StagingDirectory::Create(root_ / manifest->name));
  e.old_bytes = e.committed ? e.bytes : 0;
  e.dir = staging.path();
  e.staging.emplace(std::move(staging));
  e.manifest = std::move(manifest);
  e.blocks.assign(e.manifest->blocks.size(), false);
  e.bytes = 0;
  e.committed = false;
  return Status::Ok();
}

Status SsdTier::WriteBlock(const std::string& model, uint32_t block, std::span<const uint8_t> data) {
  fs::path path;
  uint64_t file_bytes = 0;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(model);
    if (it == entries_.end() || !it->second.staging) {
      return FailedPrecondition("ssd tier: model '" + model + "' is not being written");
    }
    const auto& b = it->second.manifest->blocks.at(block);
    if (data.size() != b.file_bytes) {
      return InvalidArgument("ssd tier: block " + std::to_string(block) + " of model '" + model + "' is " +
                             std::to_string(b.file_bytes) + " bytes, got " + std::to_string(data.size()));
    }
    if (it->second.blocks[block]) return Status::Ok();
    uint64_t total = 0;
    for (const auto& [name, e] : entries_) total += e.bytes + e.old_bytes;
    if (total + b.file_bytes > capacity_) {
      return ResourceExhausted("ssd tier " + root_.string() + ": writing block " + std::to_string(block) +
                               " of model '" + model + "' (" + std::to_string(b.file_bytes) + " bytes) would exceed " +
                               "its capacity of " + std::to_string(capacity_) + " bytes (" + std::to_string(total) +
                               " in use)");
    }
    path = it->second.dir / b.file;
    file_bytes = b.file_bytes;
    it->second.bytes += file_bytes;  // reserved while writing
  }
  Status st = [&]() -> Status {
    MC_ASSIGN_OR_RETURN(File f, File::Create(path));
    MC_RETURN_IF_ERROR(f.PWriteFull(0, data));
    MC_RETURN_IF_ERROR(f.Sync());
    return f.Close();
  }();
  std::lock_guard lock(mu_);
  auto it = entries_.find(model);
  if (!st.ok()) {
    std::error_code ec;
    fs::remove(path, ec);
    if (it != entries_.end()) it->second.bytes -= file_bytes;
    return st.WithContext("ssd tier: writing block " + std::to_string(block) + " of model '" + model + "'");
  }
  if (it != entries_.end() && it->second.staging && it->second.dir == path.parent_path()) {
    it->second.blocks[block] = true;
  }
  return Status::Ok();
}

Status SsdTier::WriteTextFiles(const std::string& model, const std::map<std::string, std::string>& text_files) {
  fs::path dir;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(model);
    if (it == entries_.end() || !it->second.committed) {
      return FailedPrecondition("ssd tier: model '" + model + "' is not committed");
    }
    dir = it->second.dir;
  }
  for (const auto& [name, bytes] : text_files) {
    MC_RETURN_IF_ERROR(WriteFileAtomic(dir / name, bytes).WithContext("ssd tier: model '" + model + "'"));
  }
  return Status::Ok();
}

Status SsdTier::Commit(const std::string& model, const std::map<std::string, std::string>& text_files) {
  std::unique_lock lock(mu_);
  auto it = entries_.find(model);
  if (it == entries_.end() || !it->second.staging) {
    return FailedPrecondition("ssd tier: model '" + model + "' is not being written");
  }
  Entry& e = it->second;
  for (uint32_t b = 0; b < e.blocks.size(); ++b) {
    if (!e.blocks[b]) return FailedPrecondition("ssd tier: model '" + model + "' lacks block " + std::to_string(b));
  }
  const fs::path dir = e.dir;
  for (const auto& [name, bytes] : text_files) MC_RETURN_IF_ERROR(WriteFileAtomic(dir / name, bytes));
  MC_RETURN_IF_ERROR(WriteFileAtomic(dir / model::kManifestFile, e.manifest->Serialize()));
  MC_RETURN_IF_ERROR(WriteFileAtomic(dir / "config.json", e.manifest->hf_config.dump(2) + "\n"));
  MC_RETURN_IF_ERROR(WriteTrustFile(dir, *e.manifest, e.blocks));
  MC_RETURN_IF_ERROR(e.staging->Commit(/*replace=*/true));
  e.staging.reset();
  e.dir = root_ / model;
  e.committed = true;
  e.old_bytes = 0;
  LOG(INFO) << "ssd tier: model '" << model << "' written to " << e.dir;
  return Status::Ok();
}

void SsdTier::AbortWrite(const std::string& model) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(model);
  if (it == entries_.end() || !it->second.staging) return;
  it->second.staging.reset();  // removes the staging directory
  if (it->second.old_bytes == 0) {
    entries_.erase(it);
    return;
  }
  // The older copy is still in place: rescan it into the entry.
  Entry& e = it->second;
  e.dir = root_ / model;
  auto text = ReadFileToString(e.dir / model::kManifestFile, 512ull << 20);
  auto parsed = text.ok() ? model::Manifest::Parse(*text, (e.dir / model::kManifestFile).string())
                          : Result<model::Manifest>(text.status());
  if (!parsed.ok()) {
    entries_.erase(it);
    return;
  }
  e.manifest = std::make_shared<const model::Manifest>(std::move(*parsed));
  e.blocks.assign(e.manifest->blocks.size(), true);
  e.bytes = e.old_bytes;
  e.old_bytes = 0;
  e.committed = true;
}

Status SsdTier::Remove(const std::string& model) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(model);
  if (it == entries_.end()) return NotFound("ssd tier has no model '" + model + "'");
  it->second.staging.reset();
  std::error_code ec;
  fs::remove_all(root_ / model, ec);
  if (ec) return IOError("ssd tier: removing " + (root_ / model).string() + ": " + ec.message());
  MC_RETURN_IF_ERROR(FsyncDirectory(root_));
  entries_.erase(it);
  return Status::Ok();
}

}  // namespace modelcast::tiers
