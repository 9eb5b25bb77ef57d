#include "modelcast/planner/planner.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "algorithms.h"

namespace modelcast::planner {
namespace {

constexpr uint32_t kMaxSlices = 1u << 22;
constexpr size_t kMaxNodes = 1u << 20;

class FunctionAlgorithm final : public PlanAlgorithm {
 public:
  using Fn = Result<Plan> (*)(const PlanRequest&);
  FunctionAlgorithm(std::string_view name, Fn fn, bool needs_sources)
      : name_(name), fn_(fn), needs_sources_(needs_sources) {}
  std::string_view name() const override { return name_; }
  Result<Plan> Make(const PlanRequest& request) const override {
    if (needs_sources_ && request.sources.empty()) {
      return InvalidArgument(std::string(name_) + " needs at least one source to send the model");
    }
    return fn_(request);
  }

 private:
  std::string_view name_;
  Fn fn_;
  bool needs_sources_;
};

Result<Plan> LambdaPipeFresh(const PlanRequest& r) { return PlanLambdaPipe(r, nullptr); }

const std::vector<FunctionAlgorithm>& Registry() {
  static const std::vector<FunctionAlgorithm> registry = {
      {"lambdapipe", LambdaPipeFresh, false},
      {"unicast", PlanUnicast, true},
      {"binary-tree", PlanBinaryTree, true},
      {"binomial-whole", PlanBinomialWhole, true},
      {"chain", PlanChain, true},
      {"local", PlanLocal, false},
  };
  return registry;
}

std::string NodeName(const PlanRequest& r, int32_t n) {
  return n >= 0 && static_cast<size_t>(n) < r.nodes.size() ? "'" + r.nodes[n].name + "'" : std::to_string(n);
}

}  // namespace

std::vector<std::string> AlgorithmNames() {
  std::vector<std::string> names;
  for (const auto& a : Registry()) names.emplace_back(a.name());
  return names;
}

const PlanAlgorithm* FindAlgorithm(std::string_view name) {
  for (const auto& a : Registry()) {
    if (a.name() == name) return &a;
  }
  return nullptr;
}

Status ValidateRequest(const PlanRequest& r) {
  MC_RETURN_IF_ERROR(r.model.Validate());
  if (r.model.num_slices() > kMaxSlices) return InvalidArgument("more than 4194304 slices");
  if (r.nodes.empty()) return InvalidArgument("the request names no nodes");
  if (r.nodes.size() > kMaxNodes) return InvalidArgument("more than 1048576 nodes");
  for (const auto& n : r.nodes) {
    if (!(n.nic > 0) || !std::isfinite(n.nic)) {
      return InvalidArgument("node '" + n.name + "' has a link rate of " + std::to_string(n.nic) +
                             " bytes/s (must be positive)");
    }
    if (!(n.local_rate >= 0) || !std::isfinite(n.local_rate))
      return InvalidArgument("node '" + n.name + "' has a bad local load rate");
    if ((n.holds == Tier::kHost || n.holds == Tier::kSsd) && n.local_rate <= 0) {
      return InvalidArgument("node '" + n.name + "' holds a " + std::string(TierName(n.holds)) +
                             " copy but has no local load rate (zero bandwidth)");
    }
  }
  if (r.targets.empty()) return InvalidArgument("the target set is empty");
  std::set<int32_t> targets, sources;
  for (int32_t t : r.targets) {
    if (t < 0 || static_cast<size_t>(t) >= r.nodes.size())
      return InvalidArgument("target " + std::to_string(t) + " is not a node of the request");
    if (!targets.insert(t).second) return InvalidArgument("target " + NodeName(r, t) + " is listed twice");
  }
  for (int32_t s : r.sources) {
    if (s < 0 || static_cast<size_t>(s) >= r.nodes.size())
      return InvalidArgument("source " + std::to_string(s) + " is not a node of the request");
    if (!sources.insert(s).second) return InvalidArgument("source " + NodeName(r, s) + " is listed twice");
    if (targets.count(s)) return InvalidArgument("node " + NodeName(r, s) + " is both a source and a target");
    if (r.nodes[s].holds != Tier::kGpu && r.nodes[s].holds != Tier::kHost) {
      return InvalidArgument("source " + NodeName(r, s) + " holds no copy in GPU or host memory to send from");
    }
  }
  if (r.sources.empty()) {
    for (int32_t t : r.targets) {
      if (r.nodes[t].holds == Tier::kNone) {
        return InvalidArgument("there is no source, and target " + NodeName(r, t) + " holds no local copy");
      }
    }
  }
  for (int32_t t : r.targets) {
    if (r.nodes[t].holds == Tier::kGpu) {
      return InvalidArgument("target " + NodeName(r, t) + " already holds the model in GPU memory");
    }
  }
  if (r.max_pipeline_stages < 0) return InvalidArgument("max_pipeline_stages must not be negative");
  return Status::Ok();
}

Result<Plan> MakePlan(const PlanRequest& request, std::string_view algorithm) {
  const PlanAlgorithm* a = FindAlgorithm(algorithm);
  if (a == nullptr) {
    std::string list;
    for (const auto& n : AlgorithmNames()) list += (list.empty() ? "" : ", ") + n;
    return InvalidArgument("unknown planning algorithm '" + std::string(algorithm) + "' (known: " + list + ")");
  }
  MC_RETURN_IF_ERROR(ValidateRequest(request));
  return a->Make(request);
}

}  // namespace modelcast::planner
