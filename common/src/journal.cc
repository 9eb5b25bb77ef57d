#include "modelcast/common/journal.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include <glog/logging.h>

#include "modelcast/common/checksum.h"

namespace modelcast {
namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'M', 'C', 'J', 'R', 'N', 'L', '1', '\n'};
constexpr uint64_t kFrame = 4 + 8;  // length (u32 LE), XXH3 (u64 LE)

void PutLe(std::string* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t GetLe(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string Frame(const nlohmann::json& record) {
  const std::string payload = record.dump();
  std::string out;
  out.reserve(kFrame + payload.size());
  PutLe(&out, payload.size(), 4);
  PutLe(&out, Xxh3(payload.data(), payload.size()), 8);
  out += payload;
  return out;
}

Status Sync(const File& f, bool sync) {
  if (!sync) return Status::Ok();
  if (::fdatasync(f.fd()) != 0) return IOError("fdatasync " + f.path(), errno);
  return Status::Ok();
}

// Whether [off, size) holds only zero bytes: a file extended by a crash but never written.
Result<bool> ZerosToEnd(const File& f, uint64_t off, uint64_t size) {
  uint8_t buf[4096];
  while (off < size) {
    const uint64_t n = std::min<uint64_t>(sizeof(buf), size - off);
    MC_RETURN_IF_ERROR(f.PReadFull(off, {buf, n}));
    for (uint64_t i = 0; i < n; ++i) {
      if (buf[i] != 0) return false;
    }
    off += n;
  }
  return true;
}

}  // namespace

Result<std::unique_ptr<Journal>> Journal::Open(const fs::path& path, const Replay& replay,
                                               const JournalOptions& options, JournalOpenReport* report) {
  JournalOpenReport local;
  if (report == nullptr) report = &local;
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    // A new journal: the header, made durable with its directory entry.
    MC_RETURN_IF_ERROR(WriteFileAtomic(path, std::string(kMagic, sizeof(kMagic))));
  }
  MC_ASSIGN_OR_RETURN(File f, File::Open(path, O_RDWR));
  MC_ASSIGN_OR_RETURN(uint64_t size, f.Size());
  uint8_t magic[sizeof(kMagic)];
  if (size < sizeof(kMagic) || !f.PReadFull(0, {magic, sizeof(magic)}).ok() ||
      std::memcmp(magic, kMagic, sizeof(kMagic)) != 0) {
    return Corruption(path.string() + " is not a modelcast journal (bad header)");
  }
  uint64_t off = sizeof(kMagic);
  uint64_t records = 0;
  std::string payload;
  while (off < size) {
    // Anything that does not hold a whole, intact record and reaches the end of the file is a
    // torn tail, and so is a damaged record followed only by zeros (a file extended by a crash
    // but never written); the same damage followed by anything else is corruption.
    uint8_t frame[kFrame];
    bool torn = false;
    uint64_t length = 0, sum = 0;
    if (size - off < kFrame) {
      torn = true;
    } else {
      MC_RETURN_IF_ERROR(f.PReadFull(off, {frame, kFrame}));
      length = GetLe(frame, 4);
      sum = GetLe(frame + 4, 8);
      if (length > options.max_record_bytes || off + kFrame + length > size) {
        torn = off + kFrame + std::min<uint64_t>(length, options.max_record_bytes) >= size;
        if (!torn) {
          MC_ASSIGN_OR_RETURN(torn, ZerosToEnd(f, off, size));
          if (!torn) {
            return Corruption(path.string() + ": record at offset " + std::to_string(off) + " claims " +
                              std::to_string(length) + " bytes");
          }
        }
      }
    }
    if (!torn) {
      payload.resize(length);
      MC_RETURN_IF_ERROR(f.PReadFull(off + kFrame, {reinterpret_cast<uint8_t*>(payload.data()), length}));
      if (Xxh3(payload.data(), payload.size()) != sum) {
        torn = off + kFrame + length >= size;
        if (!torn) {
          MC_ASSIGN_OR_RETURN(torn, ZerosToEnd(f, off, size));
          if (!torn) {
            return Corruption(path.string() + ": record at offset " + std::to_string(off) +
                              " fails its checksum, and records follow it");
          }
        }
      }
    }
    if (torn) {
      report->torn_bytes = size - off;
      LOG(WARNING) << "journal " << path << ": dropping " << size - off << " byte(s) of a record cut short at offset "
                   << off << " (an interrupted append)";
      MC_RETURN_IF_ERROR(f.Truncate(off));
      MC_RETURN_IF_ERROR(f.Sync());
      size = off;
      break;
    }
    auto record = nlohmann::json::parse(payload, nullptr, false);
    if (record.is_discarded()) {
      return Corruption(path.string() + ": record at offset " + std::to_string(off) + " is not JSON");
    }
    MC_RETURN_IF_ERROR(replay(record).WithContext(path.string() + ": replaying record " + std::to_string(records)));
    ++records;
    off += kFrame + length;
  }
  report->records = records;
  return std::unique_ptr<Journal>(new Journal(path, std::move(f), size, records, options));
}

Status Journal::Append(const nlohmann::json& record) {
  const std::string frame = Frame(record);
  if (frame.size() - kFrame > options_.max_record_bytes) {
    return InvalidArgument("journal record of " + std::to_string(frame.size() - kFrame) + " bytes is larger than " +
                           std::to_string(options_.max_record_bytes));
  }
  std::lock_guard lock(mu_);
  Status st = file_.PWriteFull(size_, {reinterpret_cast<const uint8_t*>(frame.data()), frame.size()});
  if (st.ok()) st = Sync(file_, options_.sync);
  if (!st.ok()) {
    // Leave nothing half-written: cut back to the last whole record.
    (void)file_.Truncate(size_);
    return st.WithContext("journal " + path_.string());
  }
  size_ += frame.size();
  ++records_;
  return Status::Ok();
}

Status Journal::Compact(const std::vector<nlohmann::json>& records) {
  std::string data(kMagic, sizeof(kMagic));
  for (const auto& r : records) data += Frame(r);
  std::lock_guard lock(mu_);
  MC_RETURN_IF_ERROR(WriteFileAtomic(path_, data).WithContext("compacting journal"));
  MC_ASSIGN_OR_RETURN(File f, File::Open(path_, O_RDWR));
  file_ = std::move(f);
  size_ = data.size();
  records_ = records.size();
  return Status::Ok();
}

uint64_t Journal::records() const {
  std::lock_guard lock(mu_);
  return records_;
}

uint64_t Journal::bytes() const {
  std::lock_guard lock(mu_);
  return size_;
}

}  // namespace modelcast
