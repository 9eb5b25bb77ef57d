// `modelcast store`: a node's tiered store from the command line: what it holds, importing a
// package through the host pool into the SSD tier (the path received slices take), loading a
// model up to host or GPU memory.
#include <chrono>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "command.h"
#include "modelcast/common/units.h"
#include "modelcast/model/package.h"
#include "modelcast/tiers/store.h"

namespace modelcast::cli {
namespace {

struct StoreFlags {
  std::string ssd_dir, ssd_capacity = "1TiB", host_capacity = "4GiB", gpu_capacity = "0";
  bool json = false;

  void Declare(ArgParser& p) {
    p.Flag("ssd-dir", &ssd_dir, "the SSD tier's directory (required)");
    p.Flag("ssd-capacity", &ssd_capacity, "the SSD tier's capacity [1TiB]");
    p.Flag("host-capacity", &host_capacity, "the host pool's capacity [4GiB]");
    p.Flag("gpu-capacity", &gpu_capacity, "the GPU arena's capacity (0: no GPU tier) [0]");
    p.Flag("json", &json, "print JSON");
  }
  Result<std::unique_ptr<tiers::Store>> Open() const {
    if (ssd_dir.empty()) return InvalidArgument("--ssd-dir is required");
    tiers::StoreOptions o;
    o.ssd_dir = ssd_dir;
    MC_ASSIGN_OR_RETURN(o.ssd_capacity, ParseByteSize(ssd_capacity));
    MC_ASSIGN_OR_RETURN(o.host_capacity, ParseByteSize(host_capacity));
    MC_ASSIGN_OR_RETURN(o.gpu_capacity, ParseByteSize(gpu_capacity));
    o.maintain_interval = 0;
    return tiers::Store::Open(o);
  }
};

nlohmann::json InventoryJson(const tiers::Inventory& inv) {
  nlohmann::json j;
  for (const auto& t : inv.tiers) {
    j["tiers"].push_back(
        {{"tier", std::string(TierName(t.tier))}, {"capacity", t.capacity}, {"used", t.used}, {"pinned", t.pinned}});
  }
  j["models"] = nlohmann::json::array();
  for (const auto& m : inv.models) {
    nlohmann::json mj{
        {"model", m.model}, {"bytes", m.bytes}, {"slices", m.num_slices}, {"ssd_complete", m.ssd_complete}};
    for (Tier t : {Tier::kSsd, Tier::kHost, Tier::kGpu}) mj[std::string(TierName(t))] = m.slices[int(t)].size();
    j["models"].push_back(std::move(mj));
  }
  return j;
}

int Inventory(const std::vector<std::string>& args) {
  StoreFlags f;
  ArgParser p("modelcast store inventory",
              "Open the store (cleaning up interrupted writes, re-verifying what it did "
              "not write) and list what each tier holds.");
  f.Declare(p);
  if (int rc = ParseOrExit("store inventory", p, args); rc >= 0) return rc;
  auto store = f.Open();
  if (!store.ok()) return Fail("store inventory", store.status());
  const auto inv = (*store)->GetInventory();
  if (f.json) {
    std::printf("%s\n", InventoryJson(inv).dump().c_str());
    return kExitOk;
  }
  for (const auto& t : inv.tiers) {
    std::printf("%-5s %s of %s used\n", std::string(TierName(t.tier)).c_str(), FormatBytes(t.used).c_str(),
                FormatBytes(t.capacity).c_str());
  }
  for (const auto& m : inv.models) {
    std::printf("%s: %s, %u slices; on ssd %zu%s, host %zu, gpu %zu\n", m.model.c_str(), FormatBytes(m.bytes).c_str(),
                m.num_slices, m.slices[int(Tier::kSsd)].size(), m.ssd_complete ? " (complete)" : "",
                m.slices[int(Tier::kHost)].size(), m.slices[int(Tier::kGpu)].size());
  }
  return kExitOk;
}

int Import(const std::vector<std::string>& args) {
  StoreFlags f;
  std::string src;
  bool replace = false;
  ArgParser p("modelcast store import",
              "Copy a prepared package into the store's SSD tier the way received slices go: into host buffers, "
              "checked, then written behind (atomically: a crash leaves the old copy or the new one).");
  f.Declare(p);
  p.Positional("package", &src, "the prepared package to import");
  p.Flag("replace", &replace, "replace another version of the model");
  if (int rc = ParseOrExit("store import", p, args); rc >= 0) return rc;
  auto pkg = model::Package::Open(src);
  if (!pkg.ok()) return Fail("store import", pkg.status());
  auto store = f.Open();
  if (!store.ok()) return Fail("store import", store.status());
  tiers::Store& s = **store;
  const auto& m = pkg->manifest();
  if (Status st = s.AddModel(m, replace); !st.ok()) return Fail("store import", st);
  if (!m.text_files.empty()) {  // the tokenizer's files, written with the copy
    auto files = pkg->ReadTextFiles();
    if (!files.ok()) return Fail("store import", files.status());
    if (Status st = s.PutTextFiles(m.name, std::move(*files)); !st.ok()) return Fail("store import", st);
  }
  for (const auto& b : m.blocks) {
    auto lease = s.ReserveForReceive(m.name, b.index);
    if (!lease.ok() && lease.status().code() == StatusCode::kResourceExhausted) {
      // Full of blocks not yet written behind: let them reach SSD, then they can be evicted.
      if (Status st = s.FlushWriteBehind(m.name, std::chrono::minutes(10)); !st.ok()) return Fail("store import", st);
      lease = s.ReserveForReceive(m.name, b.index);
    }
    if (!lease.ok()) return Fail("store import", lease.status());
    for (uint32_t i = b.first_slice; i < b.first_slice + b.num_slices; ++i) {
      const auto& se = m.slices[i];
      if (Status st = pkg->ReadSlice(i, {lease->data() + se.offset, se.length}); !st.ok())
        return Fail("store import", st);
      if (Status st = s.Landed(m.name, i); !st.ok()) return Fail("store import", st);
    }
    std::printf("received block %u\n", b.index);
    std::fflush(stdout);
  }
  if (Status st = s.FlushWriteBehind(m.name, std::chrono::minutes(10)); !st.ok()) return Fail("store import", st);
  std::printf("imported model '%s' (%s)\n", m.name.c_str(), FormatBytes(m.TotalBytes()).c_str());
  return kExitOk;
}

int Load(const std::vector<std::string>& args) {
  StoreFlags f;
  std::string model, to = "host";
  ArgParser p("modelcast store load", "Promote a model from wherever the store holds it to host or GPU memory.");
  f.Declare(p);
  p.Positional("model", &model, "the model");
  p.Flag("to", &to, "host or gpu [host]");
  if (int rc = ParseOrExit("store load", p, args); rc >= 0) return rc;
  auto tier = tiers::ParseTier(to);
  if (!tier.ok()) return Fail("store load", tier.status());
  auto store = f.Open();
  if (!store.ok()) return Fail("store load", store.status());
  const auto start = std::chrono::steady_clock::now();
  auto req = (*store)->Promote(model, {}, *tier);
  if (!req.ok()) return Fail("store load", req.status());
  if (Status st = (*req)->Wait(std::chrono::minutes(30)); !st.ok()) return Fail("store load", st);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto manifest = (*store)->FindModel(model);
  const double gbps = manifest->TotalBytes() / secs / 1e9;
  if (f.json) {
    std::printf(
        "%s\n",
        nlohmann::json{
            {"model", model}, {"to", to}, {"bytes", manifest->TotalBytes()}, {"seconds", secs}, {"gb_per_s", gbps}}
            .dump()
            .c_str());
  } else {
    std::printf("loaded '%s' to %s: %s in %.3f s (%.2f GB/s)\n", model.c_str(), to.c_str(),
                FormatBytes(manifest->TotalBytes()).c_str(), secs, gbps);
  }
  return kExitOk;
}

int Remove(const std::vector<std::string>& args) {
  StoreFlags f;
  std::string model;
  ArgParser p("modelcast store remove", "Delete a model from every tier of the store, SSD included.");
  f.Declare(p);
  p.Positional("model", &model, "the model");
  if (int rc = ParseOrExit("store remove", p, args); rc >= 0) return rc;
  auto store = f.Open();
  if (!store.ok()) return Fail("store remove", store.status());
  if (Status st = (*store)->RemoveModel(model); !st.ok()) return Fail("store remove", st);
  return kExitOk;
}

}  // namespace

int RunStore(const std::vector<std::string>& args) {
  const std::vector<std::string> rest(args.begin() + (args.empty() ? 0 : 1), args.end());
  const std::string sub = args.empty() ? "" : args[0];
  if (sub == "inventory") return Inventory(rest);
  if (sub == "import") return Import(rest);
  if (sub == "load") return Load(rest);
  if (sub == "remove") return Remove(rest);
  std::fprintf(sub == "--help" || sub == "-h" ? stdout : stderr,
               "usage: modelcast store <inventory|import|load|remove> --ssd-dir DIR [args] [--help]\n");
  return sub == "--help" || sub == "-h" ? kExitOk : kExitUsage;
}

}  // namespace modelcast::cli
