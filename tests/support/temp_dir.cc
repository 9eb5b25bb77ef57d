#include "support/temp_dir.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/mount.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <vector>

namespace modelcast::testing {
namespace fs = std::filesystem;

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string templ = std::string(base && *base ? base : "/tmp") + "/modelcast-test-XXXXXX";
  char* p = ::mkdtemp(templ.data());
  if (p == nullptr) {
    ADD_FAILURE() << "mkdtemp " << templ << " failed";
    return;
  }
  path_ = p;
}

TempDir::~TempDir() {
  std::error_code ec;
  if (!path_.empty()) fs::remove_all(path_, ec);
}

std::string ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteAll(const fs::path& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  EXPECT_TRUE(out.good()) << "cannot write " << path;
}

void FlipByte(const fs::path& path, uint64_t offset) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  ASSERT_TRUE(f.good()) << "cannot open " << path;
  f.seekg(static_cast<std::streamoff>(offset));
  char c;
  f.read(&c, 1);
  ASSERT_TRUE(f.good()) << "offset " << offset << " is past the end of " << path;
  c = static_cast<char>(c ^ 0x10);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
  ASSERT_TRUE(f.good());
}

std::vector<std::string> ListDir(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

TmpfsMount::TmpfsMount(const std::filesystem::path& where, const std::string& options, unsigned long flags)
    : path_(where) {
  std::filesystem::create_directories(where);
  ok_ = ::mount("tmpfs", where.c_str(), "tmpfs", flags, options.c_str()) == 0;
  if (!ok_) why_ = std::string("cannot mount a tmpfs: ") + std::strerror(errno);
}

TmpfsMount::~TmpfsMount() {
  if (ok_) ::umount2(path_.c_str(), MNT_DETACH);
}

}  // namespace modelcast::testing
