// Prepared packages and stores for the tiered-store tests.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "modelcast/common/checksum.h"
#include "modelcast/model/package.h"
#include "modelcast/model/prepare.h"
#include "modelcast/tiers/store.h"
#include "support/models.h"

namespace modelcast::testing {

// Synthesizes a tiny model with `seed` and prepares it into `dst` as model `name`, cut into
// `blocks` blocks of `slice_bytes` slices.
// `files`: more files of the checkpoint (its tokenizer's), written before it is prepared.
inline void MakePackage(const std::filesystem::path& work, const std::filesystem::path& dst, const std::string& name,
                        uint64_t seed = 0, int64_t blocks = 4, uint64_t slice_bytes = 64 << 10,
                        const std::map<std::string, std::string>& files = {}) {
  const auto src = work / (".src-" + name + "-" + std::to_string(seed));
  if (!std::filesystem::exists(src)) Synth(Tiny(DType::kBF16, seed), src);
  for (const auto& [file, bytes] : files) std::ofstream(src / file, std::ios::binary) << bytes;
  std::filesystem::create_directories(dst.parent_path());
  model::PrepareOptions o;
  o.blocks = blocks;
  o.slice_bytes = slice_bytes;
  o.name = name;
  o.replace = true;
  auto r = model::Prepare(src, dst, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
}

inline tiers::StoreOptions SmallStore(const std::filesystem::path& ssd_dir, uint64_t host_capacity) {
  tiers::StoreOptions o;
  o.ssd_dir = ssd_dir;
  o.ssd_capacity = 1ull << 30;
  o.host_capacity = host_capacity;
  o.maintain_interval = 0;
  return o;
}

// Every slice of the block in `data` matches the manifest's checksum.
inline ::testing::AssertionResult BlockIntact(const model::Manifest& m, uint32_t block, const uint8_t* data) {
  const auto& b = m.blocks[block];
  for (uint32_t s = b.first_slice; s < b.first_slice + b.num_slices; ++s) {
    const auto& se = m.slices[s];
    if (Xxh3(data + se.offset, se.length) != se.xxh3) {
      return ::testing::AssertionFailure() << "slice " << s << " of block " << block << " differs";
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace modelcast::testing
