#include "modelcast/fabric/executor.h"

#include <glog/logging.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include "modelcast/common/checksum.h"
#include "run.h"

namespace modelcast::fabric {

ModelLayout ModelLayout::FromManifest(const model::Manifest& m) {
  std::vector<uint64_t> offsets;
  uint64_t offset = 0;
  for (const auto& b : m.blocks) {
    offsets.push_back(offset);
    offset += b.file_bytes;
  }
  return FromManifest(m, std::move(offsets), offset);
}

ModelLayout ModelLayout::FromManifest(const model::Manifest& m, std::vector<uint64_t> block_offsets,
                                      uint64_t buffer_bytes) {
  ModelLayout l;
  l.model = m.name;
  l.block_offsets = std::move(block_offsets);
  l.buffer_bytes = buffer_bytes;
  for (const auto& s : m.slices) l.slices.push_back({l.block_offsets[s.block] + s.offset, s.length, s.xxh3, s.block});
  return l;
}

Result<SliceMethod> ParseSliceMethod(const std::string& name) {
  if (name == "auto") return SliceMethod::kAuto;
  if (name == "messages") return SliceMethod::kMessages;
  if (name == "writes") return SliceMethod::kWrites;
  return InvalidArgument("slice method '" + name + "' is not one of auto, messages, writes");
}

const char* SliceMethodName(SliceMethod m) {
  switch (m) {
    case SliceMethod::kAuto:
      return "auto";
    case SliceMethod::kMessages:
      return "messages";
    case SliceMethod::kWrites:
      return "writes";
  }
  return "?";
}

void SliceSupply::Add(uint32_t slice) {
  {
    std::lock_guard lock(mu_);
    added_.push_back(slice);
  }
  Tell();
}

void SliceSupply::Fail(Status status) {
  {
    std::lock_guard lock(mu_);
    if (failed_.ok()) failed_ = std::move(status);
  }
  Tell();
}

void SliceSupply::Tell() {
  std::function<void()> listener;
  {
    std::lock_guard lock(mu_);
    listener = listener_;
  }
  if (listener) listener();  // outside the lock: it takes the run's
}

std::vector<uint32_t> SliceSupply::Take(Status* failure) {
  std::lock_guard lock(mu_);
  *failure = failed_;
  return std::exchange(added_, {});
}

void SliceSupply::SetListener(std::function<void()> listener) {
  std::lock_guard lock(mu_);
  listener_ = std::move(listener);
}

SendPacer::SendPacer(double bytes_per_second, double burst_seconds)
    : rate_(bytes_per_second), burst_(burst_seconds) {}

// The generic cell rate algorithm: `free_at_` is when the link would be free had every send
// counted so far gone at the rate; a send may start once that is at most `burst_` ahead.
double SendPacer::Take(uint64_t bytes, double now) {
  std::lock_guard lock(mu_);
  if (free_at_ - burst_ > now) return free_at_ - burst_ - now;
  free_at_ = std::max(free_at_, now) + static_cast<double>(bytes) / rate_;
  return 0;
}

double SendPacer::Take(uint64_t bytes) {
  return Take(bytes, std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

const char* SliceStageName(SliceStage stage) {
  switch (stage) {
    case SliceStage::kPosted:
      return "posted";
    case SliceStage::kSent:
      return "sent";
    case SliceStage::kFlushed:
      return "flushed";
    case SliceStage::kConfirmed:
      return "confirmed";
    case SliceStage::kAnnounced:
      return "announced";
    case SliceStage::kAdmitted:
      return "admitted";
    case SliceStage::kLanded:
      return "landed";
    case SliceStage::kVerified:
      return "verified";
  }
  return "?";
}

std::string TimelineCsv(const std::string& node, const ExecutorReport& report) {
  std::string out = "node,slice,peer,stage,at\n";
  char at[32];
  for (const auto& m : report.timeline) {
    std::snprintf(at, sizeof(at), "%.6f", m.at);
    out += node + "," + std::to_string(m.slice) + "," + m.peer + "," + SliceStageName(m.stage) + "," + at + "\n";
  }
  return out;
}

Result<ExecutorReport> ExecuteFragment(Transport& transport, const ModelLayout& layout, uint8_t* buffer,
                                       const std::vector<bool>& held, const PlanFragment& fragment,
                                       const ExecutorOptions& options) {
  MC_RETURN_IF_ERROR(fragment.Validate(layout.model, static_cast<uint32_t>(layout.slices.size())));
  if (held.size() != layout.slices.size()) return InvalidArgument("executor: held has the wrong size");
  if (options.pieces == 0 || options.pieces_in_flight == 0) {
    return InvalidArgument("executor: pieces and pieces_in_flight must be at least 1");
  }
  for (const auto& s : fragment.sends) {
    // A slice sent must be held at the start or received in this fragment.
    const bool received = std::any_of(fragment.receives.begin(), fragment.receives.end(),
                                      [&](const FragmentStep& r) { return r.slice == s.slice; });
    if (!held[s.slice] && !received && options.supply == nullptr) {
      return InvalidArgument("plan fragment of '" + fragment.node + "' sends slice " + std::to_string(s.slice) +
                             " to '" + s.peer + "' but neither holds nor receives it");
    }
  }
  bool writes = false;
  switch (options.method) {
    case SliceMethod::kMessages:
      break;
    case SliceMethod::kAuto:
      writes = (options.region != nullptr || !options.block_regions.empty()) && transport.capabilities().write_notify;
      break;
    case SliceMethod::kWrites:
      if (options.region == nullptr && options.block_regions.empty()) {
        return InvalidArgument("executor: slices by write need the registered buffer");
      }
      if (!transport.capabilities().one_sided_write) {
        return FailedPrecondition("executor: transport '" + transport.capabilities().backend +
                                  "' cannot write one-sided; use messages");
      }
      writes = true;
      break;
  }
  if (writes && options.block_regions.empty() &&
      (options.region->data() != buffer || options.region->size() < layout.buffer_bytes)) {
    return InvalidArgument("executor: the registered region is not the " + std::to_string(layout.buffer_bytes) +
                           "-byte model buffer");
  }
  if (writes && !options.block_regions.empty()) {
    // Every block this node sends from or receives into is registered where the layout has it.
    if (options.block_regions.size() != layout.block_offsets.size()) {
      return InvalidArgument("executor: " + std::to_string(options.block_regions.size()) + " block regions for " +
                             std::to_string(layout.block_offsets.size()) + " blocks");
    }
    std::vector<uint64_t> end(layout.block_offsets.size(), 0);
    for (const auto& s : layout.slices) end[s.block] = std::max(end[s.block], s.offset + s.length);
    std::set<uint32_t> used;
    for (const auto& s : fragment.sends) used.insert(layout.slices[s.slice].block);
    for (const auto& r : fragment.receives) used.insert(layout.slices[r.slice].block);
    for (uint32_t b : used) {
      const MemoryRegion* r = options.block_regions[b];
      if (r == nullptr || r->data() != buffer + layout.block_offsets[b] ||
          r->size() < end[b] - layout.block_offsets[b]) {
        return InvalidArgument("executor: block " + std::to_string(b) + " of '" + layout.model +
                               "' is not registered where the layout has it");
      }
    }
  }
  return RunFragment(transport, layout, buffer, held, fragment, options, writes);
}

}  // namespace modelcast::fabric
