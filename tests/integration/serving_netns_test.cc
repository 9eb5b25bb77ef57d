// Execute-while-load in the cluster in a box: a coordinator with its router and four agents,
// each in its own network namespace on a shaped link, the small model on the SSDs of node-1 and
// node-2 (K = 2 copies, cold: nothing serves it yet). Two clients (in the head's namespace) keep
// sending completion requests over HTTP while `modelcast scale-out -n 2` runs: the two
// receivers get the model's halves first (the k-way plan rotates each group's slice order), so
// they form a pipeline and answer requests before either has the whole model; every answer
// equals the unsplit model's for the same prompt and seed, and once the receivers are complete
// the pipeline dissolves into full local instances without a request failing or a token
// repeated.
#include <gtest/gtest.h>

#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "modelcast/model/package.h"
#include "modelcast/pipeline/pipeline.h"
#include "support/fabric_cluster.h"
#include "support/netns_control.h"
#include "support/process.h"
#include "support/temp_dir.h"

namespace modelcast {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::NetnsCluster;
using testing::ToolPath;

constexpr int kNodes = 4;
constexpr const char* kPrefix = "mcs";
constexpr const char* kToken = "netns-serving-token-0123456789ab";
constexpr int kMaxTokens = 6;

TEST(ServingNetnsTest, PipelinesServeBeforeAnyReceiverHasAFullCopy) {
  const std::string why = testing::NetnsUnavailableReason();
  if (!why.empty()) GTEST_SKIP() << why;
  testing::TempDir dir;
  Status s = testing::PrepareModel(dir.path(), "small", 7, 1 << 20);
  ASSERT_TRUE(s.ok()) << s.ToString();
  NetnsCluster cluster(kNodes, "100mbit", kPrefix);
  ASSERT_TRUE(cluster.status().ok()) << cluster.status().ToString();
  const std::string head_ip = NetnsCluster::Address(1);
  testing::NetnsControlPlane plane(dir.path(), cluster, kNodes);
  ASSERT_NO_FATAL_FAILURE(plane.Start(
      "100Mbit", kToken, {1, 2}, "512MiB",
      ",\n  serving: {fabric: {listen: '" + head_ip + ":7600', tls: tcp, net_devices: eth0}, http: {address: " +
          head_ip + ", port: 8000}, max_batch: 8}"));
  auto mc = [&](std::vector<std::string> args) { return plane.Mc(std::move(args)); };
  ASSERT_EQ(mc({"models", "--register", (dir / "pkg").string()}).exit_code, 0);
  const std::string model = nlohmann::json::parse(testing::ReadAll(dir / "pkg" / "manifest.json"))["name"];
  std::string seen;
  ASSERT_TRUE(plane.WaitAllAlive(&seen)) << seen;

  // The prompts, and what the unsplit model answers to each.
  auto pkg = model::Package::Open(dir / "pkg");
  ASSERT_TRUE(pkg.ok());
  auto weights = pipeline::PackageWeights::Load(*pkg);
  ASSERT_TRUE(weights.ok());
  const auto& c = pkg->manifest().config;
  std::vector<std::unique_ptr<pipeline::Stage>> one;
  one.push_back(std::move(*pipeline::Stage::Create(c, {0, c.num_hidden_layers}, (*weights)->lookup())));
  auto local = pipeline::LocalPipeline::Create(std::move(one));
  ASSERT_TRUE(local.ok());
  nlohmann::json prompts = nlohmann::json::array();
  std::vector<std::vector<int32_t>> want;
  for (int i = 0; i < 4; ++i) {
    const std::vector<int32_t> tokens = {1, 100 + i, 2000 + 37 * i, 5, 777 + i};
    const double temperature = i % 2 ? 0.8 : 0.0;
    prompts.push_back({{"tokens", tokens}, {"temperature", temperature}, {"seed", 40 + i}});
    auto g = pipeline::Generate(**local, 1, tokens, kMaxTokens,
                                pipeline::SamplingParams{temperature, 1.0, static_cast<uint64_t>(40 + i)},
                                static_cast<int32_t>(c.eos_token_id.value_or(-1)));
    ASSERT_TRUE(g.ok());
    want.push_back(g->tokens);
  }
  testing::WriteAll(dir / "prompts.json", prompts.dump());

  std::vector<std::unique_ptr<testing::Child>> clients;
  for (int k = 0; k < 2; ++k) {
    clients.push_back(std::make_unique<testing::Child>(
        plane.InNs(1, {"/usr/bin/python3", testing::SourcePath("tests/support/completion_client.py"),
                  "http://" + head_ip + ":8000", kToken, model, (dir / "prompts.json").string(),
                  std::to_string(kMaxTokens), (dir / ("answers-" + std::to_string(k) + ".jsonl")).string(),
                  (dir / "stop").string(), "150", std::to_string(k)})));
  }
  auto out = mc({"scale-out", model, "-n", "2", "--wait", "--json"});
  ASSERT_EQ(out.exit_code, 0) << out.err << out.out;
  const auto op = nlohmann::json::parse(out.out);
  ASSERT_EQ(op["state"], "SUCCEEDED") << out.out;
  // Keep asking a few seconds more: the pipelines dissolve into local instances.
  std::this_thread::sleep_for(4s);
  testing::WriteAll(dir / "stop", "");
  for (auto& cl : clients) {
    auto r = cl->Wait(60s);
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }

  double first_complete = 1e300;
  for (const auto& n : op["nodes"]) {
    if (n["role"] == "TARGET") first_complete = std::min(first_complete, n["complete_unix"].get<double>());
  }
  int answers = 0, early = 0, by_local_at_end = 0, failed = 0;
  double first_answer = 1e300;
  std::vector<nlohmann::json> last;
  for (int k = 0; k < 2; ++k) {
    std::ifstream in(dir / ("answers-" + std::to_string(k) + ".jsonl"));
    std::vector<nlohmann::json> mine;
    for (std::string line; std::getline(in, line);) {
      const auto a = nlohmann::json::parse(line);
      if (a["status"] == 0) continue;  // the router was not up yet
      answers++;
      if (a["status"] != 200) {
        failed++;
        ADD_FAILURE() << "a request failed: " << a.dump();
        continue;
      }
      EXPECT_EQ(a["tokens"].get<std::vector<int32_t>>(), want[a["prompt"].get<int>()]) << a.dump();
      first_answer = std::min(first_answer, a["end"].get<double>());
      const std::string by_engine = a["served_by"];
      if (by_engine.find("/p") != std::string::npos && a["end"].get<double>() < first_complete) early++;
      mine.push_back(a);
    }
    if (!mine.empty()) last.push_back(mine.back());
  }
  for (const auto& a : last) by_local_at_end += a["served_by"].get<std::string>().find('@') != std::string::npos;
  std::printf("scale-out 2 -> %d: %.2f s; first pipeline %.2f s after scaleOut; first answer %.2f s, first full copy "
              "%.2f s after scaleOut; %d answers, %d by pipelines before any receiver was complete\n",
              kNodes, op["seconds"].get<double>(), op.value("first_pipeline_s", -1.0),
              first_answer - op["created_unix"].get<double>(), first_complete - op["created_unix"].get<double>(),
              answers, early);
  EXPECT_TRUE(op.contains("first_pipeline_s")) << out.out;
  EXPECT_GT(early, 0) << "no request was answered by a pipeline before a receiver had the whole model";
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(by_local_at_end, 2) << "the last answers did not come from full local instances";

  const std::string log = plane.Stop();
  if (getenv("MODELCAST_TEST_LOGS")) std::fprintf(stderr, "%s\n", log.c_str());
}

}  // namespace
}  // namespace modelcast
