// The commands that talk to a running coordinator: cluster status, models, register,
// scale-out and scale-in (with a live progress display), instances, plan --dry-run, generate.
#include <thrift/protocol/TMultiplexedProtocol.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <nlohmann/json.hpp>

#include "Coordinator.h"
#include "Router.h"
#include "command.h"
#include "modelcast/model/package.h"
#include "modelcast/common/file_util.h"
#include "modelcast/common/units.h"
#include "modelcast/planner/plan_svg.h"
#include "modelcast/rpc/errors.h"
#include "modelcast/rpc/server.h"
#include "modelcast/text/tokenizer.h"

namespace modelcast::cli {
namespace {

struct CoordinatorFlags {
  std::string coordinator, token_file, tls_cert, tls_key, tls_ca;
  bool insecure = false, json = false;

  void Declare(ArgParser& p) {
    p.Flag("coordinator", &coordinator,
           "HOST:PORT of the coordinator, or a comma-separated list of every coordinator of the head (the leader answers) [$MODELCAST_COORDINATOR or 127.0.0.1:7300]");
    p.Flag("token-file", &token_file, "file holding the shared token [$MODELCAST_TOKEN_FILE]");
    p.Flag("tls-cert", &tls_cert, "client certificate (PEM), for mutual TLS");
    p.Flag("tls-key", &tls_key, "client key (PEM)");
    p.Flag("tls-ca", &tls_ca, "CA certificate (PEM)");
    p.Flag("insecure", &insecure, "plaintext without credentials");
    p.Flag("json", &json, "print JSON");
  }

  struct Client {
    std::unique_ptr<rpc::RpcConnection> conn;
    std::unique_ptr<rpc::CoordinatorClient> client;
    rpc::RequestHeader header;
  };

  Result<Client> Connect() const {
    std::string addr = coordinator;
    if (addr.empty())
      addr = std::getenv("MODELCAST_COORDINATOR") ? std::getenv("MODELCAST_COORDINATOR") : "127.0.0.1:7300";
    auto endpoints = rpc::ParseEndpoints(addr);
    if (!endpoints.ok()) return endpoints.status().WithContext("--coordinator");
    rpc::SecurityConfig s;
    s.insecure = insecure;
    s.tls_cert = tls_cert;
    s.tls_key = tls_key;
    s.tls_ca = tls_ca;
    std::string tf = token_file;
    if (tf.empty() && std::getenv("MODELCAST_TOKEN_FILE")) tf = std::getenv("MODELCAST_TOKEN_FILE");
    if (!tf.empty()) {
      MC_ASSIGN_OR_RETURN(s.token, ReadFileToString(tf, 4096));
      while (!s.token.empty() && (s.token.back() == '\n' || s.token.back() == '\r')) s.token.pop_back();
    }
    MC_RETURN_IF_ERROR(s.Validate());
    Client c;
    // Of several coordinators, the one that listens leads.
    size_t first = 0;
    MC_ASSIGN_OR_RETURN(c.conn, rpc::ConnectAny(*endpoints, s, 5000, &first));
    c.client = std::make_unique<rpc::CoordinatorClient>(
        std::make_shared<apache::thrift::protocol::TMultiplexedProtocol>(c.conn->protocol, "Coordinator"));
    c.header = rpc::MakeHeader(s, "cli");
    return c;
  }
};

// "a,b,c" -> {"a", "b", "c"}.
std::vector<std::string> SplitList(const std::string& text) {
  std::vector<std::string> list;
  for (size_t at = 0; at <= text.size();) {
    const size_t comma = std::min(text.find(',', at), text.size());
    list.push_back(text.substr(at, comma - at));
    at = comma + 1;
  }
  return list;
}

// Runs an RPC; a refusal for credentials says so.
Status Call(const std::function<void()>& f) {
  Status st = rpc::CallStatus(f);
  return st.code() == StatusCode::kPermissionDenied ? st.WithContext("not authorized") : st;
}

nlohmann::json OperationJson(const rpc::OperationStatus& op) {
  nlohmann::json j{{"id", op.id},
                   {"model", op.model},
                   {"replicas", op.replicas},
                   {"kind", rpc::to_string(op.kind)},
                   {"state", rpc::to_string(op.state)},
                   {"replans", op.replans},
                   {"created_unix", op.created_unix}};
  if (op.__isset.finished_unix) j["seconds"] = op.finished_unix - op.created_unix;
  if (op.__isset.error) j["error"] = op.error;
  if (op.__isset.first_pipeline_s) j["first_pipeline_s"] = op.first_pipeline_s;
  if (op.__isset.first_pipeline_blocks_s) j["first_pipeline_blocks_s"] = op.first_pipeline_blocks_s;
  if (op.__isset.first_byte_unix) j["first_byte_unix"] = op.first_byte_unix;
  for (const auto& n : op.nodes) {
    j["nodes"].push_back({{"node", n.node},
                          {"role", rpc::to_string(n.role)},
                          {"state", rpc::to_string(n.state)},
                          {"slices_received", n.slices_received},
                          {"slices_total", n.slices_total},
                          {"bytes_received", n.bytes_received},
                          {"rate_bytes_per_s", n.rate_bytes_per_s}});
    if (n.__isset.error) j["nodes"].back()["error"] = n.error;
    if (n.__isset.complete_unix) j["nodes"].back()["complete_unix"] = n.complete_unix;
    if (n.__isset.corrupt_slices) j["nodes"].back()["corrupt_slices"] = n.corrupt_slices;
    if (n.__isset.link_bytes_per_s) j["nodes"].back()["link_bytes_per_s"] = n.link_bytes_per_s;
  }
  return j;
}

void PrintProgress(const rpc::OperationStatus& op, bool tty) {
  if (tty) std::printf("\033[H\033[J");
  const bool out = op.kind == rpc::OperationKind::SCALE_OUT;
  std::printf("%s: %s of %s, %s", op.id.c_str(), out ? "scale-out" : "scale-in", op.model.c_str(),
              rpc::to_string(op.state).c_str());
  if (op.replans > 0) std::printf(", replanned %d time(s)", op.replans);
  if (op.__isset.first_byte_unix) std::printf(", first byte after %.1f ms", 1e3 * (op.first_byte_unix - op.created_unix));
  if (op.__isset.finished_unix) std::printf(", done after %.3f s", op.finished_unix - op.created_unix);
  std::printf("\n");
  for (const auto& n : op.nodes) {
    if (n.role == rpc::NodeRole::SOURCE) continue;
    if (out) {
      std::printf("  %-16s %-10s %5d / %-5d slices  %10s/s", n.node.c_str(), rpc::to_string(n.state).c_str(), n.slices_received,
                  n.slices_total, FormatBytes(static_cast<uint64_t>(n.rate_bytes_per_s)).c_str());
    } else {
      std::printf("  %-16s %s", n.node.c_str(), rpc::to_string(n.state).c_str());
    }
    std::printf("%s\n", n.__isset.error ? ("  " + n.error).c_str() : "");
  }
  if (op.__isset.error) std::printf("error: %s\n", op.error.c_str());
  std::fflush(stdout);
}

// Follows an operation to its end (or `timeout`), showing progress on a terminal; prints the
// end (JSON with --json). Fails unless it succeeded.
int Follow(const char* command, CoordinatorFlags::Client& c, const std::string& id, double timeout, bool json) {
  const bool tty = !json && isatty(fileno(stdout));
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout);
  rpc::OperationStatus op;
  for (;;) {
    if (Status st = Call([&] { c.client->getOperation(op, c.header, id); }); !st.ok()) return Fail(command, st);
    if (tty) PrintProgress(op, true);
    if (op.state != rpc::OperationState::RUNNING && op.state != rpc::OperationState::PENDING) break;
    if (std::chrono::steady_clock::now() > until) {
      return Fail(command, DeadlineExceeded(op.id + " still running after " + std::to_string(timeout) + " s"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (json) {
    std::printf("%s\n", OperationJson(op).dump().c_str());
  } else if (!tty) {
    PrintProgress(op, false);
  }
  if (op.state != rpc::OperationState::SUCCEEDED) {
    return Fail(command, Internal(op.id + " " + rpc::to_string(op.state) + (op.__isset.error ? ": " + op.error : "")));
  }
  return kExitOk;
}

// -n N is --replicas N (the parser has no short flags).
std::vector<std::string> SpellReplicas(std::vector<std::string> args) {
  for (auto& a : args) {
    if (a == "-n") a = "--replicas";
  }
  return args;
}

}  // namespace

int RunCluster(const std::vector<std::string>& args) {
  if (args.empty() || args[0] != "status") {
    std::fprintf(stderr, "usage: modelcast cluster status [--coordinator HOST:PORT] [--json]\n");
    return args.size() == 1 && args[0] == "--help" ? kExitOk : kExitUsage;
  }
  CoordinatorFlags f;
  ArgParser p("modelcast cluster status", "The coordinator's view: nodes (alive, tiers), models and their holders.");
  f.Declare(p);
  if (int rc = ParseOrExit("cluster status", p, {args.begin() + 1, args.end()}); rc >= 0) return rc;
  auto c = f.Connect();
  if (!c.ok()) return Fail("cluster status", c.status());
  rpc::ClusterStatus s;
  if (Status st = Call([&] { c->client->getClusterStatus(s, c->header); }); !st.ok()) return Fail("cluster status", st);
  if (f.json) {
    nlohmann::json j{{"cluster", s.cluster}};
    for (const auto& n : s.nodes) {
      nlohmann::json nj{{"name", n.name}, {"alive", n.alive}, {"rpc_address", n.rpc_address}};
      for (const auto& t : n.inventory.tiers) nj["tiers"][t.tier] = {{"capacity", t.capacity}, {"used", t.used}};
      if (n.__isset.measured_nic_bytes_per_s) nj["measured_nic_bytes_per_s"] = n.measured_nic_bytes_per_s;
      j["nodes"].push_back(nj);
    }
    for (const auto& m : s.models) j["models"].push_back(m.summary.name);
    std::printf("%s\n", j.dump().c_str());
    return kExitOk;
  }
  std::printf("cluster %s: %zu node(s), %zu model(s)\n", s.cluster.c_str(), s.nodes.size(), s.models.size());
  for (const auto& n : s.nodes) {
    std::printf("  %-16s %-5s %s", n.name.c_str(), n.alive ? "up" : "down", n.rpc_address.c_str());
    for (const auto& t : n.inventory.tiers) {
      std::printf("  %s %s/%s", t.tier.c_str(), FormatBytes(static_cast<uint64_t>(t.used)).c_str(),
                  FormatBytes(static_cast<uint64_t>(t.capacity)).c_str());
    }
    if (n.__isset.measured_nic_bytes_per_s) {
      std::printf("  straggler: link measured at %.0f Mbit/s", n.measured_nic_bytes_per_s * 8 / 1e6);
    }
    std::printf("\n");
  }
  return kExitOk;
}

int RunModels(const std::vector<std::string>& args) {
  CoordinatorFlags f;
  std::string register_pkg;
  ArgParser p("modelcast models", "The registered models and where copies are; --register adds one from a package.");
  f.Declare(p);
  p.Flag("register", &register_pkg, "register the prepared package in this directory");
  if (int rc = ParseOrExit("models", p, args); rc >= 0) return rc;
  auto c = f.Connect();
  if (!c.ok()) return Fail("models", c.status());
  if (!register_pkg.empty()) {
    auto pkg = model::Package::Open(register_pkg);
    if (!pkg.ok()) return Fail("models", pkg.status());
    auto text = ReadFileToString(std::filesystem::path(register_pkg) / "manifest.json", 512ull << 20);
    if (!text.ok()) return Fail("models", text.status());
    auto files = pkg->ReadTextFiles();  // the tokenizer's, for the coordinator's serving API
    if (!files.ok()) return Fail("models", files.status());
    rpc::RegisterModelRequest req;
    req.header = c->header;
    req.name = pkg->manifest().name;
    req.manifest_json = *text;
    if (!files->empty()) req.__set_text_files(*files);
    rpc::ModelInfo info;
    if (Status st = Call([&] { c->client->registerModel(info, req); }); !st.ok()) return Fail("models", st);
  }
  std::vector<rpc::ModelInfo> models;
  if (Status st = Call([&] { c->client->listModels(models, c->header); }); !st.ok()) return Fail("models", st);
  nlohmann::json j = nlohmann::json::array();
  for (const auto& m : models) {
    if (f.json) {
      j.push_back({{"name", m.summary.name},
                   {"bytes", m.summary.total_bytes},
                   {"slices", m.summary.num_slices},
                   {"instances", m.instances},
                   {"loading", m.loading},
                   {"gpu", m.gpu_holders},
                   {"host", m.host_holders},
                   {"ssd", m.ssd_holders}});
      if (m.__isset.ssd_errors) j.back()["ssd_errors"] = m.ssd_errors;
    } else {
      std::printf("%-24s %10s %6d slices  instances %d (+%d loading)  gpu %zu  host %zu  ssd %zu\n",
                  m.summary.name.c_str(), FormatBytes(static_cast<uint64_t>(m.summary.total_bytes)).c_str(),
                  m.summary.num_slices, m.instances, m.loading, m.gpu_holders.size(), m.host_holders.size(),
                  m.ssd_holders.size());
      if (m.__isset.ssd_errors) {
        for (const auto& [node, why] : m.ssd_errors) {
          std::printf("  %s: not written to SSD: %s\n", node.c_str(), why.c_str());
        }
      }
    }
  }
  if (f.json) std::printf("%s\n", j.dump().c_str());
  return kExitOk;
}

int RunScaleOut(const std::vector<std::string>& args) {
  CoordinatorFlags f;
  std::string model, algorithm = "lambdapipe", targets;
  int64_t replicas = 1;
  bool wait = false, dry_run = false;
  double timeout = 600;
  ArgParser p("modelcast scale-out", "Ask the coordinator for N more replicas of a model.");
  f.Declare(p);
  p.Positional("model", &model, "the registered model");
  p.Flag("replicas", &replicas, "new replicas; -n N says the same [1]");
  p.Flag("algorithm", &algorithm, "planner algorithm [lambdapipe]");
  p.Flag("targets", &targets, "only these nodes may receive (comma-separated names) [any]");
  p.Flag("wait", &wait, "follow the operation to its end, showing each target's progress");
  p.Flag("dry-run", &dry_run, "plan and print, move nothing");
  p.Flag("timeout", &timeout, "seconds to wait with --wait [600]");
  if (int rc = ParseOrExit("scale-out", p, SpellReplicas(args)); rc >= 0) return rc;
  auto c = f.Connect();
  if (!c.ok()) return Fail("scale-out", c.status());
  rpc::ScaleOutRequest req;
  req.header = c->header;
  req.model = model;
  req.replicas = static_cast<int32_t>(replicas);
  req.options.__set_algorithm(algorithm);
  req.options.__set_dry_run(dry_run);
  if (!targets.empty()) req.options.__set_targets(SplitList(targets));
  req.__isset.options = true;
  rpc::ScaleOutResponse resp;
  if (Status st = Call([&] { c->client->scaleOut(resp, req); }); !st.ok()) return Fail("scale-out", st);
  if (dry_run) {
    std::printf("%s\n", resp.plan_json.c_str());
    return kExitOk;
  }
  if (!wait) {
    std::printf(f.json ? "{\"operation\": \"%s\"}\n" : "%s\n", resp.operation_id.c_str());
    return kExitOk;
  }
  return Follow("scale-out", *c, resp.operation_id, timeout, f.json);
}

int RunScaleIn(const std::vector<std::string>& args) {
  CoordinatorFlags f;
  std::string model, nodes;
  int64_t replicas = 1;
  bool wait = false;
  double timeout = 600;
  ArgParser p("modelcast scale-in",
              "Release N replicas of a model: each is drained and its GPU copy demoted to host memory,\n"
              "where it stays warm until the model's keep-alive ends. The newest go first.");
  f.Declare(p);
  p.Positional("model", &model, "the registered model");
  p.Flag("replicas", &replicas, "replicas to release; -n N says the same [1]");
  p.Flag("nodes", &nodes, "release these nodes' instances (comma-separated; as many as --replicas)");
  p.Flag("wait", &wait, "follow the operation to its end");
  p.Flag("timeout", &timeout, "seconds to wait with --wait [600]");
  if (int rc = ParseOrExit("scale-in", p, SpellReplicas(args)); rc >= 0) return rc;
  auto c = f.Connect();
  if (!c.ok()) return Fail("scale-in", c.status());
  rpc::ScaleInRequest req;
  req.header = c->header;
  req.model = model;
  req.replicas = static_cast<int32_t>(replicas);
  if (!nodes.empty()) req.__set_nodes(SplitList(nodes));
  std::string id;
  if (Status st = Call([&] { c->client->scaleIn(id, req); }); !st.ok()) return Fail("scale-in", st);
  if (!wait) {
    std::printf(f.json ? "{\"operation\": \"%s\"}\n" : "%s\n", id.c_str());
    return kExitOk;
  }
  return Follow("scale-in", *c, id, timeout, f.json);
}

int RunInstances(const std::vector<std::string>& args) {
  CoordinatorFlags f;
  std::string model;
  ArgParser p("modelcast instances", "Where a model is loaded or serving, as the coordinator placed it.");
  f.Declare(p);
  p.Positional("model", &model, "the registered model");
  if (int rc = ParseOrExit("instances", p, args); rc >= 0) return rc;
  auto c = f.Connect();
  if (!c.ok()) return Fail("instances", c.status());
  std::vector<rpc::Instance> list;
  if (Status st = Call([&] { c->client->listInstances(list, c->header, model); }); !st.ok()) {
    return Fail("instances", st);
  }
  nlohmann::json j = nlohmann::json::array();
  for (const auto& i : list) {
    const std::string pipeline = i.__isset.pipeline_id ? i.pipeline_id : "";
    if (f.json) {
      j.push_back({{"node", i.node}, {"state", rpc::to_string(i.state)}, {"since_unix", i.since_unix}});
      if (!pipeline.empty()) j.back()["pipeline"] = pipeline;
    } else {
      std::printf("%-16s %-9s since %.3f%s\n", i.node.c_str(), rpc::to_string(i.state).c_str(), i.since_unix,
                  pipeline.empty() ? "" : ("  in " + pipeline).c_str());
    }
  }
  if (f.json) std::printf("%s\n", j.dump().c_str());
  return kExitOk;
}

int RunGenerate(const std::vector<std::string>& args) {
  CoordinatorFlags f;
  std::string model, prompt, tokens, chat_file, stop;
  int64_t max_tokens = 16, seed = 0;
  double temperature = 0, top_p = 1;
  ArgParser p("modelcast generate",
              "One request through the coordinator's router (its `serving` section must be on): the\n"
              "answer, who served it, and its time to first token.");
  f.Declare(p);
  p.Positional("model", &model, "the registered model");
  p.Flag("prompt", &prompt, "text, through the model's own tokenizer (byte-level for a model without one)");
  p.Flag("tokens", &tokens, "token ids, comma-separated, instead of --prompt");
  p.Flag("chat-file", &chat_file,
         "a chat instead of --prompt: a JSON array of {\"role\", \"content\"} messages, rendered by the model's chat template");
  p.Flag("max-tokens", &max_tokens, "tokens to generate [16]");
  p.Flag("temperature", &temperature, "0: greedy [0]");
  p.Flag("top-p", &top_p, "nucleus sampling mass [1]");
  p.Flag("seed", &seed, "sampling seed [0]");
  p.Flag("stop", &stop, "a stop string: the answer ends before it");
  if (int rc = ParseOrExit("generate", p, args); rc >= 0) return rc;
  if (!prompt.empty() + !tokens.empty() + !chat_file.empty() != 1) {
    return Fail("generate", InvalidArgument("give one of --prompt, --tokens and --chat-file"));
  }
  rpc::GenerateRequest req;
  req.model = model;
  if (!prompt.empty()) {
    req.__set_prompt_text(prompt);
  } else if (!tokens.empty()) {
    auto ids = ParseTokens(tokens, "--tokens");
    if (!ids.ok()) return Fail("generate", ids.status());
    req.__set_prompt_tokens(*ids);
  } else {
    auto context = ReadChatFile(chat_file);
    if (!context.ok()) return Fail("generate", context.status());
    if (context->size() != 1) {
      return Fail("generate", InvalidArgument(chat_file + ": Router.generate takes the messages only (not tools)"));
    }
    const auto& j = (*context)["messages"];
    std::vector<rpc::ChatMessage> messages;
    for (size_t k = 0; k < j.size(); ++k) {
      const auto& m = j[k];
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string() ||
          (m.contains("content") && !m["content"].is_string() && !m["content"].is_null())) {
        return Fail("generate", InvalidArgument(chat_file + ": message " + std::to_string(k) +
                                                " is not {\"role\": string, \"content\": string}"));
      }
      rpc::ChatMessage cm;
      cm.role = m["role"];
      if (m.contains("content") && m["content"].is_string()) cm.content = m["content"];
      messages.push_back(std::move(cm));
    }
    req.__set_messages(messages);
  }
  if (!stop.empty()) req.__set_stop({stop});
  req.max_tokens = static_cast<int32_t>(max_tokens);
  req.temperature = temperature;
  req.top_p = top_p;
  req.seed = seed;
  auto c = f.Connect();
  if (!c.ok()) return Fail("generate", c.status());
  rpc::RouterClient router(
      std::make_shared<apache::thrift::protocol::TMultiplexedProtocol>(c->conn->protocol, "Router"));
  req.header = c->header;
  rpc::GenerateResponse out;
  if (Status st = Call([&] { router.generate(out, req); }); !st.ok()) return Fail("generate", st);
  if (f.json) {
    nlohmann::json j = {{"tokens", out.tokens},       {"finish_reason", out.finish_reason}, {"ttft_s", out.ttft_s},
                        {"tpot_s", out.tpot_s},       {"served_by", out.served_by},         {"attempts", out.attempts}};
    j["text"] = out.text;
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return kExitOk;
  }
  std::string ids;
  for (int32_t t : out.tokens) ids += (ids.empty() ? "" : ",") + std::to_string(t);
  std::printf("%s\ntokens: %s (%s)\nserved by %s, first token after %.1f ms, %.1f ms per token after it\n",
              text::Utf8Lossy(out.text).c_str(), ids.c_str(), out.finish_reason.c_str(), out.served_by.c_str(),
              out.ttft_s * 1000, out.tpot_s * 1000);
  return kExitOk;
}

int RunLivePlan(const std::vector<std::string>& args) {
  CoordinatorFlags f;
  std::string model, algorithm = "lambdapipe", svg;
  int64_t replicas = 1, ticks = 30;
  bool dry_run = true;
  ArgParser p("modelcast plan --dry-run",
              "The coordinator's plan for N more replicas of a model on the live cluster (its sources,\n"
              "targets and link rates), as `modelcast plan` shows it; nothing moves.");
  f.Declare(p);
  p.Positional("model", &model, "the registered model");
  p.Flag("dry-run", &dry_run, "plan only (always)");
  p.Flag("replicas", &replicas, "new replicas; -n N says the same [1]");
  p.Flag("algo", &algorithm, "planner algorithm [lambdapipe]");
  p.Flag("ticks", &ticks, "ticks to print [30]");
  p.Flag("svg", &svg, "also draw the plan as an SVG timeline into this file");
  if (int rc = ParseOrExit("plan", p, SpellReplicas(args)); rc >= 0) return rc;
  auto c = f.Connect();
  if (!c.ok()) return Fail("plan", c.status());
  rpc::ScaleOutRequest req;
  req.header = c->header;
  req.model = model;
  req.replicas = static_cast<int32_t>(replicas);
  req.options.__set_algorithm(algorithm);
  req.options.__set_dry_run(true);
  req.__isset.options = true;
  rpc::ScaleOutResponse resp;
  if (Status st = Call([&] { c->client->scaleOut(resp, req); }); !st.ok()) return Fail("plan", st);
  auto parsed = nlohmann::json::parse(resp.plan_json, nullptr, false);
  if (parsed.is_discarded()) return Fail("plan", Internal("the coordinator sent a plan that is not JSON"));
  auto plan = planner::Plan::FromJson(parsed);
  if (!plan.ok()) return Fail("plan", plan.status());
  if (!svg.empty()) {
    Status st = WriteFileAtomic(svg, planner::RenderPlanSvg(*plan));
    if (!st.ok()) return Fail("plan", st);
  }
  if (f.json) {
    std::printf("%s\n", resp.plan_json.c_str());
    return kExitOk;
  }
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
  };
  std::printf("%s plan for %s: %zu source(s) (%s) to %zu target(s) (%s); %u slices in %u blocks\n",
              plan->algorithm.c_str(), model.c_str(), resp.sources.size(), join(resp.sources).c_str(),
              resp.targets.size(), join(resp.targets).c_str(), plan->num_slices, plan->num_blocks);
  PrintPlanTiming(*plan, "");
  PrintPlan(*plan, ticks);
  if (!svg.empty()) std::printf("\nSVG timeline written to %s\n", svg.c_str());
  return kExitOk;
}

}  // namespace modelcast::cli
