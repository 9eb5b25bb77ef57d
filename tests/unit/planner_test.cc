// Property tests of the planner: every plan validated (every target gets every slice once,
// nobody sends what it does not hold, no link over its rate, pipelines valid), and the
// completion and first-pipeline bounds checked on many random instances.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <random>

#include "modelcast/planner/pipelines.h"
#include "modelcast/planner/planner.h"
#include "support/plan_requests.h"

namespace modelcast::planner {
namespace {

using testing::CeilLog2;
using testing::SimpleRequest;
using testing::UniformModel;

Plan MustPlan(const PlanRequest& r, const std::string& algo) {
  auto p = MakePlan(r, algo);
  EXPECT_TRUE(p.ok()) << algo << ": " << p.status().ToString();
  if (!p.ok()) return Plan{};
  Status v = ValidatePlan(r, *p);
  EXPECT_TRUE(v.ok()) << algo << ": " << v.ToString();
  return *p;
}

// lambdapipe with one source is round-optimal for every node count: s + ceil(log2 p) - 1
// ticks with p = targets + 1 nodes (the issue asks for this at powers of two and allows one
// tick more otherwise).
TEST(PlannerTest, LambdaPipeIsRoundOptimalForEveryNodeCount) {
  for (uint32_t targets = 1; targets <= 300; ++targets) {
    const uint32_t q = CeilLog2(targets + 1);
    for (uint32_t s : {1u, 2u, 3u, q, q + 1, 2 * q + 1, 17u}) {
      const PlanRequest r = SimpleRequest(targets, 1, UniformModel(s, std::min(s, 4u)));
      const Plan p = MustPlan(r, "lambdapipe");
      ASSERT_EQ(p.num_ticks, s + q - 1) << targets << " targets, " << s << " slices";
    }
  }
}

TEST(PlannerTest, LambdaPipeLargeNodeCounts) {
  for (uint32_t targets : {511u, 512u, 513u, 1000u, 1023u, 1024u, 1100u}) {
    const uint32_t s = 64;
    const PlanRequest r = SimpleRequest(targets, 1, UniformModel(s, 8));
    const Plan p = MustPlan(r, "lambdapipe");
    EXPECT_EQ(p.num_ticks, s + CeilLog2(targets + 1) - 1) << targets;
  }
}

// Random instances across the issue's ranges: n 1..1000+, s 1..512, K 1..8.
TEST(PlannerTest, RandomInstancesAreValidAndWithinBound) {
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 60; ++trial) {
    const uint32_t n = std::uniform_int_distribution<uint32_t>(1, trial % 10 == 0 ? 1100 : 200)(rng);
    const uint32_t s = std::uniform_int_distribution<uint32_t>(1, trial % 7 == 0 ? 512 : 96)(rng);
    const uint32_t k = std::uniform_int_distribution<uint32_t>(1, 8)(rng);
    const uint32_t blocks = std::uniform_int_distribution<uint32_t>(1, std::min(s, 32u))(rng);
    const PlanRequest r = SimpleRequest(n, k, UniformModel(s, blocks));
    const Plan p = MustPlan(r, "lambdapipe");
    // Each group of ~n/k targets runs its own optimal multicast.
    const uint32_t groups = std::min(k, n);
    const uint32_t largest = (n + groups - 1) / groups;
    EXPECT_LE(p.num_ticks, s + CeilLog2(largest + 1) - 1) << "n=" << n << " s=" << s << " k=" << k;
  }
}

// With K sources the receivers split into K groups whose slice orders start at block
// boundaries about s/K apart. Bound (proved from the schedule: in a group of g targets,
// every member holds the first c slices of its order after c + ceil(log2(g + 1)) - 1 ticks):
// the first full pipeline exists by max over groups of (c_j + ceil(log2(g_j + 1)) - 1), where
// c_j is the length of group j's chunk (from its start to the next group's start).
TEST(PlannerTest, KWayFirstPipelineBound) {
  std::mt19937 rng(99);
  for (int trial = 0; trial < 40; ++trial) {
    const uint32_t k = std::uniform_int_distribution<uint32_t>(2, 8)(rng);
    const uint32_t n = std::uniform_int_distribution<uint32_t>(k, 150)(rng);
    const uint32_t blocks = std::uniform_int_distribution<uint32_t>(k, 40)(rng);
    const uint32_t s = blocks * std::uniform_int_distribution<uint32_t>(1, 12)(rng);
    const ModelShape m = UniformModel(s, blocks);
    const PlanRequest r = SimpleRequest(n, k, m);
    const Plan p = MustPlan(r, "lambdapipe");
    // Recompute the group chunks as the planner does: block boundaries nearest j * s / k.
    std::vector<uint32_t> starts(k, 0);
    for (uint32_t g = 1; g < k; ++g) {
      const double want = static_cast<double>(g) * s / k;
      uint32_t best = 0;
      for (uint32_t first : m.block_first_slice) {
        if (first < s && std::abs(first - want) < std::abs(best - want)) best = first;
      }
      starts[g] = std::max(best, starts[g - 1]);
    }
    uint32_t bound = 0;
    const uint32_t group = (n + k - 1) / k;
    for (uint32_t g = 0; g < k; ++g) {
      const uint32_t end = g + 1 < k ? starts[g + 1] : s;
      bound = std::max(bound, end - starts[g] + CeilLog2(group + 1) - 1);
    }
    ASSERT_GE(p.FirstPipelineTick(), 0) << "no pipeline ever formed: k=" << k << " n=" << n << " s=" << s;
    EXPECT_LE(p.FirstPipelineTick(), bound) << "k=" << k << " n=" << n << " s=" << s << " blocks=" << blocks;
    // And it is far sooner than the first full copy.
    EXPECT_LT(p.FirstPipelineTick(), p.FirstFullTick());
  }
}

TEST(PlannerTest, SingleSourceServesOnlyAtTheEnd) {
  const PlanRequest r = SimpleRequest(15, 1, UniformModel(64, 8));
  const Plan p = MustPlan(r, "lambdapipe");
  // With one source every target receives the slices in the same order: no pipeline can form
  // before the tail of the multicast (and often none forms at all).
  EXPECT_TRUE(p.FirstPipelineTick() < 0 || p.FirstPipelineTick() >= 56) << p.FirstPipelineTick();
  EXPECT_GE(p.FirstFullTick(), 64);
}

TEST(PlannerTest, StragglerIsRoutedAround) {
  // 16 targets at 50 GB/s and one at a tenth of that.
  PlanRequest r = SimpleRequest(16, 1, UniformModel(64, 8));
  r.nodes[5].nic = 5e9;
  const Plan p = MustPlan(r, "lambdapipe");
  int32_t core_done = 0;
  for (int32_t t : r.targets) {
    if (t != 5) core_done = std::max(core_done, p.full_at[t]);
  }
  // The 15 fast targets finish as if the straggler were not there (16 nodes: q = 4).
  EXPECT_LE(core_done, 64 + 4 - 1);
  // The straggler needs 10 ticks per slice on its own link: within 1.3x of that.
  EXPECT_LE(p.full_at[5], static_cast<int32_t>(1.3 * 64 * 10));
  EXPECT_FALSE(p.notes.empty());
}

TEST(PlannerTest, HeterogeneousLinksStayValid) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    PlanRequest r = SimpleRequest(std::uniform_int_distribution<uint32_t>(2, 60)(rng),
                                  std::uniform_int_distribution<uint32_t>(1, 3)(rng),
                                  UniformModel(std::uniform_int_distribution<uint32_t>(4, 48)(rng), 4));
    for (auto& n : r.nodes) n.nic = std::uniform_real_distribution<double>(5e9, 50e9)(rng);
    for (const auto& algo : AlgorithmNames()) MustPlan(r, algo);
  }
}

TEST(PlannerTest, LocalityTakesTargetsOutOfTheTree) {
  PlanRequest r = SimpleRequest(8, 1, UniformModel(32, 4));
  r.nodes[3].holds = Tier::kHost;  // host memory to GPU at 200 GB/s: faster than the network
  r.nodes[3].local_rate = 200e9;
  r.nodes[4].holds = Tier::kSsd;  // SSD at 1 GB/s: slower than the multicast, stays in the tree
  r.nodes[4].local_rate = 1e9;
  const Plan p = MustPlan(r, "lambdapipe");
  for (const auto& t : p.transfers) {
    if (t.dst == 3) {
      EXPECT_TRUE(t.local()) << "node 3 should load its host copy";
    }
    if (t.dst == 4) {
      EXPECT_FALSE(t.local()) << "node 4's SSD is slower than the multicast";
    }
  }
  r.locality = false;
  const Plan q = MustPlan(r, "lambdapipe");
  for (const auto& t : q.transfers) EXPECT_FALSE(t.local());
}

TEST(PlannerTest, BaselinesHaveTheirTextbookLengths) {
  const uint32_t s = 32, n = 15;
  const PlanRequest r = SimpleRequest(n, 1, UniformModel(s, 4));
  EXPECT_EQ(MustPlan(r, "unicast").num_ticks, n * s);
  EXPECT_EQ(MustPlan(r, "chain").num_ticks, s + n - 1);
  EXPECT_EQ(MustPlan(r, "binomial-whole").num_ticks, s * CeilLog2(n + 1));
  const Plan tree = MustPlan(r, "binary-tree");
  EXPECT_GE(tree.num_ticks, 2 * s);  // each parent splits its link between two children
  const Plan lp = MustPlan(r, "lambdapipe");
  for (const auto& algo : {"unicast", "chain", "binomial-whole", "binary-tree"}) {
    EXPECT_LT(lp.num_ticks, MustPlan(r, algo).num_ticks) << algo;
  }
}

TEST(PlannerTest, LocalBaselineLoadsOwnCopies) {
  PlanRequest r = SimpleRequest(6, 1, UniformModel(16, 4));
  for (int32_t t : r.targets) {
    r.nodes[t].holds = Tier::kSsd;
    r.nodes[t].local_rate = 5e9;
  }
  r.nodes[6].holds = Tier::kNone;  // one target without a copy gets it by unicast
  r.nodes[6].local_rate = 0;
  const Plan p = MustPlan(r, "local");
  for (const auto& t : p.transfers) EXPECT_EQ(t.local(), t.dst != 6);
  EXPECT_FALSE(p.notes.empty());
}

// Cut a plan at a random tick, fail random nodes, replan: every surviving target ends with
// every slice some survivor holds, and the lost slices are exactly those no survivor holds.
TEST(PlannerTest, ReplanAfterRandomFailures) {
  std::mt19937 rng(2024);
  for (int trial = 0; trial < 80; ++trial) {
    const uint32_t n = std::uniform_int_distribution<uint32_t>(2, trial % 8 == 0 ? 400 : 60)(rng);
    const uint32_t k = std::uniform_int_distribution<uint32_t>(1, 4)(rng);
    const uint32_t s = std::uniform_int_distribution<uint32_t>(1, 80)(rng);
    const PlanRequest r = SimpleRequest(n, k, UniformModel(s, std::min(s, 8u)));
    const Plan p = MustPlan(r, "lambdapipe");
    const uint32_t cut = std::uniform_int_distribution<uint32_t>(0, p.num_ticks)(rng);
    std::vector<SliceSet> held(r.nodes.size(), SliceSet(s));
    for (int32_t src : r.sources) held[src] = SliceSet(s, true);
    for (const auto& t : p.transfers) {
      if (t.end() <= cut) held[t.dst].Set(t.slice);
    }
    std::vector<int32_t> failed;
    for (size_t i = 0; i < r.nodes.size(); ++i) {
      if (std::bernoulli_distribution(trial % 5 == 0 ? 0.6 : 0.15)(rng)) failed.push_back(static_cast<int32_t>(i));
    }
    auto rp = Replan(r, held, failed);
    ASSERT_TRUE(rp.ok()) << rp.status().ToString();
    Status v = ValidatePlan(r, *rp, held, failed);
    ASSERT_TRUE(v.ok()) << "trial " << trial << ": " << v.ToString();
    SliceSet survivors_hold(s);
    for (size_t i = 0; i < r.nodes.size(); ++i) {
      if (std::find(failed.begin(), failed.end(), static_cast<int32_t>(i)) == failed.end()) survivors_hold.Add(held[i]);
    }
    std::vector<uint32_t> want_lost;
    for (uint32_t x = 0; x < s; ++x) {
      if (!survivors_hold.Has(x)) want_lost.push_back(x);
    }
    bool any_target_left = false;
    for (int32_t t : r.targets) {
      any_target_left =
          any_target_left || (std::find(failed.begin(), failed.end(), t) == failed.end() && !held[t].Full());
    }
    if (any_target_left) {
      EXPECT_EQ(rp->lost_slices, want_lost) << "trial " << trial;
    }
  }
}

TEST(PlannerTest, BadInputIsRefusedWithClearErrors) {
  const PlanRequest good = SimpleRequest(4, 1, UniformModel(8, 2));
  auto expect_error = [](PlanRequest r, const std::string& needle) {
    auto p = MakePlan(r, "lambdapipe");
    ASSERT_FALSE(p.ok());
    EXPECT_NE(p.status().message().find(needle), std::string::npos) << p.status().message();
  };
  PlanRequest r = good;
  r.targets.clear();
  expect_error(r, "target set is empty");
  r = good;
  r.targets.push_back(0);
  expect_error(r, "both a source and a target");
  r = good;
  r.nodes[2].nic = 0;
  expect_error(r, "link rate of 0");
  r = good;
  r.targets.push_back(r.targets[0]);
  expect_error(r, "listed twice");
  r = good;
  r.targets.push_back(99);
  expect_error(r, "not a node");
  r = good;
  r.nodes[0].holds = Tier::kNone;
  expect_error(r, "holds no copy");
  r = good;
  r.sources.clear();
  expect_error(r, "no source");
  r = good;
  r.nodes[2].holds = Tier::kSsd;
  expect_error(r, "no local load rate");
  r = good;
  r.model.slice_bytes.clear();
  expect_error(r, "has no slices");
  EXPECT_NE(MakePlan(good, "teleport").status().message().find("unknown planning algorithm 'teleport'"),
            std::string::npos);
  r = good;
  r.sources.clear();
  for (int32_t t : r.targets) {
    r.nodes[t].holds = Tier::kSsd;
    r.nodes[t].local_rate = 1e9;
  }
  EXPECT_NE(MakePlan(r, "chain").status().message().find("needs at least one source"), std::string::npos);
  EXPECT_TRUE(MakePlan(r, "lambdapipe").ok());
  // More blocks than layers is refused where shapes are built.
  auto shape = ModelShape::FromConfig("tiny", *KnownModelConfig("synth-tiny"), DType::kBF16, 5, 1 << 20);
  EXPECT_NE(shape.status().message().find("more than the model's 4 layers"), std::string::npos);
}

TEST(PlannerTest, PlanJsonRoundTrip) {
  const Plan p = MustPlan(SimpleRequest(9, 2, UniformModel(20, 5)), "lambdapipe");
  auto back = Plan::FromJson(nlohmann::json::parse(p.ToJson().dump()));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->ToJson(), p.ToJson());
  EXPECT_FALSE(Plan::FromJson(nlohmann::json::parse(R"({"algorithm": 3})")).ok());
  auto bad = p.ToJson();
  bad["transfers"][0] = {1, 2};
  EXPECT_NE(Plan::FromJson(bad).status().message().find("is not [tick, src, dst, slice, tier, duration]"),
            std::string::npos);
  // References to what is not there are refused, naming it (the fabric indexes by them).
  auto refused = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto j = p.ToJson();
    edit(j);
    auto r = Plan::FromJson(j);
    return r.ok() ? std::string("accepted") : r.status().message();
  };
  const std::string n = std::to_string(p.node_names.size());
  EXPECT_EQ(refused([](nlohmann::json& j) { j["transfers"][0][2] = 99; }), "plan: transfer 0 names node 99 of " + n);
  EXPECT_EQ(refused([](nlohmann::json& j) { j["transfers"][0][1] = -1; }), "plan: transfer 0 names node -1 of " + n);
  EXPECT_EQ(refused([](nlohmann::json& j) { j["transfers"][0][3] = 20; }), "plan: transfer 0 names slice 20 of 20");
  EXPECT_EQ(refused([](nlohmann::json& j) { j["transfers"][0][5] = 0; }),
            "plan: transfer 0 does not end within the plan's " + std::to_string(p.num_ticks) + " ticks");
  EXPECT_EQ(refused([](nlohmann::json& j) { j["full_at"].erase(0); }),
            "plan: full_at has " + std::to_string(p.node_names.size() - 1) + " entries for " + n + " nodes");
  EXPECT_EQ(refused([](nlohmann::json& j) { j["nodes"][1] = j["nodes"][0]; }),
            "plan: node names must be unique and non-empty");
  // Numbers that are not integers in range (nlohmann would convert them with undefined
  // behaviour; found by plan_fuzz, the input kept in its corpus as regression-float-tick).
  EXPECT_EQ(refused([](nlohmann::json& j) { j["ticks"] = 2.1e103; }).rfind("plan: ticks must be an integer", 0), 0u);
  EXPECT_EQ(refused([](nlohmann::json& j) { j["transfers"][0][0] = 1.5; })
                .rfind("plan: a transfer's tick must be an integer from 0 to 4294967295, got 1.5", 0),
            0u);
  EXPECT_EQ(refused([](nlohmann::json& j) { j["slices"] = -1; }).rfind("plan: slices must be an integer", 0), 0u);
  EXPECT_EQ(refused([](nlohmann::json& j) { j["pipelines"] = {{{"tick", 3}, {"pipelines", {{{0, 2, 9}}}}}}; }),
            "plan: a pipeline stage at tick 3 names node 0, blocks [2, 9) of " + n + " nodes and 5 blocks");
}

TEST(PipelinesTest, FormsShortBalancedDisjointPipelines) {
  const ModelShape m = UniformModel(8, 8);  // 8 blocks of one slice and one layer each
  auto set = [&](std::initializer_list<uint32_t> blocks) {
    SliceSet s(8);
    for (uint32_t b : blocks) s.Set(b);
    return s;
  };
  // a: 0-5, b: 3-7, c: 0-3, d: 4-7, e: 2 (alone, useless).
  std::vector<NodeBlocks> nodes = {{0, set({0, 1, 2, 3, 4, 5})},
                                   {1, set({3, 4, 5, 6, 7})},
                                   {2, set({0, 1, 2, 3})},
                                   {3, set({4, 5, 6, 7})},
                                   {4, set({2})}};
  const auto pipes = FormPipelines(m, nodes, 4);
  ASSERT_EQ(pipes.size(), 2u);
  std::vector<SliceSet> held(5, SliceSet(8));
  for (const auto& n : nodes) held[n.node] = n.blocks;
  for (const auto& p : pipes) {
    EXPECT_TRUE(ValidatePipeline(m, p, held).ok());
    EXPECT_EQ(p.stages.size(), 2u);
    // Balanced: each stage serves 4 of the 8 layers.
    for (const auto& st : p.stages) EXPECT_EQ(st.end_block - st.first_block, 4u);
  }
  EXPECT_TRUE(FormPipelines(m, {{0, set({0, 1, 2})}, {1, set({4, 5, 6, 7})}}, 4).empty());  // block 3 held by nobody
  EXPECT_TRUE(FormPipelines(m, nodes, 1).empty());                                          // nobody holds everything
}

}  // namespace
}  // namespace modelcast::planner
