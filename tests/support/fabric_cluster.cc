#include "support/fabric_cluster.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "modelcast/common/file_util.h"
#include "modelcast/planner/model_shape.h"
#include "modelcast/planner/planner.h"
#include "modelcast/model/package.h"
#include "modelcast/model/prepare.h"
#include "modelcast/model/synth.h"
#include "support/temp_dir.h"

namespace modelcast::testing {
namespace fs = std::filesystem;

Status WritePlan(const fs::path& package, const std::vector<FabricNode>& nodes, const std::string& algorithm,
                 const fs::path& out, double nic) {
  MC_ASSIGN_OR_RETURN(model::Package pkg, model::Package::Open(package));
  planner::PlanRequest r;
  r.model = planner::ModelShape::FromManifest(pkg.manifest());
  for (size_t i = 0; i < nodes.size(); ++i) {
    planner::PlanNode n;
    n.name = nodes[i].name;
    n.nic = nic;
    n.holds = nodes[i].source ? planner::Tier::kGpu : planner::Tier::kNone;
    r.nodes.push_back(n);
    (nodes[i].source ? r.sources : r.targets).push_back(static_cast<int32_t>(i));
  }
  MC_ASSIGN_OR_RETURN(planner::Plan plan, planner::MakePlan(r, algorithm));
  MC_RETURN_IF_ERROR(planner::ValidatePlan(r, plan));
  return WriteFileAtomic(out, plan.ToJson().dump());
}

std::vector<std::unique_ptr<Child>> StartFabricNodes(const std::vector<FabricNode>& nodes, const fs::path& package,
                                                     const fs::path& plan, const fs::path& work, double deadline) {
  const fs::path rendezvous = work / "rendezvous";
  fs::create_directories(rendezvous);
  std::vector<std::unique_ptr<Child>> children;
  for (const auto& n : nodes) {
    std::vector<std::string> argv;
    if (!n.netns.empty()) argv = {"ip", "netns", "exec", n.netns};
    for (const std::string& a :
         {ToolPath("modelcast-fabric-node"), std::string("--name"), n.name, std::string("--listen"), n.ip + ":0",
          std::string("--rendezvous"), rendezvous.string(), std::string("--plan"), plan.string(),
          std::string("--package"), package.string(), std::string("--tls"), std::string("tcp"),
          std::string("--deadline"), std::to_string(deadline), std::string("--report"),
          (work / (n.name + ".json")).string()}) {
      argv.push_back(a);
    }
    if (!n.netns.empty()) {
      argv.push_back("--net-devices");
      argv.push_back("eth0");
    }
    if (n.source) {
      argv.push_back("--source");
    } else {
      argv.push_back("--out");
      argv.push_back((work / (n.name + ".out")).string());
      argv.push_back("--progress");
      argv.push_back((work / (n.name + ".progress")).string());
    }
    argv.insert(argv.end(), n.args.begin(), n.args.end());
    children.push_back(std::make_unique<Child>(argv));
  }
  return children;
}

Status PrepareModel(const fs::path& dir, const std::string& preset, int64_t blocks, uint64_t slice_bytes,
                    std::optional<int64_t> layers) {
  model::SynthOptions so;
  so.preset = preset;
  so.layers = layers;
  MC_RETURN_IF_ERROR(model::Synthesize(so, dir / "hf"));
  model::PrepareOptions po;
  po.blocks = blocks;
  po.slice_bytes = slice_bytes;
  return model::Prepare(dir / "hf", dir / "pkg", po).status();
}

void RunAndVerify(const std::vector<FabricNode>& nodes, const std::string& algorithm, const fs::path& package,
                  const fs::path& run) {
  fs::create_directories(run);
  Status planned = WritePlan(package, nodes, algorithm, run / "plan.json");
  ASSERT_TRUE(planned.ok()) << planned.ToString();
  auto children = StartFabricNodes(nodes, package, run / "plan.json", run);
  for (size_t i = 0; i < children.size(); ++i) {
    auto r = children[i]->Wait(std::chrono::seconds(120));
    ASSERT_FALSE(r.timed_out) << nodes[i].name;
    ASSERT_EQ(r.exit_code, 0) << nodes[i].name << ": " << r.err;
  }
  for (const auto& n : nodes) {
    if (n.source) continue;
    Status same = SameModel(package, run / (n.name + ".out"));
    EXPECT_TRUE(same.ok()) << n.name << ": " << same.ToString();
  }
}

Status SameModel(const fs::path& original, const fs::path& copy) {
  MC_ASSIGN_OR_RETURN(model::Package a, model::Package::Open(original));
  MC_ASSIGN_OR_RETURN(model::Package b, model::Package::Open(copy));
  MC_ASSIGN_OR_RETURN(model::VerifyReport v, b.Verify());
  if (!v.ok()) return Corruption(b.Describe(v.bad.front()));
  for (const auto& block : a.manifest().blocks) {
    if (ReadAll(original / block.file) != ReadAll(copy / block.file)) {
      return Corruption(copy.string() + "/" + block.file + " differs from the original");
    }
  }
  return Status::Ok();
}

std::string NetnsUnavailableReason() {
  if (::geteuid() != 0) return "network-namespace tests need root";
  if (std::system(
          "command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 && command -v ping >/dev/null 2>&1") != 0) {
    return "network-namespace tests need ip, tc and ping (iproute2, iputils-ping)";
  }
  return "";
}

NetnsCluster::NetnsCluster(int nodes, const std::string& rate, const std::string& prefix) : prefix_(prefix) {
  const std::string script = SourcePath("scripts/netns-cluster.sh");
  const std::string cmd =
      script + " up " + std::to_string(nodes) + " --rate " + rate + " --prefix " + prefix + " >/dev/null";
  if (std::system(cmd.c_str()) != 0) status_ = Internal("'" + cmd + "' failed");
}

NetnsCluster::~NetnsCluster() {
  const std::string cmd = SourcePath("scripts/netns-cluster.sh") + " down --prefix " + prefix_ + " >/dev/null";
  if (std::system(cmd.c_str()) != 0) ADD_FAILURE() << "'" << cmd << "' failed";
}

}  // namespace modelcast::testing
