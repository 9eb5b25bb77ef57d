// Agents serving pipeline stages as real processes: after a scale-out, three agents each host a
// stage built from blocks in their stores, a driver in this process runs requests through them
// over UCX, and the answers equal the unsplit model's. Bad serve requests are refused.
#include "modelcast/fabric/channel_mux.h"
#include "modelcast/pipeline/remote.h"
#include "support/loopback_cluster.h"
#include "support/transports.h"

namespace modelcast {
namespace {

class ServingTest : public ScaleOutTest {
 protected:
  // A client of agent i's Agent service.
  struct AgentConn {
    std::unique_ptr<rpc::RpcConnection> conn;
    std::unique_ptr<rpc::AgentClient> client;
  };
  AgentConn Agent(int i) {
    AgentConn a;
    auto c = rpc::Connect("127.0.0.1", AnnouncedPort(*agents[i], "listening on "), security);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    a.conn = std::move(*c);
    a.client = std::make_unique<rpc::AgentClient>(a.conn->protocol);
    return a;
  }
  std::string FabricAddress(int i) {
    const std::string out = agents[i]->Stdout();
    const auto at = out.find("fabric at ");
    if (at == std::string::npos) return "";
    return out.substr(at + 10, out.find('\n', at) - at - 10);
  }
  rpc::ServeRequest Serve(int first, int end, const std::string& model = "tiny-llm") {
    rpc::ServeRequest r;
    r.header = header;
    r.model = model;
    r.__set_pipeline_id("p1");
    r.first_block = first;
    r.end_block = end;
    return r;
  }
};

TEST_F(ServingTest, AgentsServeAPipelineAcrossProcesses) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 3}));
  const auto op = WaitForEnd(ScaleOut("tiny-llm", 2));
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");

  // node-0 serves blocks 0-1 (it has the model on SSD: startServing loads them), node-1 block
  // 2 and node-2 block 3 (received into host memory by the scale-out).
  const std::vector<std::pair<int, int>> ranges = {{0, 2}, {2, 3}, {3, 4}};
  std::vector<pipeline::Hop> hops;
  for (int i = 0; i < 3; ++i) {
    auto a = Agent(i);
    a.client->startServing(Serve(ranges[i].first, ranges[i].second));
    rpc::AgentStatus st;
    a.client->getStatus(st, header);
    ASSERT_EQ(st.serving.size(), 1u);
    EXPECT_EQ(st.serving[0].state, rpc::InstanceState::PIPELINE);
    EXPECT_EQ(st.serving[0].pipeline_id, "p1");
    hops.push_back({"node-" + std::to_string(i), FabricAddress(i),
                    pipeline::StageKey("tiny-llm", ranges[i].first, ranges[i].second)});
  }

  // The driver speaks on the agents' serving channel, as an agent driving a pipeline would.
  auto transport = fabric::testing::Make("router");
  auto mux = fabric::ChannelMux::Create(*transport);
  ASSERT_TRUE(mux.ok());
  auto channel = (*mux)->Open(fabric::kServingChannel);
  ASSERT_TRUE(channel.ok());
  auto driver = pipeline::PipelineNode::Create(**channel);
  ASSERT_TRUE(driver.ok());
  auto remote = (*driver)->Connect(hops, model::Package::Open(dir / "pkg-tiny-llm")->manifest().config, 20);
  ASSERT_TRUE(remote.ok()) << remote.status().ToString();

  // The unsplit model from the package the scale-out multicast.
  auto pkg = model::Package::Open(dir / "pkg-tiny-llm");
  ASSERT_TRUE(pkg.ok());
  auto weights = pipeline::PackageWeights::Load(*pkg);
  ASSERT_TRUE(weights.ok());
  auto whole = pipeline::Stage::Create(pkg->manifest().config, {0, pkg->manifest().config.num_hidden_layers},
                                       (*weights)->lookup());
  ASSERT_TRUE(whole.ok());
  std::vector<std::unique_ptr<pipeline::Stage>> one;
  one.push_back(std::move(*whole));
  auto local = pipeline::LocalPipeline::Create(std::move(one));
  ASSERT_TRUE(local.ok());

  const std::vector<int32_t> prompt = {1, 5, 900, 33, 2, 71};
  for (const auto& sampling : {pipeline::SamplingParams{}, pipeline::SamplingParams{0.7, 0.9, 5}}) {
    auto want = pipeline::Generate(**local, 1, prompt, 12, sampling);
    auto got = pipeline::Generate(**remote, 1, prompt, 12, sampling);
    ASSERT_TRUE(want.ok());
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(got->tokens, want->tokens);
    EXPECT_EQ(got->logits, want->logits);
  }

  // Bad requests name what is wrong and change nothing.
  auto a1 = Agent(1);
  auto expect_refused = [&](const rpc::ServeRequest& r, const std::string& words) {
    try {
      a1.client->startServing(r);
      ADD_FAILURE() << "startServing accepted " << words;
    } catch (const rpc::InvalidRequest& e) {
      EXPECT_NE(e.message.find(words), std::string::npos) << e.message;
    }
  };
  expect_refused(Serve(2, 3), "already serves tiny-llm/blocks/2-3");
  expect_refused(Serve(3, 2), "not a non-empty range");
  expect_refused(Serve(0, 9), "not a non-empty range");
  expect_refused(Serve(0, 1, "no-such-model"), "model 'no-such-model' is not known");
  rpc::AgentStatus st;
  a1.client->getStatus(st, header);
  EXPECT_EQ(st.serving.size(), 1u);

  // Once node-1 stops serving its stage, a step through it fails naming node-1 and the stage.
  a1.client->stopServing(Serve(2, 3));
  auto after = pipeline::Generate(**remote, 2, prompt, 2, pipeline::SamplingParams{});
  ASSERT_FALSE(after.ok());
  EXPECT_NE(after.status().message().find("node 'node-1' serves no stage 'tiny-llm/blocks/2-3'"), std::string::npos)
      << after.status().ToString();
}

}  // namespace
}  // namespace modelcast
