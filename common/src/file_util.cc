#include "modelcast/common/file_util.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <random>
#include <system_error>

namespace modelcast {
namespace fs = std::filesystem;

File::~File() {
  if (fd_ >= 0) ::close(fd_);
}

File::File(File&& other) noexcept : fd_(other.fd_), path_(std::move(other.path_)) { other.fd_ = -1; }

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    path_ = std::move(other.path_);
    other.fd_ = -1;
  }
  return *this;
}

Result<File> File::Open(const fs::path& path, int flags, int mode) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return IOError("open " + path.string(), errno);
  return File(fd, path.string());
}

Result<File> File::OpenRead(const fs::path& path) { return Open(path, O_RDONLY); }

Result<File> File::Create(const fs::path& path) { return Open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644); }

Result<uint64_t> File::Size() const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) return IOError("stat " + path_, errno);
  return static_cast<uint64_t>(st.st_size);
}

Status File::PReadFull(uint64_t offset, std::span<uint8_t> dst) const {
  size_t done = 0;
  while (done < dst.size()) {
    ssize_t n = ::pread(fd_, dst.data() + done, dst.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return IOError("read " + path_ + " at offset " + std::to_string(offset + done), errno);
    }
    if (n == 0) {
      return OutOfRange(path_ + ": file ends at " + std::to_string(offset + done) + ", wanted " +
                        std::to_string(dst.size()) + " bytes from offset " + std::to_string(offset));
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status File::PWriteFull(uint64_t offset, std::span<const uint8_t> src) const {
  size_t done = 0;
  while (done < src.size()) {
    ssize_t n = ::pwrite(fd_, src.data() + done, src.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return IOError("write " + path_ + " at offset " + std::to_string(offset + done), errno);
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status File::Truncate(uint64_t size) const {
  if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) return IOError("truncate " + path_, errno);
  return Status::Ok();
}

Status File::Sync() const {
  if (::fsync(fd_) != 0) return IOError("fsync " + path_, errno);
  return Status::Ok();
}

Status File::Close() {
  if (fd_ < 0) return Status::Ok();
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) return IOError("close " + path_, errno);
  return Status::Ok();
}

AlignedBuffer::AlignedBuffer(size_t size, size_t alignment) : size_(size) {
  if (size == 0) return;
  // Large buffers sit on transparent huge pages where the kernel offers them: data moved
  // through the network stack or the page cache at GB/s otherwise spends much of its time in
  // TLB misses (more so in a VM, where each miss walks two page tables).
  constexpr size_t kHugePage = 2u << 20;
  const bool huge = size >= 2 * kHugePage;
  if (huge) alignment = std::max(alignment, kHugePage);
  void* p = nullptr;
  if (::posix_memalign(&p, alignment, AlignUp(size, alignment)) != 0) {
    throw std::bad_alloc();  // allocation failure is not a recoverable condition here
  }
  if (huge) ::madvise(p, AlignUp(size, alignment), MADV_HUGEPAGE);  // advice only: failure is harmless
  data_ = static_cast<uint8_t*>(p);
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept : data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

MappedFile::MappedFile(MappedFile&& other) noexcept : data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

Result<MappedFile> MappedFile::Map(const File& file, bool sequential) {
  MC_ASSIGN_OR_RETURN(uint64_t size, file.Size());
  MappedFile m;
  if (size == 0) return m;
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, file.fd(), 0);
  if (p == MAP_FAILED) return IOError("mmap " + file.path(), errno);
  if (sequential) ::madvise(p, size, MADV_SEQUENTIAL);
  m.data_ = static_cast<const uint8_t*>(p);
  m.size_ = size;
  return m;
}

Result<std::string> ReadFileToString(const fs::path& path, uint64_t max_bytes) {
  MC_ASSIGN_OR_RETURN(File f, File::OpenRead(path));
  MC_ASSIGN_OR_RETURN(uint64_t size, f.Size());
  if (size > max_bytes) {
    return InvalidArgument(path.string() + ": " + std::to_string(size) + " bytes is larger than the " +
                           std::to_string(max_bytes) + "-byte limit for this file");
  }
  std::string s(size, '\0');
  MC_RETURN_IF_ERROR(f.PReadFull(0, {reinterpret_cast<uint8_t*>(s.data()), s.size()}));
  return s;
}

Status FsyncDirectory(const fs::path& dir) {
  MC_ASSIGN_OR_RETURN(File d, File::Open(dir, O_RDONLY | O_DIRECTORY));
  return d.Sync();
}

namespace {

std::string RandomSuffix() {
  std::random_device rd;
  std::string s = std::to_string(::getpid()) + "-";
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  for (int i = 0; i < 8; ++i) s += kChars[rd() % (sizeof(kChars) - 1)];
  return s;
}

fs::path ParentOf(const fs::path& p) {
  fs::path parent = p.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

}  // namespace

Status WriteFileAtomic(const fs::path& path, std::string_view data) {
  fs::path tmp = path;
  tmp += ".tmp-" + RandomSuffix();
  Status s = [&]() -> Status {
    MC_ASSIGN_OR_RETURN(File f, File::Create(tmp));
    MC_RETURN_IF_ERROR(f.PWriteFull(0, {reinterpret_cast<const uint8_t*>(data.data()), data.size()}));
    MC_RETURN_IF_ERROR(f.Sync());
    MC_RETURN_IF_ERROR(f.Close());
    if (::rename(tmp.c_str(), path.c_str()) != 0) return IOError("rename to " + path.string(), errno);
    return FsyncDirectory(ParentOf(path));
  }();
  if (!s.ok()) {
    std::error_code ec;
    fs::remove(tmp, ec);
  }
  return s;
}

Result<StagingDirectory> StagingDirectory::Create(const fs::path& final_path) {
  if (final_path.empty()) return InvalidArgument("empty output path");
  fs::path clean = final_path.lexically_normal();
  if (clean.filename().empty()) clean = clean.parent_path();  // "dir/" -> "dir"
  fs::path parent = ParentOf(clean);
  std::error_code ec;
  if (!fs::is_directory(parent, ec)) {
    return NotFound("output directory's parent " + parent.string() + " does not exist");
  }
  fs::path staging = parent / ("." + clean.filename().string() + ".partial-" + RandomSuffix());
  if (::mkdir(staging.c_str(), 0755) != 0) return IOError("mkdir " + staging.string(), errno);
  return StagingDirectory(staging, clean);
}

StagingDirectory::StagingDirectory(StagingDirectory&& other) noexcept
    : path_(std::move(other.path_)), final_path_(std::move(other.final_path_)), committed_(other.committed_) {
  other.committed_ = true;  // the moved-from object no longer owns the directory
}

StagingDirectory::~StagingDirectory() {
  if (committed_ || path_.empty()) return;
  std::error_code ec;
  fs::remove_all(path_, ec);
}

Status StagingDirectory::Commit(bool replace) {
  if (committed_) return FailedPrecondition("staging directory " + path_.string() + " already committed");
  MC_RETURN_IF_ERROR(FsyncDirectory(path_));
  const fs::path parent = ParentOf(final_path_);
  if (::renameat2(AT_FDCWD, path_.c_str(), AT_FDCWD, final_path_.c_str(), RENAME_NOREPLACE) == 0) {
    committed_ = true;
    return FsyncDirectory(parent);
  }
  if (errno != EEXIST) return IOError("rename " + path_.string() + " to " + final_path_.string(), errno);
  if (!replace) {
    return AlreadyExists(final_path_.string() + " already exists (pass --force to replace it)");
  }
  if (::renameat2(AT_FDCWD, path_.c_str(), AT_FDCWD, final_path_.c_str(), RENAME_EXCHANGE) != 0) {
    return IOError("exchange " + path_.string() + " with " + final_path_.string(), errno);
  }
  // path_ now holds the old copy: the destructor's removal would do, but say so explicitly.
  committed_ = true;
  std::error_code ec;
  fs::remove_all(path_, ec);
  return FsyncDirectory(parent);
}

}  // namespace modelcast
