// A fresh directory for one test, removed with its contents when the test ends.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace modelcast::testing {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// A tmpfs mounted for one test (needs root), unmounted (lazily) when destroyed.
class TmpfsMount {
 public:
  TmpfsMount(const std::filesystem::path& where, const std::string& options, unsigned long flags = 0);
  ~TmpfsMount();
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;
  bool ok() const { return ok_; }
  const std::string& why() const { return why_; }

 private:
  std::filesystem::path path_;
  bool ok_ = false;
  std::string why_;
};

// Reads a whole file into bytes (test helper: aborts the test on failure via gtest).
std::string ReadAll(const std::filesystem::path& path);
void WriteAll(const std::filesystem::path& path, const std::string& data);
// Flips one bit of the byte at `offset`.
void FlipByte(const std::filesystem::path& path, uint64_t offset);
// Names of the entries of `dir`, sorted.
std::vector<std::string> ListDir(const std::filesystem::path& dir);

}  // namespace modelcast::testing
