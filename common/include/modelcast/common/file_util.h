// Files: an owning descriptor with full-length reads and writes, aligned buffers, and the
// temporary-then-rename pattern that keeps a crash from leaving half a file or directory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

#include "modelcast/common/status.h"

namespace modelcast {

// An open file descriptor, closed on destruction. Every error names the path.
class File {
 public:
  File() = default;
  ~File();
  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  static Result<File> Open(const std::filesystem::path& path, int flags, int mode = 0644);
  static Result<File> OpenRead(const std::filesystem::path& path);
  // Creates (or truncates) a file for writing.
  static Result<File> Create(const std::filesystem::path& path);

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  bool is_open() const { return fd_ >= 0; }

  Result<uint64_t> Size() const;
  // Reads exactly dst.size() bytes at `offset`; a short file is an OutOfRange error.
  Status PReadFull(uint64_t offset, std::span<uint8_t> dst) const;
  // Writes all of `src` at `offset`, retrying short writes.
  Status PWriteFull(uint64_t offset, std::span<const uint8_t> src) const;
  Status Truncate(uint64_t size) const;
  Status Sync() const;
  Status Close();

 private:
  File(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_ = -1;
  std::string path_;
};

// Heap memory aligned to `alignment` bytes (a power of two), owned and freed by this object.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(size_t size, size_t alignment = 4096);
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<uint8_t> span() { return {data_, size_}; }
  std::span<const uint8_t> span() const { return {data_, size_}; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

constexpr uint64_t AlignUp(uint64_t v, uint64_t alignment) { return (v + alignment - 1) / alignment * alignment; }

// A whole file mapped read-only. The mapping is removed on destruction. Reading through it
// after another process truncates the file raises SIGBUS: map only files this process owns
// for the duration or that are not modified concurrently.
class MappedFile {
 public:
  MappedFile() = default;
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  // `sequential`: tell the kernel the mapping will be read front to back (read-ahead).
  static Result<MappedFile> Map(const File& file, bool sequential);

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// Reads a whole file; files larger than `max_bytes` are refused (so a bogus path cannot make
// us read gigabytes into a string).
Result<std::string> ReadFileToString(const std::filesystem::path& path, uint64_t max_bytes = 256ull << 20);

// Writes `data` to `path` via a temporary file in the same directory, fsync, rename and a
// directory fsync: readers see the old content or the new, never a mix.
Status WriteFileAtomic(const std::filesystem::path& path, std::string_view data);

Status FsyncDirectory(const std::filesystem::path& dir);

// A directory created next to `final_path` (same filesystem, so the final rename is atomic)
// that is removed with its contents on destruction unless Commit() moved it into place.
class StagingDirectory {
 public:
  static Result<StagingDirectory> Create(const std::filesystem::path& final_path);
  ~StagingDirectory();
  StagingDirectory(StagingDirectory&& other) noexcept;
  StagingDirectory& operator=(StagingDirectory&&) = delete;
  StagingDirectory(const StagingDirectory&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::filesystem::path& final_path() const { return final_path_; }

  // fsyncs the staging directory, then renames it to final_path. If final_path exists it is
  // an AlreadyExists error unless `replace`, in which case the two are exchanged atomically
  // and the old copy is removed.
  Status Commit(bool replace);

 private:
  StagingDirectory(std::filesystem::path path, std::filesystem::path final_path)
      : path_(std::move(path)), final_path_(std::move(final_path)) {}
  std::filesystem::path path_;
  std::filesystem::path final_path_;
  bool committed_ = false;
};

}  // namespace modelcast
