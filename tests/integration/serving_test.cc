// Agents serving pipeline stages as real processes: after a scale-out, three agents each host a
// stage built from blocks in their stores, a driver in this process runs requests through them
// over UCX, and the answers equal the unsplit model's. Bad serve requests are refused.
#include "modelcast/pipeline/remote.h"
#include "modelcast/pipeline/router.h"
#include "modelcast/pipeline/tokenizer.h"
#include "modelcast/text/chat_template.h"
#include "modelcast/text/tokenizer.h"
#include "Router.h"
#include "support/loopback_cluster.h"
#include "support/npm_reference.h"
#include "support/pipeline_models.h"
#include "support/transports.h"

#include <atomic>
#include <tuple>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>

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
  // A client of the coordinator's Router service, and a request to tiny-llm as the cluster's caller.
  struct RouterConn {
    std::unique_ptr<rpc::RpcConnection> conn;
    std::unique_ptr<rpc::RouterClient> client;
  };
  RouterConn Router() {
    RouterConn r;
    auto c = rpc::Connect("127.0.0.1", AnnouncedPort(*coordinator, "listening on "), security);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    r.conn = std::move(*c);
    r.client = std::make_unique<rpc::RouterClient>(
        std::make_shared<apache::thrift::protocol::TMultiplexedProtocol>(r.conn->protocol, "Router"));
    return r;
  }
  rpc::GenerateRequest TinyRequest(int max_tokens) {
    rpc::GenerateRequest g;
    g.header = header;
    g.model = "tiny-llm";
    g.max_tokens = max_tokens;
    return g;
  }
  // `modelcast generate tiny-llm ARGS --json` against the coordinator, as the cluster's caller.
  testing::ProcessResult GenerateCommand(std::vector<std::string> args) {
    testing::WriteAll(dir / "token", kToken);
    std::vector<std::string> argv = {ToolPath("modelcast"), "generate", "tiny-llm"};
    argv.insert(argv.end(), args.begin(), args.end());
    const std::vector<std::string> caller = {
        "--json", "--coordinator", "127.0.0.1:" + std::to_string(AnnouncedPort(*coordinator, "listening on ")),
        "--token-file", (dir / "token").string()};
    argv.insert(argv.end(), caller.begin(), caller.end());
    return testing::RunProcess(argv, 60s);
  }
  std::string ServingAddress(int i) {
    const std::string out = agents[i]->Stdout();
    const std::string what = "serving fabric at ";
    const auto at = out.find(what);
    if (at == std::string::npos) return "";
    return out.substr(at + what.size(), out.find('\n', at) - at - what.size());
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
    hops.push_back({"node-" + std::to_string(i), ServingAddress(i),
                    pipeline::StageKey("tiny-llm", ranges[i].first, ranges[i].second)});
  }

  // The driver, on a transport of its own as the coordinator's router is.
  auto transport = fabric::testing::Make("router");
  auto driver = pipeline::PipelineNode::Create(*transport);
  ASSERT_TRUE(driver.ok());
  auto remote = (*driver)->Connect(hops, model::Package::Open(dir / "pkg-tiny-llm")->manifest().config, 20);
  ASSERT_TRUE(remote.ok()) << remote.status().ToString();

  // The unsplit model from the package the scale-out multicast.
  auto pkg = model::Package::Open(dir / "pkg-tiny-llm");
  ASSERT_TRUE(pkg.ok());
  auto local = testing::SplitPipeline(*pkg, 1);
  ASSERT_TRUE(local);

  const std::vector<int32_t> prompt = {1, 5, 900, 33, 2, 71};
  for (const auto& sampling : {pipeline::SamplingParams{}, pipeline::SamplingParams{0.7, 0.9, 5}}) {
    auto want = pipeline::Generate(*local, 1, prompt, 12, sampling);
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

// The model split into 1, 2, 3 and 4 stages across agent processes (every stage built by an
// agent from its store), each split giving exactly the unsplit model's logits and tokens.
TEST_F(ServingTest, OneToFourStagesAcrossAgentProcessesGiveTheSameAnswers) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 4}));
  ASSERT_EQ(WaitForEnd(ScaleOut("tiny-llm", 3)).state, rpc::OperationState::SUCCEEDED);
  auto pkg = model::Package::Open(dir / "pkg-tiny-llm");
  ASSERT_TRUE(pkg.ok());
  const auto config = pkg->manifest().config;
  auto local = testing::SplitPipeline(*pkg, 1);
  ASSERT_TRUE(local);
  const std::vector<int32_t> prompt = {1, 77, 5, 901, 23};
  auto want = pipeline::Generate(*local, 1, prompt, 10, pipeline::SamplingParams{});
  ASSERT_TRUE(want.ok());

  auto transport = fabric::testing::Make("router");
  auto driver = pipeline::PipelineNode::Create(*transport);
  ASSERT_TRUE(driver.ok());
  // (node, first block, end block) per stage; no node serves the same blocks twice.
  const std::vector<std::vector<std::tuple<int, int, int>>> splits = {
      {{0, 0, 4}},
      {{1, 0, 2}, {2, 2, 4}},
      {{3, 0, 2}, {0, 2, 3}, {1, 3, 4}},
      {{2, 0, 1}, {3, 1, 2}, {1, 2, 3}, {0, 3, 4}}};
  for (const auto& split : splits) {
    std::vector<pipeline::Hop> hops;
    for (const auto& [node, first, end] : split) {
      Agent(node).client->startServing(Serve(first, end));
      hops.push_back({"node-" + std::to_string(node), ServingAddress(node), pipeline::StageKey("tiny-llm", first, end)});
    }
    auto remote = (*driver)->Connect(hops, config, 20);
    ASSERT_TRUE(remote.ok()) << remote.status().ToString();
    auto got = pipeline::Generate(**remote, 1, prompt, 10, pipeline::SamplingParams{});
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(got->tokens, want->tokens) << split.size() << " stages";
    EXPECT_EQ(got->logits, want->logits) << split.size() << " stages";
  }
}

// A stage's agent killed (SIGKILL) while the router runs requests through its pipeline: the
// requests fail over to the other engine and finish there, each token once, equal to the
// unsplit model's answer.
TEST_F(ServingTest, AStageNodeKilledMidRequestFailsOverToAnotherEngine) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 3}));
  const auto op = WaitForEnd(ScaleOut("tiny-llm", 2));
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED);
  const std::vector<std::pair<int, int>> ranges = {{0, 2}, {2, 3}, {3, 4}};
  std::vector<pipeline::Hop> hops;
  for (int i = 0; i < 3; ++i) {
    Agent(i).client->startServing(Serve(ranges[i].first, ranges[i].second));
    hops.push_back({"node-" + std::to_string(i), ServingAddress(i),
                    pipeline::StageKey("tiny-llm", ranges[i].first, ranges[i].second)});
  }
  auto transport = fabric::testing::Make("router");
  auto driver = pipeline::PipelineNode::Create(*transport);
  ASSERT_TRUE(driver.ok());
  auto pkg = model::Package::Open(dir / "pkg-tiny-llm");
  ASSERT_TRUE(pkg.ok());
  const auto config = pkg->manifest().config;
  auto remote = (*driver)->Connect(hops, config, 20);
  ASSERT_TRUE(remote.ok());
  auto make_local = [&] { return testing::SplitPipeline(*pkg, 1); };
  const std::vector<int32_t> prompt = {1, 8, 64, 512};
  auto reference = make_local();
  auto want = pipeline::Generate(*reference, 1, prompt, 400, pipeline::SamplingParams{0.9, 0.95, 3});
  ASSERT_TRUE(want.ok());

  pipeline::Router router(pipeline::RouterOptions{.max_batch = 4});
  ASSERT_TRUE(router.AddEngine("tiny-llm/p1", "tiny-llm", pipeline::EngineKind::kPipeline, std::move(*remote)).ok());
  std::mutex mu;
  std::condition_variable cv;
  std::map<int, std::vector<int32_t>> tokens;
  std::map<int, Status> ended;
  std::map<int, pipeline::RequestTiming> timing;
  for (int r = 0; r < 3; ++r) {
    pipeline::GenerateRequest req;
    req.model = "tiny-llm";
    req.prompt = prompt;
    req.max_tokens = 400;
    req.sampling = {0.9, 0.95, 3};
    req.on_token = [&, r](int32_t t) {
      std::lock_guard<std::mutex> lock(mu);
      tokens[r].push_back(t);
      cv.notify_all();
      return true;
    };
    req.on_done = [&, r](const Status& s, const pipeline::RequestTiming& t) {
      std::lock_guard<std::mutex> lock(mu);
      ended[r] = s;
      timing[r] = t;
      cv.notify_all();
    };
    ASSERT_TRUE(router.Submit(std::move(req)).ok());
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 30s, [&] { return tokens[0].size() >= 5 && tokens[2].size() >= 5; }));
  }
  // The middle stage's node dies mid-request; a full local instance comes up for the rest.
  agents[1]->Kill(SIGKILL);
  ASSERT_TRUE(router.AddEngine("tiny-llm@local", "tiny-llm", pipeline::EngineKind::kLocal, make_local()).ok());
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 60s, [&] { return ended.size() == 3; }));
  }
  for (int r = 0; r < 3; ++r) {
    EXPECT_TRUE(ended[r].ok()) << ended[r].ToString();
    EXPECT_EQ(tokens[r], want->tokens) << "request " << r << ": a token lost or repeated across the failover";
    EXPECT_EQ(timing[r].served_by, "tiny-llm@local");
    EXPECT_EQ(timing[r].attempts, 2);
  }
}

// One completion over HTTP: the tokens, who served them, and whether it worked.
struct Completion {
  int http = 0;
  std::vector<int32_t> tokens;
  std::string served_by, error;
  double ttft_s = 0;
};

Completion Complete(int port, const std::vector<int32_t>& prompt, int max_tokens, double temperature, uint64_t seed) {
  httplib::Client http("127.0.0.1", port);
  http.set_read_timeout(60, 0);
  nlohmann::json body = {{"model", "tiny-llm"}, {"prompt", prompt},      {"max_tokens", max_tokens},
                         {"temperature", temperature}, {"seed", seed}};
  auto res = http.Post("/v1/completions", {{"Authorization", std::string("Bearer ") + kToken}}, body.dump(),
                       "application/json");
  Completion c;
  if (!res) {
    c.error = "no answer: " + httplib::to_string(res.error());
    return c;
  }
  c.http = res->status;
  auto j = nlohmann::json::parse(res->body, nullptr, false);
  if (res->status != 200 || j.is_discarded()) {
    c.error = res->body;
    return c;
  }
  c.tokens = j["choices"][0]["tokens"].get<std::vector<int32_t>>();
  c.served_by = j["modelcast"]["served_by"];
  c.ttft_s = j["modelcast"]["ttft_s"];
  return c;
}

// The answers the unsplit model gives, from the package the scale-out multicasts.
// `stop`: the token that ends it (-1: none; absent: the config's eos).
std::vector<int32_t> Reference(const fs::path& pkg_dir, const std::vector<int32_t>& prompt, int max_tokens,
                               double temperature, uint64_t seed, std::optional<int32_t> stop = std::nullopt) {
  auto pkg = model::Package::Open(pkg_dir);
  EXPECT_TRUE(pkg.ok());
  const auto& c = pkg->manifest().config;
  auto local = testing::SplitPipeline(*pkg, 1);
  auto g = pipeline::Generate(*local, 1, prompt, max_tokens, pipeline::SamplingParams{temperature, 1.0, seed},
                              stop ? *stop : c.eos_token_id ? static_cast<int32_t>(*c.eos_token_id) : -1);
  EXPECT_TRUE(g.ok());
  return g->tokens;
}

// Requests through the coordinator's router over HTTP while a scale-out runs on loopback (its
// fabric messages slowed by 15 ms): the model is on node-0's SSD only, so requests wait until
// receivers serve. Every answer equals the unsplit model's, none fails, and at the end full
// local instances answer. (On loopback the transfer is over too soon to count on pipelines
// forming first; serving_netns_test shows that on shaped links.)
TEST_F(ServingTest, RequestsDuringAScaleOutAreAnsweredByTheNewCapacity) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 4, .fault = "delay=15ms", .serving = true}));
  const int http_port = AnnouncedPort(*coordinator, "serving http on ");
  ASSERT_GT(http_port, 0) << coordinator->Stdout();
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<int32_t>> want;
  for (int i = 0; i < 4; ++i) {
    prompts.push_back({1, 40 + i, 300 + 7 * i, 12, 99 + i});
    want.push_back(Reference(dir / "pkg-tiny-llm", prompts.back(), 8, i % 2 ? 0.8 : 0.0, 10 + i));
  }

  const std::string id = ScaleOut("tiny-llm", 3);
  struct Seen {
    Completion c;
    int prompt = 0;
    bool any_target_complete = false;  // when the answer came
    bool op_running = false;
  };
  std::mutex mu;
  std::vector<Seen> seen;
  std::atomic<bool> stop{false};
  auto ask = [&](int k) {
    for (int n = 0; !stop; ++n) {
      const int i = (k + n) % 4;
      Completion c = Complete(http_port, prompts[i], 8, i % 2 ? 0.8 : 0.0, 10 + i);
      rpc::OperationStatus op;
      {
        std::lock_guard<std::mutex> lock(mu);  // the test's Thrift client is not thread-safe
        client->getOperation(op, header, id);
        Seen s{c, i, false, op.state == rpc::OperationState::RUNNING};
        for (const auto& np : op.nodes) s.any_target_complete |= np.role == rpc::NodeRole::TARGET && np.state == rpc::NodeState::COMPLETE;
        seen.push_back(std::move(s));
      }
    }
  };
  std::thread a(ask, 0), b(ask, 1);
  rpc::OperationStatus op;
  const auto done_by = std::chrono::steady_clock::now() + 90s;
  do {
    std::this_thread::sleep_for(50ms);
    std::lock_guard<std::mutex> lock(mu);
    client->getOperation(op, header, id);
  } while (op.state == rpc::OperationState::RUNNING && std::chrono::steady_clock::now() < done_by);
  // Keep asking a little after the end, while the pipelines dissolve into local instances.
  const auto after = std::chrono::steady_clock::now() + 3s;
  auto locals = [&] {
    std::lock_guard<std::mutex> lock(mu);
    int n = 0;
    for (auto it = seen.rbegin(); it != seen.rend() && it != seen.rbegin() + 4; ++it) {
      n += it->c.served_by.find('@') != std::string::npos;
    }
    return n;
  };
  while (std::chrono::steady_clock::now() < after && locals() < 4) std::this_thread::sleep_for(50ms);
  stop = true;
  a.join();
  b.join();
  ASSERT_EQ(op.state, rpc::OperationState::SUCCEEDED) << (op.__isset.error ? op.error : "still running");

  int by_pipeline_early = 0;
  for (const auto& s : seen) {
    ASSERT_EQ(s.c.http, 200) << s.c.error;
    EXPECT_EQ(s.c.tokens, want[s.prompt]) << "served by " << s.c.served_by;
    if (s.c.served_by.find("/p") != std::string::npos && s.op_running && !s.any_target_complete) by_pipeline_early++;
  }
  EXPECT_EQ(locals(), 4) << "the last requests were not served by full local instances";
  std::cerr << seen.size() << " requests, " << by_pipeline_early << " answered by pipelines before any receiver "
            << "had the whole model; first pipeline " << op.first_pipeline_s << " s after scaleOut\n";
}

// Posts `body` to /v1/completions until it is answered 200 (the scaled-out node serves), for at
// most 30 s; the last answer.
httplib::Result PostWhenServed(httplib::Client& http, const httplib::Headers& auth, const nlohmann::json& body) {
  const auto by = std::chrono::steady_clock::now() + 30s;
  auto res = http.Post("/v1/completions", auth, body.dump(), "application/json");
  while ((!res || res->status != 200) && std::chrono::steady_clock::now() < by) {
    std::this_thread::sleep_for(100ms);  // a poll with a deadline
    res = http.Post("/v1/completions", auth, body.dump(), "application/json");
  }
  return res;
}

// The serving API itself: a text prompt over HTTP (byte-level tokenizer), the same answer
// streamed as server-sent events, Router.generate over Thrift, and refusals that name the
// problem (no token, no model, a prompt of the wrong type, a token outside the vocabulary).
TEST_F(ServingTest, TheApiAnswersOverHttpWithAndWithoutStreamingAndOverThrift) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 2, .serving = true}));
  const int port = AnnouncedPort(*coordinator, "serving http on ");
  ASSERT_EQ(WaitForEnd(ScaleOut("tiny-llm", 1)).state, rpc::OperationState::SUCCEEDED);
  httplib::Client http("127.0.0.1", port);
  http.set_read_timeout(60, 0);
  const httplib::Headers auth = {{"Authorization", std::string("Bearer ") + kToken}};
  const nlohmann::json body = {{"model", "tiny-llm"}, {"prompt", "Hello"}, {"max_tokens", 6}, {"temperature", 0}};
  auto res = PostWhenServed(http, auth, body);  // until node-1 serves
  ASSERT_TRUE(res && res->status == 200) << (res ? res->body : "no answer");
  const auto j = nlohmann::json::parse(res->body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 6) << "bos and one token per byte";
  const auto tokens = j["choices"][0]["tokens"].get<std::vector<int32_t>>();
  auto config = model::Package::Open(dir / "pkg-tiny-llm")->manifest().config;
  auto prompt = pipeline::ByteTokenizer::Encode("Hello", config);
  ASSERT_TRUE(prompt.ok());
  EXPECT_EQ(tokens, Reference(dir / "pkg-tiny-llm", *prompt, 6, 0.0, 0));
  // The answer's bytes as text (a random model's bytes need not be UTF-8: JSON carries U+FFFD for
  // those); every ASCII byte it generated is there.
  ASSERT_TRUE(j["choices"][0]["text"].is_string());
  for (char ch : pipeline::ByteTokenizer::Decode(tokens)) {
    if (static_cast<unsigned char>(ch) < 0x80) {
      EXPECT_NE(j["choices"][0]["text"].get<std::string>().find(ch), std::string::npos);
    }
  }
  EXPECT_EQ(j["modelcast"]["served_by"], "tiny-llm@node-1");

  // Streamed: one event per token, then the end with its finish reason, then [DONE].
  nlohmann::json sbody = body;
  sbody["stream"] = true;
  auto sres = http.Post("/v1/completions", auth, sbody.dump(), "application/json");
  ASSERT_TRUE(sres && sres->status == 200);
  EXPECT_NE(sres->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  std::vector<int32_t> streamed;
  std::string finish;
  bool done = false;
  for (size_t at = 0; (at = sres->body.find("data: ", at)) != std::string::npos; at += 6) {
    const std::string data = sres->body.substr(at + 6, sres->body.find("\n\n", at) - at - 6);
    if (data == "[DONE]") {
      done = true;
      continue;
    }
    const auto ev = nlohmann::json::parse(data);
    for (int32_t t : ev["choices"][0]["tokens"]) streamed.push_back(t);
    if (!ev["choices"][0]["finish_reason"].is_null()) finish = ev["choices"][0]["finish_reason"];
  }
  EXPECT_TRUE(done);
  EXPECT_EQ(streamed, tokens);
  EXPECT_EQ(finish, j["choices"][0]["finish_reason"]);

  // Thrift: Router.generate with token ids.
  auto router = Router();
  rpc::GenerateRequest g = TinyRequest(6);
  g.__set_prompt_tokens(*prompt);
  rpc::GenerateResponse out;
  router.client->generate(out, g);
  EXPECT_EQ(out.tokens, tokens);
  EXPECT_EQ(out.served_by, "tiny-llm@node-1");
  EXPECT_GT(out.ttft_s, 0);

  // The command line's `generate` says the same.
  std::string ids;
  for (int32_t t : *prompt) ids += (ids.empty() ? "" : ",") + std::to_string(t);
  auto cli = GenerateCommand({"--tokens", ids, "--max-tokens", "6"});
  ASSERT_EQ(cli.exit_code, 0) << cli.err;
  EXPECT_EQ(nlohmann::json::parse(cli.out)["tokens"].get<std::vector<int32_t>>(), tokens);

  // The models, as OpenAI's clients list them.
  auto models = http.Get("/v1/models", auth);
  ASSERT_TRUE(models && models->status == 200);
  const auto list = nlohmann::json::parse(models->body);
  EXPECT_EQ(list["object"], "list");
  ASSERT_EQ(list["data"].size(), 1u);
  EXPECT_EQ(list["data"][0]["id"], "tiny-llm");
  EXPECT_EQ(list["data"][0]["object"], "model");
  auto one = http.Get("/v1/models/tiny-llm", auth);
  ASSERT_TRUE(one && one->status == 200);
  EXPECT_EQ(nlohmann::json::parse(one->body)["id"], "tiny-llm");
  auto missing = http.Get("/v1/models/nope", auth);
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(nlohmann::json::parse(missing->body)["error"]["message"], "model 'nope' is not registered");
  auto anonymous = http.Get("/v1/models");
  ASSERT_TRUE(anonymous);
  EXPECT_EQ(anonymous->status, 401);

  // Refusals.
  auto status_of = [&](const nlohmann::json& b, const httplib::Headers& h) {
    auto r = http.Post("/v1/completions", h, b.dump(), "application/json");
    return r ? r->status : 0;
  };
  EXPECT_EQ(status_of(body, {}), 401);
  EXPECT_EQ(status_of({{"model", "nope"}, {"prompt", {1, 2}}}, auth), 404);
  EXPECT_EQ(status_of({{"model", "tiny-llm"}, {"prompt", {{"a", 1}}}}, auth), 400);
  EXPECT_EQ(status_of({{"model", "tiny-llm"}, {"prompt", {1, 99999}}}, auth), 400);
  EXPECT_EQ(status_of({{"prompt", {1, 2}}}, auth), 400);
  g.__set_prompt_tokens({1, 99999});
  try {
    router.client->generate(out, g);
    ADD_FAILURE() << "a token outside the vocabulary was accepted";
  } catch (const rpc::InvalidRequest& e) {
    EXPECT_NE(e.message.find("99999"), std::string::npos) << e.message;
  }
}

// A byte-level BPE tokenizer.json covering the tiny model's 1,024 ids: the 256 bytes (GPT-2's
// mapping), a space before a letter, letter pairs, a space before a letter pair, two special tokens
// (bos added in front).
std::string TinyTokenizerJson() {
  std::vector<std::string> byte_char(256);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const uint32_t cp = printable ? b : 256 + extra++;
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    byte_char[b] = s;
  }
  nlohmann::json vocab = nlohmann::json::object(), merges = nlohmann::json::array();
  int id = 0;
  for (int b = 0; b < 256; ++b) vocab[byte_char[b]] = id++;
  const std::string space = byte_char[' '];
  for (char a = 'a'; a <= 'z'; ++a) {
    vocab[space + a] = id++;
    merges.push_back(space + " " + a);
  }
  for (char a = 'a'; a <= 'z' && id < 1022; ++a) {
    for (char b = 'a'; b <= 'z' && id < 1022; ++b) {
      vocab[std::string{a, b}] = id++;
      merges.push_back(std::string{a, ' ', b});
    }
  }
  for (char a = 'a'; a <= 'z' && id < 1022; ++a) {  // a space, then a letter pair: up to id 1021
    for (char b = 'a'; b <= 'z' && id < 1022; ++b) {
      vocab[space + a + b] = id++;
      merges.push_back(space + a + " " + b);
    }
  }
  nlohmann::json t = {
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
      {"added_tokens",
       {{{"id", 1022}, {"content", "<|bos|>"}, {"special", true}}, {{"id", 1023}, {"content", "<|eot|>"}, {"special", true}}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<|bos|>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens", {{"<|bos|>", {{"id", "<|bos|>"}, {"ids", {1022}}, {"tokens", {"<|bos|>"}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}}}};
  return t.dump();
}

// A model whose package carries its tokenizer: registration hands the files to the coordinator,
// and text in and out of the API goes through that tokenizer (bos added, special tokens left out
// of the answer, streamed pieces never split a character and add up to the whole answer).
TEST_F(ServingTest, TextGoesThroughTheModelsOwnTokenizer) {
  const std::string tokenizer_json = TinyTokenizerJson();
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 2,
                                        .serving = true,
                                        .model_files = {{"tokenizer.json", tokenizer_json},
                                                        {"generation_config.json", R"({"eos_token_id": [1023, 7]})"}}}));
  const int port = AnnouncedPort(*coordinator, "serving http on ");
  ASSERT_EQ(WaitForEnd(ScaleOut("tiny-llm", 1)).state, rpc::OperationState::SUCCEEDED);
  // The receiver's copy is a whole package: the tokenizer's files came with the slices.
  ASSERT_NO_FATAL_FAILURE(ExpectVerifiedCopy("node-1"));
  EXPECT_EQ(testing::ReadAll(dir / "node-1" / "tiny-llm" / "tokenizer.json"), tokenizer_json);
  auto tokenizer = text::Tokenizer::FromJson(tokenizer_json, "tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().ToString();
  ASSERT_EQ((*tokenizer)->vocab_size(), 1024);  // every id the model can generate
  for (int32_t id = 0; id < 1024; ++id) ASSERT_TRUE((*tokenizer)->IdToken(id)) << id;
  const std::string prompt_text = "hello world, the quick brown fox <|eot|> jumps";
  auto prompt = (*tokenizer)->Encode(prompt_text, true);
  ASSERT_TRUE(prompt.ok());
  ASSERT_EQ(prompt->front(), 1022);
  httplib::Client http("127.0.0.1", port);
  http.set_read_timeout(60, 0);
  const httplib::Headers auth = {{"Authorization", std::string("Bearer ") + kToken}};
  const nlohmann::json body = {{"model", "tiny-llm"}, {"prompt", prompt_text}, {"max_tokens", 12}, {"temperature", 0}};
  auto res = PostWhenServed(http, auth, body);
  ASSERT_TRUE(res && res->status == 200) << (res ? res->body : "no answer");
  const auto j = nlohmann::json::parse(res->body);
  EXPECT_EQ(j["usage"]["prompt_tokens"], prompt->size());
  const auto tokens = j["choices"][0]["tokens"].get<std::vector<int32_t>>();
  // The reference runs to max_tokens; the router stops after either eos id of
  // generation_config.json.
  auto all = Reference(dir / "pkg-tiny-llm", *prompt, 12, 0.0, 0, -1);
  auto eos = std::find_if(all.begin(), all.end(), [](int32_t t) { return t == 1023 || t == 7; });
  const bool stopped = eos != all.end();
  if (stopped) all.erase(eos + 1, all.end());
  EXPECT_EQ(tokens, all);
  EXPECT_EQ(j["choices"][0]["finish_reason"], stopped ? "stop" : "length");
  auto want = (*tokenizer)->Decode(tokens, true);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(j["choices"][0]["text"], *want);

  nlohmann::json sbody = body;
  sbody["stream"] = true;
  auto sres = http.Post("/v1/completions", auth, sbody.dump(), "application/json");
  ASSERT_TRUE(sres && sres->status == 200);
  std::string streamed;
  for (size_t at = 0; (at = sres->body.find("data: ", at)) != std::string::npos; at += 6) {
    const std::string data = sres->body.substr(at + 6, sres->body.find("\n\n", at) - at - 6);
    if (data == "[DONE]") continue;
    const std::string piece = nlohmann::json::parse(data)["choices"][0]["text"];
    EXPECT_FALSE(text::FirstInvalidUtf8(piece)) << "a streamed piece is not whole UTF-8";
    streamed += piece;
  }
  EXPECT_EQ(streamed, *want);

  // Thrift: Router.generate with the same text.
  auto router = Router();
  rpc::GenerateRequest g = TinyRequest(12);
  g.__set_prompt_text(prompt_text);
  rpc::GenerateResponse out;
  router.client->generate(out, g);
  EXPECT_EQ(out.tokens, tokens);
  EXPECT_EQ(out.text, *want);
  // A body whose text is not UTF-8 is refused.
  auto r = http.Post("/v1/completions", auth, std::string("{\"model\": \"tiny-llm\", \"prompt\": \"ok \xC3\x28\"}"),
                     "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400) << r->body;
}

// The official `openai` npm client against a cluster whose model carries its tokenizer and chat
// template (tests/text/openai_client.mjs): models.list, a completion, a chat answer, the same
// chat streamed with its usage, and a bad request of each kind, each answered in OpenAI's shape.
TEST_F(ServingTest, TheOfficialOpenAiClientListsCompletesAndChats) {
  ASSERT_NO_FATAL_FAILURE(testing::FetchNpmReference());
  const std::string tokenizer_json = TinyTokenizerJson();
  const std::string chat_template =
      "{% if messages[0].role == 'assistant' %}{{ raise_exception('a chat starts with a system or user message') }}"
      "{% endif %}{% for m in messages %}<|bos|>{{ m.role }}\n{{ m.content | trim }}<|eot|>\n{% endfor %}"
      "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}";
  const nlohmann::json tokenizer_config = {{"bos_token", "<|bos|>"}, {"eos_token", "<|eot|>"},
                                           {"chat_template", chat_template}};
  ASSERT_NO_FATAL_FAILURE(StartCluster({.nodes = 2,
                                        .serving = true,
                                        .model_files = {{"tokenizer.json", tokenizer_json},
                                                        {"tokenizer_config.json", tokenizer_config.dump()},
                                                        {"generation_config.json", R"({"eos_token_id": 1023})"}}}));
  const int port = AnnouncedPort(*coordinator, "serving http on ");
  ASSERT_EQ(WaitForEnd(ScaleOut("tiny-llm", 1)).state, rpc::OperationState::SUCCEEDED);
  {  // until node-1 serves
    httplib::Client http("127.0.0.1", port);
    const httplib::Headers auth = {{"Authorization", std::string("Bearer ") + kToken}};
    const nlohmann::json body = {{"model", "tiny-llm"}, {"prompt", {1, 2}}, {"max_tokens", 1}};
    auto res = PostWhenServed(http, auth, body);
    ASSERT_TRUE(res && res->status == 200);
  }
  auto r = testing::RunProcess({"node", testing::SourcePath("tests/text/openai_client.mjs"),
                                "http://127.0.0.1:" + std::to_string(port) + "/v1", kToken, "tiny-llm",
                                testing::NpmDir().string(), (dir / "openai.json").string()},
                               120s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto got = nlohmann::json::parse(testing::ReadAll(dir / "openai.json"));
  auto tokenizer = text::Tokenizer::FromJson(tokenizer_json, "tokenizer.json");
  ASSERT_TRUE(tokenizer.ok());
  // What the model answers to `prompt` greedily, stopped at its eos, as text.
  auto answer = [&](const std::vector<int32_t>& prompt, int max_tokens, size_t* length) {
    auto all = Reference(dir / "pkg-tiny-llm", prompt, max_tokens, 0.0, 0, 1023);
    *length = all.size();
    auto text = (*tokenizer)->Decode(all, true);
    EXPECT_TRUE(text.ok()) << text.status().ToString();
    return text.ok() ? *text : std::string();
  };
  EXPECT_EQ(got["models"], nlohmann::json({"tiny-llm"}));
  size_t n = 0;
  auto prompt = (*tokenizer)->Encode("hello world", true);
  ASSERT_TRUE(prompt.ok());
  EXPECT_EQ(got["completion"]["text"], answer(*prompt, 8, &n));
  EXPECT_EQ(got["completion"]["usage"]["prompt_tokens"], prompt->size());
  EXPECT_EQ(got["completion"]["usage"]["completion_tokens"], n);
  // The chat: the template renders the messages, the text is tokenized as it stands.
  auto tmpl = text::ChatTemplate::Parse(chat_template, "chat_template");
  ASSERT_TRUE(tmpl.ok());
  nlohmann::ordered_json context = {
      {"messages",
       {{{"role", "system"}, {"content", "You are terse."}}, {{"role", "user"}, {"content", "hello there, the quick brown fox"}}}},
      {"add_generation_prompt", true},
      {"bos_token", "<|bos|>"},
      {"eos_token", "<|eot|>"}};
  auto rendered = (*tmpl)->Render(context);
  ASSERT_TRUE(rendered.ok()) << rendered.status().ToString();
  auto chat_prompt = (*tokenizer)->Encode(*rendered, false);
  ASSERT_TRUE(chat_prompt.ok()) << chat_prompt.status().ToString();
  const std::string want = answer(*chat_prompt, 10, &n);
  EXPECT_EQ(got["chat"]["object"], "chat.completion");
  EXPECT_EQ(got["chat"]["role"], "assistant");
  EXPECT_EQ(got["chat"]["content"], want);
  EXPECT_EQ(got["chat"]["usage"]["prompt_tokens"], chat_prompt->size());
  EXPECT_EQ(got["chat"]["usage"]["completion_tokens"], n);
  EXPECT_EQ(got["chat"]["finish_reason"], n < 10 ? "stop" : "length");
  EXPECT_EQ(got["stream"]["role"], "assistant");
  EXPECT_EQ(got["stream"]["content"], want);
  EXPECT_EQ(got["stream"]["finish_reason"], got["chat"]["finish_reason"]);
  EXPECT_EQ(got["stream"]["usage"], got["chat"]["usage"]);
  // Stop strings: the chat's answer (and the completion's) cut before the first occurrence of one
  // taken from its middle, streamed or not, ended as "stop" with fewer tokens.
  const std::string stop = got["stop"]["stop"];
  ASSERT_GE(stop.size(), 2u) << "the answer is too short to take a stop string from: " << want;
  const std::string cut = want.substr(0, want.find(stop));
  EXPECT_LT(cut.size(), want.size());
  EXPECT_EQ(got["stop"]["chat"]["content"], cut);
  EXPECT_EQ(got["stop"]["chat"]["finish_reason"], "stop");
  EXPECT_LE(got["stop"]["chat"]["usage"]["completion_tokens"].get<size_t>(), n);
  EXPECT_EQ(got["stop"]["stream"]["content"], cut);
  EXPECT_EQ(got["stop"]["stream"]["finish_reason"], "stop");
  EXPECT_EQ(got["stop"]["stream"]["usage"], got["stop"]["chat"]["usage"]);
  const std::string completion_text = got["completion"]["text"], completion_stop = got["stop"]["completion_stop"];
  ASSERT_GE(completion_stop.size(), 2u) << completion_text;
  EXPECT_EQ(got["stop"]["completion"]["text"], completion_text.substr(0, completion_text.find(completion_stop)));
  EXPECT_EQ(got["stop"]["completion"]["finish_reason"], "stop");
  // Bad requests: 400s (404 for an unknown model) naming the field, none accepted.
  const auto& errors = got["errors"];
  EXPECT_EQ(errors["n2"]["status"], 400);
  EXPECT_EQ(errors["n2"]["message"], "'n': only one choice per request (n = 1) is served");
  EXPECT_EQ(errors["unknown_role"]["status"], 400);
  EXPECT_EQ(errors["unknown_role"]["message"], "'messages[0].role' is 'wizard': system, user, assistant, tool or developer");
  EXPECT_EQ(errors["empty_stop"]["status"], 400);
  EXPECT_EQ(errors["empty_stop"]["message"], "'stop'[1] is empty");
  EXPECT_EQ(errors["stop_type"]["status"], 400);
  EXPECT_EQ(errors["stop_type"]["message"], "'stop' must be a string or an array of strings");
  EXPECT_EQ(errors["no_model"]["status"], 404);
  EXPECT_EQ(errors["empty"]["status"], 400);
  EXPECT_EQ(errors["empty"]["message"], "'messages' must be a non-empty array");
  EXPECT_EQ(errors["raises"]["status"], 400);
  EXPECT_EQ(errors["raises"]["message"], "the chat template: a chat starts with a system or user message");
  EXPECT_EQ(errors["too_long"]["status"], 400);
  EXPECT_EQ(errors["too_long"]["message"].get<std::string>().rfind("'messages' render to ", 0), 0u)
      << errors["too_long"]["message"];
  EXPECT_EQ(errors["surrogate"]["status"], 400);
  EXPECT_NE(errors["surrogate"]["message"].get<std::string>().find("surrogate"), std::string::npos)
      << errors["surrogate"]["message"];
  EXPECT_EQ(errors["completion_too_long"]["status"], 400);
  EXPECT_EQ(errors["completion_too_long"]["message"].get<std::string>().rfind("a prompt of ", 0), 0u)
      << errors["completion_too_long"]["message"];

  // Thrift: Router.generate with the same chat as messages, and the same stop string; the command
  // line's generate from a chat file says the same.
  auto router = Router();
  rpc::GenerateRequest g = TinyRequest(10);
  std::vector<rpc::ChatMessage> messages(2);
  messages[0].role = "system";
  messages[0].content = "You are terse.";
  messages[1].role = "user";
  messages[1].content = "hello there, the quick brown fox";
  g.__set_messages(messages);
  rpc::GenerateResponse out;
  router.client->generate(out, g);
  EXPECT_EQ(out.text, want);
  g.__set_stop({stop});
  router.client->generate(out, g);
  EXPECT_EQ(out.text, cut);
  EXPECT_EQ(out.finish_reason, "stop");
  messages[1].role = "wizard";
  g.__set_messages(messages);
  try {
    router.client->generate(out, g);
    ADD_FAILURE() << "an unknown role was accepted";
  } catch (const rpc::InvalidRequest& e) {
    EXPECT_EQ(e.message, "'messages[1].role' is 'wizard': system, user, assistant, tool or developer");
  }
  testing::WriteAll(dir / "chat.json", R"([
    {"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello there, the quick brown fox"}])");
  auto cli = GenerateCommand({"--chat-file", (dir / "chat.json").string(), "--max-tokens", "10", "--stop", stop});
  ASSERT_EQ(cli.exit_code, 0) << cli.err;
  const auto j = nlohmann::json::parse(cli.out);
  EXPECT_EQ(j["text"], cut);
  EXPECT_EQ(j["finish_reason"], "stop");
}

}  // namespace
}  // namespace modelcast
