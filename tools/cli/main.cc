#include <cstdio>
#include <cstring>

#include "command.h"
#include "modelcast/common/logging.h"

namespace modelcast::cli {

int Fail(const char* command, const Status& status) {
  std::fprintf(stderr, "modelcast %s: %s\n", command, status.message().c_str());
  return kExitFailure;
}

int ParseOrExit(const char* command, ArgParser& parser, const std::vector<std::string>& args) {
  Status s = parser.Parse(args);
  if (!s.ok()) {
    std::fprintf(stderr, "modelcast %s: %s (see 'modelcast %s --help')\n", command, s.message().c_str(), command);
    return kExitUsage;
  }
  if (parser.help_requested()) {
    std::fputs(parser.Usage().c_str(), stdout);
    return kExitOk;
  }
  return -1;
}

namespace {

constexpr Command kCommands[] = {
    {"synth", "write a synthetic Llama, Mistral, Qwen2 or Qwen3 model in the Hugging Face format", RunSynth},
    {"prepare", "re-lay an HF checkpoint out into a loading-optimised package", RunPrepare},
    {"inspect", "summarise a package or an HF checkpoint", RunInspect},
    {"verify", "re-check every slice checksum of a package", RunVerify},
    {"run", "run a checkpoint or package here alone: generated tokens, last logits as .npy", RunRun},
    {"tokenize", "the token ids of a text by the model's own tokenizer (tokenizer.json)", RunTokenize},
    {"detokenize", "the text of token ids by the model's own tokenizer", RunDetokenize},
    {"plan", "show the planner's plan for a scale-out on a cluster (text, JSON or SVG)", RunPlan},
    {"cluster", "the coordinator's view of the cluster (cluster status)", RunCluster},
    {"models", "registered models and where their copies are; --register PKG", RunModels},
    {"scale-out", "ask the coordinator for more replicas of a model (--wait follows it)", RunScaleOut},
    {"scale-in", "release replicas of a model (--wait follows it)", RunScaleIn},
    {"instances", "where a model is loaded and serving, as the coordinator placed it", RunInstances},
    {"generate", "one request through the coordinator's router: the answer and who served it", RunGenerate},
    {"store", "a node's tiered store: inventory, import, load, remove", RunStore},
    {"version", "print the version, the backends built in and the GPUs found", RunVersion},
};

void PrintUsage(FILE* out) {
  std::fputs("usage: modelcast <command> [args] [--help]\n\ncommands:\n", out);
  for (const auto& c : kCommands) std::fprintf(out, "  %-10s %s\n", c.name, c.summary);
}

}  // namespace
}  // namespace modelcast::cli

int main(int argc, char** argv) {
  using namespace modelcast::cli;
  std::vector<std::string> args(argv + 1, argv + argc);
  int level = 1;  // WARNING and above, unless --verbose
  for (auto it = args.begin(); it != args.end();) {
    if (*it == "-v" || *it == "--verbose") {
      level = 0;
      it = args.erase(it);
    } else {
      ++it;
    }
  }
  modelcast::InitLogging(argv[0], level);
  if (args.empty() || args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
    PrintUsage(args.empty() ? stderr : stdout);
    return args.empty() ? kExitUsage : kExitOk;
  }
  for (const auto& c : kCommands) {
    if (args[0] == c.name) return c.run(std::vector<std::string>(args.begin() + 1, args.end()));
  }
  std::fprintf(stderr, "modelcast: unknown command '%s' (see 'modelcast --help')\n", args[0].c_str());
  return kExitUsage;
}
