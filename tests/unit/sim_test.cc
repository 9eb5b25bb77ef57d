#include <gtest/gtest.h>

#include <cmath>

#include "modelcast/planner/planner.h"
#include "modelcast/sim/simulator.h"
#include "support/plan_requests.h"

namespace modelcast::sim {
namespace {

planner::ClusterConfig Cluster(int nodes, double nic_bits, double latency = 0, double overhead = 0) {
  planner::ClusterConfig c;
  c.name = "test";
  c.per_transfer_overhead = overhead;
  for (int i = 0; i < nodes; ++i) {
    planner::NodeConfig n;
    n.name = "n" + std::to_string(i);
    n.gpus = 2;
    n.gpu_memory = 80ull << 30;
    n.gpu_hbm = 3e12;
    n.gpu_tflops = 900;
    n.host_memory = 1ull << 40;
    n.nic = nic_bits / 8;
    n.pcie = 25e9;
    n.ssd = 5e9;
    n.latency = latency;
    c.nodes.push_back(n);
  }
  return c;
}

// A model whose slices are all the same size, so that ticks map exactly to time.
ModelSpec EvenModel(uint32_t slices, uint32_t blocks) {
  ModelSpec m;
  m.name = "even";
  m.config = *planner::KnownModelConfig("llama-2-7b");
  m.shape.name = "even";
  for (uint32_t b = 0; b < blocks; ++b) {
    m.shape.block_first_slice.push_back(b * (slices / blocks));
    m.shape.block_layers.push_back(m.config.num_hidden_layers / blocks);
  }
  m.shape.block_first_slice.push_back(slices);
  m.shape.slice_bytes.assign(slices, 8u << 20);
  m.bytes = m.shape.TotalBytes();
  return m;
}

Scenario Build(const planner::ClusterConfig& c, const ModelSpec& m, int64_t sources, int64_t targets) {
  ScenarioOptions o;
  o.sources = sources;
  o.targets = targets;
  auto sc = BuildScenario(c, m, o);
  EXPECT_TRUE(sc.ok()) << sc.status().ToString();
  return *sc;
}

TEST(SimulatorTest, ReplayMatchesTheTickModelWithoutLatency) {
  const Scenario sc = Build(Cluster(16, 400e9), EvenModel(64, 8), 1, 15);
  for (const auto& algo : planner::AlgorithmNames()) {
    auto plan = planner::MakePlan(sc.request, algo);
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    auto r = Simulate(sc, *plan, {});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    const double ticks_time = plan->num_ticks * plan->tick_seconds;
    EXPECT_NEAR(r->completion, ticks_time, 1e-9 * ticks_time) << algo;
  }
}

TEST(SimulatorTest, LatencyAndOverheadOnlyAddTime) {
  const ModelSpec m = EvenModel(64, 8);
  const Scenario fast = Build(Cluster(9, 100e9), m, 1, 8);
  const Scenario slow = Build(Cluster(9, 100e9, 50e-6, 20e-6), m, 1, 8);
  auto plan = planner::MakePlan(fast.request, "lambdapipe");
  ASSERT_TRUE(plan.ok());
  const double a = Simulate(fast, *plan, {})->completion;
  const double b = Simulate(slow, *plan, {})->completion;
  EXPECT_GT(b, a);
  // Overhead and latency are per transfer on the critical path: (s + q - 1) hops at most.
  EXPECT_LT(b, a + (64 + 3) * (50e-6 + 20e-6) + 1e-9);
}

TEST(SimulatorTest, CompletionNearSOverBAndCapacityRamp) {
  const Scenario sc = Build(Cluster(65, 400e9, 3e-6, 10e-6), EvenModel(256, 32), 1, 64);
  auto plan = planner::MakePlan(sc.request, "lambdapipe");
  ASSERT_TRUE(plan.ok());
  auto r = Simulate(sc, *plan, {});
  ASSERT_TRUE(r.ok());
  EXPECT_LT(r->completion / r->ideal, 1.10);  // the bound at n = 64, >= 64 slices
  EXPECT_GT(r->completion / r->ideal, 1.0);
  // Capacity only grows, ending with every target a full instance.
  double last = r->base_capacity;
  for (const auto& p : r->capacity) {
    EXPECT_GE(p.tokens_per_s, last - 1e-6);
    last = p.tokens_per_s;
  }
  EXPECT_EQ(r->capacity.back().full_instances, 64);
  EXPECT_NEAR(r->final_capacity, r->base_capacity * 65, 1e-6 * r->final_capacity);
}

TEST(SimulatorTest, KWayServesBeforeTheCopiesComplete) {
  const Scenario sc = Build(Cluster(12, 400e9), EvenModel(256, 32), 2, 10);
  auto plan = planner::MakePlan(sc.request, "lambdapipe");
  ASSERT_TRUE(plan.ok());
  auto r = Simulate(sc, *plan, {});
  ASSERT_TRUE(r.ok());
  ASSERT_GE(r->first_pipeline, 0);
  EXPECT_LT(r->first_pipeline, 0.6 * r->completion);
  EXPECT_GT(r->NewTokensBy(r->completion), 0);
}

TEST(SimulatorTest, ScenarioErrors) {
  ScenarioOptions o;
  o.targets = 20;
  auto sc = BuildScenario(Cluster(4, 100e9), EvenModel(8, 2), o);
  ASSERT_FALSE(sc.ok());
  EXPECT_NE(sc.status().message().find("need 21 nodes"), std::string::npos) << sc.status().message();
  o.targets = 1;
  ModelSpec huge = EvenModel(8, 2);
  huge.bytes = 1ull << 40;  // 1 TiB of weights on 2 x 80 GiB
  sc = BuildScenario(Cluster(4, 100e9), huge, o);
  ASSERT_FALSE(sc.ok());
  EXPECT_NE(sc.status().message().find("needs 16 GPUs"), std::string::npos) << sc.status().message();
  EXPECT_FALSE(LoadModelSpec("llama-9-9000b", 0, 0).ok());
  auto spec = LoadModelSpec("llama-2-70b", 0, 0);
  ASSERT_TRUE(spec.ok());
  EXPECT_GT(spec->shape.num_slices(), 1000u);
  EXPECT_EQ(spec->shape.num_blocks(), 32u);
  EXPECT_FALSE(LoadModelSpec("llama-2-7b", 64, 0).ok());  // more blocks than its 32 layers
  // By size: within a few percent of what was asked.
  auto by_bytes = LoadModelSpec("140GB", 0, 0);
  ASSERT_TRUE(by_bytes.ok()) << by_bytes.status().ToString();
  EXPECT_NEAR(static_cast<double>(by_bytes->bytes), 140e9, 0.05 * 140e9);
  auto by_params = LoadModelSpec("13e9-params", 0, 0);
  ASSERT_TRUE(by_params.ok()) << by_params.status().ToString();
  EXPECT_NEAR(static_cast<double>(by_params->config.ParameterCount()), 13e9, 0.05 * 13e9);
  EXPECT_FALSE(LoadModelSpec("1MB", 0, 0).ok());
}

}  // namespace
}  // namespace modelcast::sim
