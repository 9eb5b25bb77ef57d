// Multi-process fabric runs for tests: a plan over a prepared package, one
// modelcast-fabric-node per node (on loopback, or inside a network namespace), and checks.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "modelcast/common/status.h"
#include "support/process.h"

namespace modelcast::testing {

struct FabricNode {
  std::string name;
  bool source = false;
  std::string netns;  // empty: this namespace
  std::string ip = "127.0.0.1";
  std::vector<std::string> args;  // extra flags (faults, ...)
};

// Plans `algorithm` for the nodes over the package (sources: the nodes marked so; targets:
// the others; every link `nic` bytes/s) and writes the plan as JSON.
Status WritePlan(const std::filesystem::path& package, const std::vector<FabricNode>& nodes,
                 const std::string& algorithm, const std::filesystem::path& out, double nic = 125e6);

// Starts a node process per node; receivers write what they got to work/<name>.out and their
// progress to work/<name>.progress, every node its report to work/<name>.json.
std::vector<std::unique_ptr<Child>> StartFabricNodes(const std::vector<FabricNode>& nodes,
                                                     const std::filesystem::path& package,
                                                     const std::filesystem::path& plan,
                                                     const std::filesystem::path& work, double deadline = 60);

// Synthesizes a model and prepares it into `dir`/pkg (`preset`, `blocks`, `slice_bytes`).
Status PrepareModel(const std::filesystem::path& dir, const std::string& preset, int64_t blocks, uint64_t slice_bytes,
                    std::optional<int64_t> layers = std::nullopt);

// Runs the nodes to completion in `run` and checks that every receiver's copy is the
// original, byte for byte.
void RunAndVerify(const std::vector<FabricNode>& nodes, const std::string& algorithm,
                  const std::filesystem::path& package, const std::filesystem::path& run);

// Whether the package at `copy` verifies and its block files equal the original's.
Status SameModel(const std::filesystem::path& original, const std::filesystem::path& copy);

// Whether network-namespace tests can run here (root, ip, tc); the reason when not.
std::string NetnsUnavailableReason();

// Brings a shaped namespace cluster up for a test and down when destroyed.
class NetnsCluster {
 public:
  NetnsCluster(int nodes, const std::string& rate, const std::string& prefix = "mct");
  ~NetnsCluster();
  const Status& status() const { return status_; }
  std::string Namespace(int i) const { return prefix_ + "-n" + std::to_string(i); }
  static std::string Address(int i) { return "10.77.0." + std::to_string(10 + i); }

 private:
  std::string prefix_;
  Status status_;
};

}  // namespace modelcast::testing
