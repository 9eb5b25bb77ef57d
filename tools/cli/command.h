// The `modelcast` command line: each subcommand is a function from its arguments to an exit
// code. Errors are printed as one line, "modelcast <command>: <what is wrong>".
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "modelcast/common/args.h"
#include "modelcast/common/status.h"
#include "modelcast/planner/plan.h"

namespace modelcast::cli {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const std::vector<std::string>& args);
};

// Exit codes.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // the command ran and failed (bad input, I/O, corruption)
inline constexpr int kExitUsage = 2;    // the command line itself is wrong

// Prints "modelcast <command>: <message>" to stderr and returns kExitFailure.
int Fail(const char* command, const Status& status);
// Parses args; on a usage error prints it and returns kExitUsage; on --help prints usage and
// returns kExitOk; otherwise returns -1 (go on).
int ParseOrExit(const char* command, ArgParser& parser, const std::vector<std::string>& args);

// Comma-separated token ids ("1,17,300"); errors name `flag`.
Result<std::vector<int32_t>> ParseTokens(const std::string& text, const std::string& flag);

// A chat file (--chat-file): a JSON array of messages, or an object with "messages" and perhaps
// "tools"; returned as the context a chat template is rendered with.
Result<nlohmann::ordered_json> ReadChatFile(const std::string& path);

// The plan's length and when it first serves, one line ending with `after`.
void PrintPlanTiming(const planner::Plan& plan, const char* after);
// The plan as text: the first `show_ticks` ticks of transfers, the pipelines, the full instances.
void PrintPlan(const planner::Plan& plan, int64_t show_ticks);

int RunSynth(const std::vector<std::string>& args);
int RunPrepare(const std::vector<std::string>& args);
int RunInspect(const std::vector<std::string>& args);
int RunVerify(const std::vector<std::string>& args);
int RunVersion(const std::vector<std::string>& args);
int RunPlan(const std::vector<std::string>& args);
int RunStore(const std::vector<std::string>& args);
int RunCluster(const std::vector<std::string>& args);
int RunModels(const std::vector<std::string>& args);
int RunScaleOut(const std::vector<std::string>& args);
int RunScaleIn(const std::vector<std::string>& args);
int RunInstances(const std::vector<std::string>& args);
int RunGenerate(const std::vector<std::string>& args);
// `modelcast run DIR --tokens IDS|--prompt TEXT [--logits FILE.npy]`: a model run here alone.
int RunRun(const std::vector<std::string>& args);
// `modelcast tokenize DIR --text-file F` / `detokenize DIR --ids IDS`: the checkpoint's (or
// package's) own tokenizer.
int RunTokenize(const std::vector<std::string>& args);
int RunDetokenize(const std::vector<std::string>& args);
// `modelcast plan --dry-run MODEL -n N`: the coordinator's plan for the live cluster.
int RunLivePlan(const std::vector<std::string>& args);

}  // namespace modelcast::cli
