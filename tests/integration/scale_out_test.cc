// Real scale-outs on loopback: a coordinator and agents as processes, the model on one agent's
// SSD; scaleOut plans, dispatches, moves every slice over UCX into the targets' stores, and
// the operation reports success with every target's slices counted. Then what goes wrong: bad
// requests, an agent killed mid-operation (with and without a spare), the coordinator killed
// mid-operation, two models at once; and the Python autoscaler scaling out and in.
#include <nlohmann/json.hpp>

#include "support/loopback_cluster.h"
#include "support/wait.h"

namespace modelcast {
namespace {

TEST_F(ScaleOutTest, OneToThreeOnLoopback) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 4}));
  rpc::ScaleOutRequest so;
  so.header = header;
  so.model = "tiny-llm";
  so.replicas = 2;
  rpc::ScaleOutResponse resp;
  client->scaleOut(resp, so);
  EXPECT_EQ(resp.sources, std::vector<std::string>{"node-0"});
  EXPECT_EQ(resp.targets, (std::vector<std::string>{"node-1", "node-2"}));
  const rpc::OperationStatus op = WaitForEnd(resp.operation_id);
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
  EXPECT_EQ(op.replans, 0);
  for (const auto& np : op.nodes) {
    if (np.role != rpc::NodeRole::TARGET) continue;
    EXPECT_EQ(np.slices_received, static_cast<int32_t>(nslices)) << np.node;
    EXPECT_EQ(np.state, rpc::NodeState::COMPLETE) << np.node;
    EXPECT_GT(np.bytes_received, 0) << np.node;
  }
  EXPECT_EQ(InstanceNodes(), (std::vector<std::string>{"node-1:LOCAL", "node-2:LOCAL"}));
  // Every target holds the whole model in host memory, and writes it behind to its SSD.
  for (const std::string n : {"node-1", "node-2"}) ExpectVerifiedCopy(n);
  // The targets' next heartbeats carry their new holdings to the coordinator.
  auto targets_holding = [&] {
    rpc::ClusterStatus status;
    client->getClusterStatus(status, header);
    int holding = 0;
    for (const auto& node : status.nodes) {
      if (node.name == "node-0") continue;
      for (const auto& h : node.inventory.models) holding += h.model == "tiny-llm" && Count(h.host) == nslices;
    }
    return holding;
  };
  testing::WaitUntil([&] { return targets_holding() >= 2; }, 10s, 20ms);
  EXPECT_EQ(targets_holding(), 2) << "the targets do not report the model in host memory";
  // What the daemons' Prometheus endpoints say about it.
  const std::string coord_metrics = Metrics(*coordinator);
  EXPECT_NE(coord_metrics.find("modelcast_operations{state=\"SUCCEEDED\"} 1\n"), std::string::npos) << coord_metrics;
  EXPECT_NE(coord_metrics.find("modelcast_slices_moved_total " + std::to_string(2 * nslices) + "\n"), std::string::npos)
      << coord_metrics;
  EXPECT_NE(coord_metrics.find("modelcast_nodes_alive 4\n"), std::string::npos) << coord_metrics;
  const std::string agent_metrics = Metrics(*agents[1]);
  EXPECT_NE(agent_metrics.find("modelcast_fabric_slices_total{direction=\"in\"} " + std::to_string(nslices) + "\n"),
            std::string::npos)
      << agent_metrics;
  EXPECT_NE(agent_metrics.find("# TYPE modelcast_tier_used_bytes gauge\n"), std::string::npos) << agent_metrics;

  // The example autoscaler (Python): 6 req/s at 2 per replica wants 3 replicas; it sees 2 and
  // scales out by one, following the operation to its end: to node-0, which holds the whole
  // model in host memory since it sent it (warm nodes first), and loads it from there.
  // Then 2 req/s wants 1: it scales in by two.
  testing::WriteAll(dir / "token", kToken);
  auto autoscaler = [&](const std::string& rate) {
    testing::WriteAll(dir / "rate", rate + "\n");
    setenv("PYTHONPATH", MODELCAST_TEST_GEN_PY, 1);
    auto py = testing::RunProcess({"/usr/bin/python3", testing::SourcePath("examples/autoscaler.py"), "--coordinator",
                                   "127.0.0.1:" + std::to_string(port), "--token-file", (dir / "token").string(),
                                   "--model", "tiny-llm", "--rate-file", (dir / "rate").string(), "--window", "0.1",
                                   "--once"},
                                  60s);
    unsetenv("PYTHONPATH");
    return py;
  };
  auto py = autoscaler("6");
  if (py.err.find("No module named 'thrift'") != std::string::npos) GTEST_SKIP() << "python3-thrift is missing";
  EXPECT_EQ(py.exit_code, 0) << py.err;
  EXPECT_NE(py.out.find("rate=   6.00 req/s  replicas 2 -> 3"), std::string::npos) << py.out;
  EXPECT_NE(py.out.find("(scale-out to node-0): SUCCEEDED"), std::string::npos) << py.out;
  EXPECT_EQ(InstanceNodes(), (std::vector<std::string>{"node-0:LOCAL", "node-1:LOCAL", "node-2:LOCAL"}));
  py = autoscaler("2");
  EXPECT_EQ(py.exit_code, 0) << py.err;
  EXPECT_NE(py.out.find("replicas 3 -> 1"), std::string::npos) << py.out;
  // The newest go first: node-0, then one of node-1 and node-2 (loaded at the same moment).
  EXPECT_NE(py.out.find("(scale-in to node-"), std::string::npos) << py.out;
  EXPECT_NE(py.out.find("): SUCCEEDED"), std::string::npos) << py.out;
  const auto left = InstanceNodes();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_NE(left[0], "node-0:LOCAL");
  std::vector<rpc::ModelInfo> models;
  client->listModels(models, header);
  ASSERT_EQ(models.size(), 1u);
  EXPECT_EQ(models[0].instances, 1);
  EXPECT_EQ(models[0].loading, 0);
}

// Bad scale requests are refused with what is wrong, and change nothing.
// A copy an operation just completed is a source of the next scale-out at once, before its
// node's next heartbeat reports it (an autoscaler scales out again as soon as one ends; found by
// `loadspike.py check`, whose second source was left out 40 ms after it completed).
TEST_F(ScaleOutTest, ACopyJustCompletedFeedsTheNextScaleOut) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 4, .heartbeat_interval = "2s", .heartbeat_deadline = "20s"}));
  auto scale = [&](const std::string& target) {
    rpc::ScaleOutRequest so;
    so.header = header;
    so.model = "tiny-llm";
    so.replicas = 1;
    so.__set_options(rpc::ScaleOptions());
    so.options.__set_targets({target});
    rpc::ScaleOutResponse resp;
    client->scaleOut(resp, so);
    const rpc::OperationStatus op = WaitForEnd(resp.operation_id);
    EXPECT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
    return resp;
  };
  EXPECT_EQ(scale("node-1").sources, std::vector<std::string>{"node-0"});
  const auto second = scale("node-2");
  EXPECT_EQ(second.sources, (std::vector<std::string>{"node-0", "node-1"}));
  for (const std::string n : {"node-1", "node-2"}) ExpectVerifiedCopy(n);
}

TEST_F(ScaleOutTest, BadScaleRequestsAreRefused) {
  // Payload transfers wait 30 ms: the scale-out at the end still runs when a second is asked.
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 2, .fault = "delay=30ms"}));
  auto refused = [&](const std::function<void()>& call) -> std::string {
    try {
      call();
    } catch (const rpc::InvalidRequest& e) {
      return rpc::to_string(e.code) + ": " + e.message;
    }
    return "accepted";
  };
  EXPECT_EQ(refused([&] { ScaleOut("nope", 1); }), "NOT_FOUND: scaleOut: unknown model 'nope'");
  EXPECT_EQ(refused([&] { ScaleOut("tiny-llm", 0); }), "INVALID_ARGUMENT: scaleOut: replicas must be at least 1, got 0");
  EXPECT_EQ(refused([&] { ScaleOut("tiny-llm", 2); }),
            "RESOURCE_EXHAUSTED: scaleOut: 2 new replicas of model 'tiny-llm' asked, but only 1 live node(s) can take "
            "one (nodes serving it cannot, and one holding it must send)");
  rpc::ScaleInRequest si;
  si.header = header;
  si.model = "tiny-llm";
  si.replicas = 1;
  std::string id;
  EXPECT_EQ(refused([&] { client->scaleIn(id, si); }),
            "RESOURCE_EXHAUSTED: scaleIn: 1 replicas of model 'tiny-llm' to release, but it has 0 instance(s)");
  si.__set_nodes({"node-1"});
  EXPECT_EQ(refused([&] { client->scaleIn(id, si); }),
            "INVALID_ARGUMENT: scaleIn: node 'node-1' has no serving instance of model 'tiny-llm'");
  std::vector<rpc::Instance> list;
  EXPECT_EQ(refused([&] { client->listInstances(list, header, "nope"); }),
            "NOT_FOUND: listInstances: unknown model 'nope'");
  // A second scale-out of a model while one runs is refused, naming the running one.
  const std::string first = ScaleOut("tiny-llm", 1);
  EXPECT_EQ(refused([&] { ScaleOut("tiny-llm", 1); }),
            "FAILED_PRECONDITION: scaleOut: model 'tiny-llm' already has operation " + first + " running");
  EXPECT_EQ(WaitForEnd(first).state, rpc::OperationState::SUCCEEDED);
}

// The command line against the live cluster: the coordinator's plan (nothing moves), a
// scale-out followed to its end, the instances, a scale-in of a named node, and a bad one.
// An agent takes a plan fragment only when it reads what the node holds: sending or loading
// a slice it neither holds nor receives is refused before anything runs, as is a fragment
// without the cluster's credentials.
TEST_F(ScaleOutTest, AnAgentRefusesFragmentsThatReadWhatItDoesNotHold) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 2}));
  auto c = rpc::Connect("127.0.0.1", AnnouncedPort(*agents[1], "listening on "), security);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  rpc::AgentClient agent((*c)->protocol);
  auto fragment = [&] {
    rpc::RunFragmentRequest f;
    f.header = header;
    f.operation_id = "op-forged";
    f.model = "tiny-llm";
    f.manifest_json = testing::ReadAll(dir / "pkg-tiny-llm" / "manifest.json");
    f.deadline_s = 10;
    f.channel = 7;
    return f;
  };
  auto refused = [&](const rpc::RunFragmentRequest& f) -> std::string {
    try {
      agent.runFragment(f);
    } catch (const rpc::InvalidRequest& e) {
      return rpc::to_string(e.code) + ": " + e.message;
    } catch (const rpc::NotAuthorized& e) {
      return "NOT_AUTHORIZED: " + e.message;
    }
    return "accepted";
  };
  // node-1 holds nothing of the model.
  auto send = fragment();
  send.sends.push_back(rpc::FragmentStep());
  send.sends.back().peer = "node-0";
  send.sends.back().slice = 3;
  EXPECT_EQ(refused(send),
            "FAILED_PRECONDITION: runFragment: would send slice 3 of model 'tiny-llm' to 'node-0', which this node "
            "neither holds nor receives");
  auto load = fragment();
  load.local_loads = {0};
  EXPECT_EQ(refused(load),
            "FAILED_PRECONDITION: runFragment: would load slice 0 of model 'tiny-llm' locally, which this node does not "
            "hold");
  auto outside = fragment();
  outside.receives.push_back(rpc::FragmentStep());
  outside.receives.back().peer = "node-0";
  outside.receives.back().slice = 1 << 20;
  EXPECT_NE(refused(outside).find("INVALID_ARGUMENT: runFragment: plan fragment of 'node-1' for model 'tiny-llm' "
                                  "names slice 1048576 (peer 'node-0'), but the model has"),
            std::string::npos)
      << refused(outside);
  // A package whose config this agent cannot serve (made by a newer modelcast, say) is refused
  // before anything is received, in the words `prepare` uses for the same config.
  auto unservable = fragment();
  {
    auto j = nlohmann::json::parse(unservable.manifest_json);
    j["config"]["hidden_act"] = "gelu_pytorch_tanh";
    unservable.manifest_json = j.dump();
  }
  EXPECT_NE(refused(unservable).find("runFragment: model 'tiny-llm' manifest: config: key 'hidden_act': "
                                     "\"gelu_pytorch_tanh\" is not implemented (only silu)"),
            std::string::npos)
      << refused(unservable);
  auto anonymous = send;
  anonymous.header = rpc::RequestHeader();
  EXPECT_EQ(refused(anonymous).rfind("NOT_AUTHORIZED", 0), 0u) << refused(anonymous);
  const std::string forged_token = "a-forged-token-0123456789abcdef";
  auto forged = send;
  forged.header.__set_token(forged_token);
  EXPECT_EQ(refused(forged).rfind("NOT_AUTHORIZED", 0), 0u) << refused(forged);
  EXPECT_TRUE(Running(1).empty());
  // No credential, right or wrong, shows in the metrics or the logs.
  for (auto* p : {coordinator.get(), agents[0].get(), agents[1].get()}) {
    const std::string metrics = Metrics(*p);
    EXPECT_FALSE(metrics.empty());
    EXPECT_EQ(metrics.find(kToken), std::string::npos);
    EXPECT_EQ(metrics.find(forged_token), std::string::npos);
  }
  agents[1]->Kill(SIGTERM);
  const auto log = agents[1]->Wait(30s).err;
  EXPECT_NE(log.find("refused runFragment"), std::string::npos) << log;
  EXPECT_EQ(log.find(kToken), std::string::npos);
  EXPECT_EQ(log.find(forged_token), std::string::npos);
}

TEST_F(ScaleOutTest, CommandLineDrivesTheCoordinator) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 3}));
  testing::WriteAll(dir / "token", kToken);
  auto mc = [&](std::vector<std::string> args) {
    args.insert(args.begin(), ToolPath("modelcast"));
    args.insert(args.end(), {"--coordinator", "127.0.0.1:" + std::to_string(port), "--token-file",
                             (dir / "token").string()});
    return testing::RunProcess(args, 60s);
  };
  auto plan = mc({"plan", "--dry-run", "tiny-llm", "-n", "2", "--json"});
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  auto pj = nlohmann::json::parse(plan.out);
  EXPECT_EQ(pj["nodes"], (nlohmann::json{"node-0", "node-1", "node-2"}));
  EXPECT_TRUE(InstanceNodes().empty()) << "a dry run placed something";
  auto text = mc({"plan", "--dry-run", "tiny-llm", "-n", "2", "--ticks", "3"});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("plan for tiny-llm: 1 source(s) (node-0) to 2 target(s) (node-1, node-2)"),
            std::string::npos)
      << text.out;
  auto out = mc({"scale-out", "tiny-llm", "-n", "2", "--wait", "--json"});
  ASSERT_EQ(out.exit_code, 0) << out.err;
  auto oj = nlohmann::json::parse(out.out);
  EXPECT_EQ(oj["state"], "SUCCEEDED");
  EXPECT_EQ(oj["kind"], "SCALE_OUT");
  auto inst = mc({"instances", "tiny-llm", "--json"});
  ASSERT_EQ(inst.exit_code, 0) << inst.err;
  EXPECT_EQ(nlohmann::json::parse(inst.out).size(), 2u) << inst.out;
  auto in = mc({"scale-in", "tiny-llm", "-n", "1", "--nodes", "node-1", "--wait"});
  ASSERT_EQ(in.exit_code, 0) << in.err;
  EXPECT_NE(in.out.find("scale-in of tiny-llm, SUCCEEDED"), std::string::npos) << in.out;
  EXPECT_NE(in.out.find("node-1           RELEASED"), std::string::npos) << in.out;
  EXPECT_EQ(InstanceNodes(), std::vector<std::string>{"node-2:LOCAL"});
  auto bad = mc({"scale-in", "tiny-llm", "-n", "1", "--nodes", "node-1"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("scaleIn: node 'node-1' has no serving instance of model 'tiny-llm'"), std::string::npos)
      << bad.err;
}

// A target killed mid-operation with a spare node in the cluster: the survivors' fragments are
// cancelled, the rest is replanned with the spare standing in, and the operation succeeds,
// reporting the loss.
TEST_F(ScaleOutTest, AKilledTargetIsReplacedByASpare) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 4, .fault = "delay=30ms"}));  // the scale-out lasts seconds
  const std::string id = ScaleOut("tiny-llm", 2);                               // to node-1 and node-2
  ASSERT_TRUE(WaitReceiving(id, "node-2")) << "the scale-out ended before a target could be killed";
  agents[2]->Kill(SIGKILL);
  const rpc::OperationStatus op = WaitForEnd(id);
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
  EXPECT_GE(op.replans, 1);
  auto nodes = ByNode(op);
  EXPECT_EQ(nodes["node-2"].state, rpc::NodeState::LOST);
  EXPECT_EQ(nodes["node-1"].state, rpc::NodeState::COMPLETE);
  EXPECT_EQ(nodes["node-3"].state, rpc::NodeState::COMPLETE);
  EXPECT_EQ(nodes["node-3"].role, rpc::NodeRole::TARGET);
  ExpectVerifiedCopy("node-1");
  ExpectVerifiedCopy("node-3");
  EXPECT_EQ(InstanceNodes(), (std::vector<std::string>{"node-1:LOCAL", "node-3:LOCAL"}));
  for (int i : {0, 1, 3}) EXPECT_TRUE(Running(i).empty()) << "node-" << i;
}

// A target whose store refuses (its host pool cannot take the model): its fragment fails,
// saying it was its store, before any slice is counted for it; the coordinator takes it as
// lost rather than trying it again, and a spare stands in.
TEST_F(ScaleOutTest, ATargetWhoseStoreRefusesIsReplacedByASpare) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 4, .host_capacity = {{1, "64KiB"}}}));
  const std::string id = ScaleOut("tiny-llm", 2);  // to node-1 and node-2
  const rpc::OperationStatus op = WaitForEnd(id);
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
  EXPECT_GE(op.replans, 1);
  auto nodes = ByNode(op);
  EXPECT_EQ(nodes["node-1"].state, rpc::NodeState::LOST);
  ASSERT_TRUE(nodes["node-1"].__isset.error);
  EXPECT_NE(nodes["node-1"].error.find("its store refused"), std::string::npos) << nodes["node-1"].error;
  EXPECT_NE(nodes["node-1"].error.find("node 'node-1'"), std::string::npos) << nodes["node-1"].error;
  EXPECT_NE(nodes["node-1"].error.find("block"), std::string::npos) << nodes["node-1"].error;
  EXPECT_NE(nodes["node-1"].error.find("tiny-llm"), std::string::npos) << nodes["node-1"].error;
  EXPECT_EQ(nodes["node-1"].slices_received, 0);
  EXPECT_EQ(nodes["node-2"].state, rpc::NodeState::COMPLETE);
  EXPECT_EQ(nodes["node-3"].state, rpc::NodeState::COMPLETE);
  EXPECT_EQ(nodes["node-3"].role, rpc::NodeRole::TARGET);
  ExpectVerifiedCopy("node-2");
  ExpectVerifiedCopy("node-3");
  EXPECT_EQ(InstanceNodes(), (std::vector<std::string>{"node-2:LOCAL", "node-3:LOCAL"}));
  for (int i : {0, 1, 2, 3}) EXPECT_TRUE(Running(i).empty()) << "node-" << i;
}

// A target killed mid-operation with no spare: the others finish (replanned around it), and
// the operation ends failed, saying how many replicas it loaded and which node was lost.
TEST_F(ScaleOutTest, AKilledTargetIsReported) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 3, .fault = "delay=30ms"}));
  const std::string id = ScaleOut("tiny-llm", 2);
  ASSERT_TRUE(WaitReceiving(id, "node-2")) << "the scale-out ended before a target could be killed";
  agents[2]->Kill(SIGKILL);
  const rpc::OperationStatus op = WaitForEnd(id);
  EXPECT_EQ(op.state, rpc::OperationState::FAILED);
  ASSERT_TRUE(op.__isset.error);
  EXPECT_NE(op.error.find("1 of 2 replicas loaded"), std::string::npos) << op.error;
  EXPECT_NE(op.error.find("node-2 (lost"), std::string::npos) << op.error;
  auto nodes = ByNode(op);
  EXPECT_EQ(nodes["node-1"].state, rpc::NodeState::COMPLETE);
  ExpectVerifiedCopy("node-1");
  EXPECT_EQ(InstanceNodes(), std::vector<std::string>{"node-1:LOCAL"});
  // Its heartbeats stop: it is taken as dead once the deadline passes; the others stay up.
  rpc::ClusterStatus status;
  auto node2_alive = [&] {
    client->getClusterStatus(status, header);
    for (const auto& n : status.nodes) {
      if (n.name == "node-2") return n.alive;
    }
    return false;
  };
  testing::WaitUntil([&] { return !node2_alive(); }, 10s, 50ms);
  for (const auto& n : status.nodes) EXPECT_EQ(n.alive, n.name != "node-2") << n.name;
}

// The coordinator SIGKILLed mid-operation and restarted: the agents rejoin, the operation is
// reconciled with them and completes; no fragment is left running, the instances are known.
TEST_F(ScaleOutTest, CoordinatorRestartedMidOperation) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 3, .fault = "delay=30ms"}));
  const std::string id = ScaleOut("tiny-llm", 2);
  ASSERT_TRUE(WaitReceiving(id, "node-1")) << "the scale-out ended before the coordinator could be killed";
  coordinator->Kill(SIGKILL);
  coordinator->Wait(10s);
  ASSERT_NO_FATAL_FAILURE(StartCoordinator());
  const rpc::OperationStatus op = WaitForEnd(id);
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");
  for (const std::string n : {"node-1", "node-2"}) ExpectVerifiedCopy(n);
  EXPECT_EQ(InstanceNodes(), (std::vector<std::string>{"node-1:LOCAL", "node-2:LOCAL"}));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(Running(i).empty()) << "node-" << i;
  // The instances are in the journal: a third coordinator knows them, and the operation.
  coordinator->Kill(SIGTERM);
  EXPECT_EQ(coordinator->Wait(30s).exit_code, 0);
  ASSERT_NO_FATAL_FAILURE(StartCoordinator());
  EXPECT_EQ(InstanceNodes(), (std::vector<std::string>{"node-1:LOCAL", "node-2:LOCAL"}));
  rpc::OperationStatus again;
  client->getOperation(again, header, id);
  EXPECT_EQ(again.state, rpc::OperationState::SUCCEEDED);
}

// A request repeated with its idempotency key (a client's retry, or a captured request replayed
// with a valid token) acts once: the same operation comes back, before and after it ended and
// across a coordinator restart; the key reused for another operation is refused, naming it.
TEST_F(ScaleOutTest, ARepeatedRequestActsOnce) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 3}));
  rpc::ScaleOutRequest so;
  so.header = header;
  so.header.__set_request_id("autoscaler-7");
  so.model = "tiny-llm";
  so.replicas = 1;
  rpc::ScaleOutResponse first, again;
  client->scaleOut(first, so);
  client->scaleOut(again, so);  // while it runs
  EXPECT_EQ(again.operation_id, first.operation_id);
  EXPECT_EQ(again.targets, first.targets);
  ASSERT_EQ(WaitForEnd(first.operation_id).state, rpc::OperationState::SUCCEEDED);
  client->scaleOut(again, so);  // after it ended
  EXPECT_EQ(again.operation_id, first.operation_id);
  EXPECT_EQ(InstanceNodes().size(), 1u) << "the repeated request scaled out again";
  rpc::ScaleInRequest si;
  si.header = header;
  si.header.__set_request_id("autoscaler-7");
  si.model = "tiny-llm";
  si.replicas = 1;
  std::string in;
  try {
    client->scaleIn(in, si);
    ADD_FAILURE() << "a key of a scale-out was taken for a scale-in";
  } catch (const rpc::InvalidRequest& e) {
    EXPECT_EQ(e.message, "scaleIn: request_id 'autoscaler-7' already named " + first.operation_id +
                             " (a scale-out of 'tiny-llm')");
  }
  // The keys are journaled: a restarted coordinator knows them.
  coordinator->Kill(SIGTERM);
  EXPECT_EQ(coordinator->Wait(30s).exit_code, 0);
  ASSERT_NO_FATAL_FAILURE(StartCoordinator());
  so.header = header;
  so.header.__set_request_id("autoscaler-7");
  client->scaleOut(again, so);
  EXPECT_EQ(again.operation_id, first.operation_id);
  testing::WaitUntil([&] { return AliveNodes() == 3; }, 10s, 50ms);
  si.header = header;
  si.header.__set_request_id("autoscaler-8");
  client->scaleIn(in, si);
  std::string in_again;
  client->scaleIn(in_again, si);
  EXPECT_EQ(in_again, in);
  EXPECT_EQ(WaitForEnd(in).state, rpc::OperationState::SUCCEEDED);
  EXPECT_TRUE(InstanceNodes().empty());
}

// The value of metric `name` in a Prometheus text body (-1: absent).
double MetricValue(const std::string& body, const std::string& name) {
  const auto at = body.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::stod(body.substr(at + name.size() + 2));
}

// Many operations with the journal compacted every ~100 records: it stays bounded, and a
// restarted coordinator rebuilds from the snapshot the models, the instances and the operations.
TEST_F(ScaleOutTest, TheJournalIsCompactedAndStillRebuildsTheState) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 3, .coordinator_extra = "  journal_compact_records: 100\n"}));
  std::vector<std::string> ids;
  for (int cycle = 0; cycle < 20; ++cycle) {
    ids.push_back(ScaleOut("tiny-llm", 2));
    const auto out = WaitForEnd(ids.back());
    ASSERT_EQ(out.state, rpc::OperationState::SUCCEEDED) << (out.__isset.error ? out.error : "still running");
    ids.push_back(ScaleIn("tiny-llm", 2));
    const auto done = WaitForEnd(ids.back());
    ASSERT_EQ(done.state, rpc::OperationState::SUCCEEDED) << (done.__isset.error ? done.error : "still running");
  }
  ids.push_back(ScaleOut("tiny-llm", 2));
  ASSERT_EQ(WaitForEnd(ids.back()).state, rpc::OperationState::SUCCEEDED);
  const std::string metrics = Metrics(*coordinator);
  EXPECT_GE(MetricValue(metrics, "modelcast_journal_compactions_total"), 1) << metrics;
  const double records = MetricValue(metrics, "modelcast_journal_records");
  EXPECT_GT(records, 0);
  EXPECT_LE(records, 2 * 130) << "the journal was not kept bounded";
  std::printf("journal after %zu operations: %.0f records, %.0f bytes, %.0f compactions\n", ids.size(), records,
              MetricValue(metrics, "modelcast_journal_bytes"),
              MetricValue(metrics, "modelcast_journal_compactions_total"));
  const auto before = InstanceNodes();
  coordinator->Kill(SIGTERM);
  EXPECT_EQ(coordinator->Wait(30s).exit_code, 0);
  ASSERT_NO_FATAL_FAILURE(StartCoordinator());
  EXPECT_EQ(InstanceNodes(), before);
  EXPECT_EQ(before.size(), 2u);
  for (const auto& id : ids) {
    rpc::OperationStatus op;
    client->getOperation(op, header, id);
    EXPECT_EQ(op.state, rpc::OperationState::SUCCEEDED) << id;
  }
  // It goes on: a scale-in once the agents have rejoined, journaled on top of the snapshot.
  testing::WaitUntil([&] { return AliveNodes() == 3; }, 10s, 50ms);
  const auto last = WaitForEnd(ScaleIn("tiny-llm", 2));
  EXPECT_EQ(last.state, rpc::OperationState::SUCCEEDED) << (last.__isset.error ? last.error : "still running");
}

// Scale-outs of two models at once, over the same nodes: each runs on its own fabric channel
// and both complete with every copy verified.
TEST_F(ScaleOutTest, TwoModelsScaleOutAtOnce) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 4, .fault = "delay=10ms", .models = {"model-a", "model-b"}}));
  const std::string a = ScaleOut("model-a", 3);
  const std::string b = ScaleOut("model-b", 3);
  const rpc::OperationStatus op_a = WaitForEnd(a);
  const rpc::OperationStatus op_b = WaitForEnd(b);
  ASSERT_EQ(op_a.state, rpc::OperationState::SUCCEEDED) << (op_a.__isset.error ? op_a.error : "still running");
  ASSERT_EQ(op_b.state, rpc::OperationState::SUCCEEDED) << (op_b.__isset.error ? op_b.error : "still running");
  EXPECT_LT(op_b.started_unix, op_a.finished_unix) << "the two scale-outs did not overlap";
  for (const std::string n : {"node-1", "node-2", "node-3"}) {
    ExpectVerifiedCopy(n, "model-a");
    ExpectVerifiedCopy(n, "model-b");
  }
}

}  // namespace
}  // namespace modelcast
