// The real `modelcast` binary: the model-package path end to end, and every bad input
// refused with one line naming the problem, a non-zero exit, and nothing half-written.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "modelcast/model/checkpoint.h"
#include "support/process.h"
#include "support/reference_llama.h"
#include "support/temp_dir.h"

namespace modelcast {
namespace {
namespace fs = std::filesystem;
using testing::ListDir;
using testing::RunProcess;

testing::ProcessResult Modelcast(std::vector<std::string> args) {
  args.insert(args.begin(), testing::ToolPath("modelcast"));
  return RunProcess(args);
}

// One line on stderr, starting "modelcast <command>: ", containing `needle`.
void ExpectOneLineError(const testing::ProcessResult& r, const std::string& command, const std::string& needle,
                        int exit_code = 1) {
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, exit_code) << r.err;
  EXPECT_EQ(r.err.rfind("modelcast " + command + ": ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "'" << needle << "' not in: " << r.err;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = Modelcast({"synth", "--preset", "tiny", "--seed", "3", "--out", (dir_ / "hf").string()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  testing::TempDir dir_;
};

TEST_F(CliTest, SynthPrepareVerifyInspect) {
  auto r =
      Modelcast({"prepare", (dir_ / "hf").string(), (dir_ / "pkg").string(), "--blocks", "2", "--slice-mib", "0.0625"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("prepared 'hf'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("2 blocks"), std::string::npos) << r.out;
  r = Modelcast({"verify", (dir_ / "pkg").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("all checksums match"), std::string::npos);
  r = Modelcast({"inspect", (dir_ / "pkg").string(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["kind"], "package");
  EXPECT_EQ(j["blocks"], 2);
  EXPECT_EQ(j["layers"], 4);
  r = Modelcast({"inspect", (dir_ / "hf").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Hugging Face"), std::string::npos);
  r = Modelcast({"inspect", (dir_ / "pkg").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("embeddings + layers 0-1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("layers 2-3 + norm, lm_head"), std::string::npos) << r.out;
}

// The tokenizer's files go into the package with the model (checksummed in the manifest, checked
// by verify), and `tokenize`/`detokenize` read them there as in the checkpoint. A hand-made
// byte-level BPE: "h i" merges first, so " hi" is "Ġ" then "hi".
TEST_F(CliTest, ThePackageCarriesTheTokenizer) {
  const nlohmann::json tokenizer = {
      {"model",
       {{"type", "BPE"},
        {"vocab", {{"h", 0}, {"i", 1}, {"\u0120", 2}, {"hi", 3}, {"\u0120hi", 4}, {"\u0120h", 5}}},
        {"merges", {"h i", "\u0120 h", "\u0120h i"}}}},
      {"added_tokens", {{{"id", 6}, {"content", "<|eot|>"}, {"special", true}}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}}}};
  std::ofstream(dir_ / "hf" / "tokenizer.json") << tokenizer.dump();
  std::ofstream(dir_ / "hf" / "tokenizer_config.json")
      << R"({"eos_token": "<|eot|>", "chat_template": "{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}hi{% endif %}"})";
  std::ofstream(dir_ / "hf" / "generation_config.json") << R"({"eos_token_id": 6})";
  auto r = Modelcast({"prepare", (dir_ / "hf").string(), (dir_ / "pkg").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    EXPECT_TRUE(fs::exists(dir_ / "pkg" / f)) << f;
  }
  r = Modelcast({"inspect", (dir_ / "pkg").string(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["tokenizer"], "byte-level BPE, 6 tokens + 1 added (tokenizer.json)");
  for (const char* where : {"hf", "pkg"}) {
    r = Modelcast({"tokenize", (dir_ / where).string(), "--text", "hi hi<|eot|>", "--json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out)["ids"], nlohmann::json({3, 2, 3, 6})) << where;
  }
  // A chat rendered by the package's template, then tokenized as it stands.
  std::ofstream(dir_ / "chat.json") << R"([{"role": "user", "content": "hi hi"}])";
  r = Modelcast({"tokenize", (dir_ / "pkg").string(), "--chat-file", (dir_ / "chat.json").string(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["text"], "hi hi<|eot|>hi");
  EXPECT_EQ(nlohmann::json::parse(r.out)["ids"], nlohmann::json({3, 2, 3, 6, 3}));
  r = Modelcast({"detokenize", (dir_ / "pkg").string(), "--ids", "3,2,3,6", "--skip-special-tokens", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["text"], "hi hi");
  r = Modelcast({"verify", (dir_ / "pkg").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("3 tokenizer file(s), all checksums match"), std::string::npos) << r.out;
  // Bad input: text that is not UTF-8, an id the tokenizer lacks, a changed file.
  std::ofstream(dir_ / "bad.txt") << "ok \xC3\x28";
  ExpectOneLineError(Modelcast({"tokenize", (dir_ / "pkg").string(), "--text-file", (dir_ / "bad.txt").string()}),
                     "tokenize", "the text is not valid UTF-8 at byte 3");
  ExpectOneLineError(Modelcast({"detokenize", (dir_ / "pkg").string(), "--ids", "3,77"}), "detokenize",
                     "token id 77 is not in the tokenizer's vocabulary");
  std::ofstream(dir_ / "pkg" / "generation_config.json") << R"({"eos_token_id": 7})";
  ExpectOneLineError(Modelcast({"verify", (dir_ / "pkg").string()}), "verify",
                     (dir_ / "pkg" / "generation_config.json").string() + ": checksum mismatch");
  // A tokenizer modelcast does not implement is named; the model is served through ids.
  std::ofstream(dir_ / "hf" / "tokenizer.json") << R"({"model": {"type": "Unigram", "vocab": []}})";
  r = Modelcast({"inspect", (dir_ / "hf").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("the tokenizer cannot be used: " + (dir_ / "hf" / "tokenizer.json").string() +
                       ": model type \"Unigram\" is not implemented (BPE is) (send token ids)"),
            std::string::npos)
      << r.out;
}

TEST_F(CliTest, VerifyNamesTheFirstBadSlice) {
  ASSERT_EQ(
      Modelcast({"prepare", (dir_ / "hf").string(), (dir_ / "pkg").string(), "--blocks", "2", "--slice-mib", "0.0625"})
          .exit_code,
      0);
  const auto manifest = nlohmann::json::parse(testing::ReadAll(dir_ / "pkg/manifest.json"));
  const uint64_t first = manifest["blocks"][1]["first_slice"].get<uint64_t>();
  testing::FlipByte(dir_ / "pkg/block-0001.bin", manifest["slices"][first + 3]["offset"].get<uint64_t>() + 9);
  testing::FlipByte(dir_ / "pkg/block-0001.bin", manifest["slices"][first + 4]["offset"].get<uint64_t>() + 9);
  auto r = Modelcast({"verify", (dir_ / "pkg").string()});
  ExpectOneLineError(r, "verify", "block 1 slice 3");
  EXPECT_NE(r.err.find("block-0001.bin"), std::string::npos);
  EXPECT_NE(r.err.find("(2 bad slices in all)"), std::string::npos) << r.err;
}

TEST_F(CliTest, PrepareBadInputLeavesNothing) {
  const std::string hf = (dir_ / "hf").string(), pkg = (dir_ / "pkg").string();
  ExpectOneLineError(Modelcast({"prepare", hf, pkg, "--blocks", "9"}), "prepare", "more than the model's 4 layers");
  ExpectOneLineError(Modelcast({"prepare", hf, pkg, "--blocks", "0"}), "prepare", "--blocks must be at least 1");
  ExpectOneLineError(Modelcast({"prepare", hf, pkg, "--slice-mib", "0.001"}), "prepare", "multiple of 4 KiB");
  ExpectOneLineError(Modelcast({"prepare", (dir_ / "nope").string(), pkg}), "prepare", "nope is not a directory");
  ExpectOneLineError(Modelcast({"prepare", hf, (dir_ / "no/such/parent/pkg").string()}), "prepare", "does not exist");
  ExpectOneLineError(Modelcast({"prepare", hf, pkg, "--blocks", "two"}), "prepare", "--blocks expects an integer", 2);
  ExpectOneLineError(Modelcast({"prepare", hf}), "prepare", "missing argument DST", 2);
  ExpectOneLineError(Modelcast({"prepare", hf, pkg, "--frobnicate"}), "prepare", "unknown flag --frobnicate", 2);
  // A truncated safetensors file is named.
  fs::resize_file(dir_ / "hf/model.safetensors", fs::file_size(dir_ / "hf/model.safetensors") / 2);
  auto r = Modelcast({"prepare", hf, pkg});
  ExpectOneLineError(r, "prepare", (dir_ / "hf/model.safetensors").string());
  EXPECT_NE(r.err.find("truncated"), std::string::npos) << r.err;
  EXPECT_EQ(ListDir(dir_.path()), std::vector<std::string>{"hf"});
}

TEST_F(CliTest, PrepareRefusesToOverwriteWithoutForce) {
  const std::string hf = (dir_ / "hf").string(), pkg = (dir_ / "pkg").string();
  ASSERT_EQ(Modelcast({"prepare", hf, pkg}).exit_code, 0);
  ExpectOneLineError(Modelcast({"prepare", hf, pkg}), "prepare", "already exists (pass --force to replace it)");
  EXPECT_EQ(Modelcast({"prepare", hf, pkg, "--force", "--blocks", "1"}).exit_code, 0);
  EXPECT_EQ(ListDir(dir_.path()), (std::vector<std::string>{"hf", "pkg"}));
}

TEST_F(CliTest, OtherCommandsRefuseBadInput) {
  ExpectOneLineError(Modelcast({"synth", "--preset", "huge", "--out", (dir_ / "x").string()}), "synth",
                     "unknown preset 'huge'");
  ExpectOneLineError(Modelcast({"synth", "--dtype", "int8", "--out", (dir_ / "x").string()}), "synth",
                     "unsupported model dtype 'int8'");
  ExpectOneLineError(Modelcast({"synth", "--preset", "tiny"}), "synth", "--out is required");
  ExpectOneLineError(Modelcast({"synth", "--out", (dir_ / "hf").string()}), "synth", "already exists");
  ExpectOneLineError(Modelcast({"verify", (dir_ / "hf").string()}), "verify", "manifest.json does not exist");
  ExpectOneLineError(Modelcast({"inspect", dir_.path().string()}), "inspect", "neither a package");
  testing::WriteAll(dir_ / "hf/config.json", "{\"model_type\": \"llama\"");
  ExpectOneLineError(Modelcast({"inspect", (dir_ / "hf").string()}), "inspect", "config.json: invalid JSON");
  auto r = Modelcast({"frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("unknown command 'frobnicate'"), std::string::npos);
  EXPECT_EQ(ListDir(dir_.path()), std::vector<std::string>{"hf"});
}

TEST_F(CliTest, ShardedSynthAndVersion) {
  auto r = Modelcast({"synth", "--preset", "tiny", "--dtype", "fp32", "--shard-mib", "1", "--layers", "6", "--out",
                      (dir_ / "sharded").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir_ / "sharded/model.safetensors.index.json"));
  r = Modelcast({"prepare", (dir_ / "sharded").string(), (dir_ / "pkg").string(), "--blocks", "3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Modelcast({"verify", (dir_ / "pkg").string()}).exit_code, 0);
  r = Modelcast({"version"});
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("modelcast 0."), std::string::npos);
  EXPECT_NE(r.out.find("GPUs"), std::string::npos);
}

// `modelcast run`: a Qwen3 checkpoint with yarn scaling and its package, run here alone; the
// .npy file read by NumPy (its format's owners) and its logits against the float64 reference.
TEST_F(CliTest, RunWritesLogitsNumpyReadsAndTheReferenceAgreesWith) {
  const fs::path hf = dir_ / "qwen3";
  auto r = Modelcast({"synth", "--preset", "tiny", "--seed", "5", "--family", "qwen3", "--rope-scaling",
                      R"({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64})", "--out",
                      hf.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Modelcast({"inspect", hf.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Qwen3ForCausalLM (qwen3)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("scaling yarn (factor 4, original 64)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("q/k norms per head"), std::string::npos) << r.out;
  const std::vector<int> prompt = {1, 17, 300, 42, 9};
  r = Modelcast({"run", hf.string(), "--tokens", "1,17,300,42,9", "--max-tokens", "4", "--logits",
                 (dir_ / "logits.npy").string(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["tokens"].size(), 4u) << r.out;
  // NumPy reads the file: float32, shape [vocab].
  auto py = RunProcess({"/usr/bin/python3", "-c",
                        "import sys, numpy; a = numpy.load(sys.argv[1]); "
                        "print(a.dtype, a.shape[0], len(a.shape)); print(' '.join(repr(float(x)) for x in a))",
                        (dir_ / "logits.npy").string()});
  if (py.exit_code != 0 && py.err.find("No module named 'numpy'") != std::string::npos) {
    GTEST_SKIP() << "no NumPy here to read the .npy file: " << py.err;
  }
  ASSERT_EQ(py.exit_code, 0) << py.err;
  std::istringstream in(py.out);
  std::string dtype;
  size_t n = 0, dims = 0;
  in >> dtype >> n >> dims;
  EXPECT_EQ(dtype, "float32");
  EXPECT_EQ(dims, 1u);
  std::vector<float> logits(n);
  for (auto& v : logits) in >> v;
  auto ck = model::HfCheckpoint::Open(hf);
  ASSERT_TRUE(ck.ok());
  ASSERT_EQ(n, static_cast<size_t>(ck->config().vocab_size));
  auto ref = testing::LoadReferenceWeights(*ck);
  ASSERT_TRUE(ref.ok());
  const auto want = testing::ReferenceForward(*ref, prompt).logits.back();
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (logits[i] - want[i]) * (logits[i] - want[i]);
    den += want[i] * want[i];
  }
  EXPECT_LT(std::sqrt(num / den), 1e-5);
  // The first token generated is the reference's argmax.
  EXPECT_EQ(j["tokens"][0].get<int>(), std::max_element(want.begin(), want.end()) - want.begin());
  // The package gives the same tokens; bad input is refused with one line.
  r = Modelcast({"prepare", hf.string(), (dir_ / "qpkg").string(), "--blocks", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto again = Modelcast({"run", (dir_ / "qpkg").string(), "--tokens", "1,17,300,42,9", "--max-tokens", "4", "--json"});
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(nlohmann::json::parse(again.out)["tokens"], j["tokens"]);
  ExpectOneLineError(Modelcast({"run", hf.string(), "--tokens", "1,x"}), "run", "'x' is not a token id");
  ExpectOneLineError(Modelcast({"run", hf.string(), "--tokens", "99999"}), "run", "outside the vocabulary");
  ExpectOneLineError(Modelcast({"run", hf.string(), "--tokens", "1", "--max-tokens", "100000"}), "run",
                     "passes the model's");
  EXPECT_EQ(Modelcast({"run", hf.string()}).exit_code, 2);
}

TEST(PlanCliTest, PlansSimulatesAndDraws) {
  testing::TempDir dir;
  const std::string cluster = testing::SourcePath("cluster-configs/lambdascale-testbed.yaml");
  auto r = Modelcast({"plan", "--cluster", cluster, "--model", "synth-small", "--targets", "7", "--sources", "2",
                      "--svg", (dir / "plan.svg").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("plan validated"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("k-way"), std::string::npos);
  const std::string svg = testing::ReadAll(dir / "plan.svg");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  r = Modelcast({"plan", "--cluster", cluster, "--model", "synth-tiny", "--targets", "3", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["algorithm"], "lambdapipe");
  EXPECT_EQ(j["full_at"].size(), 12u);

  auto sim =
      RunProcess({testing::ToolPath("modelcast-sim"), "--cluster", cluster, "--model", "llama-2-13b", "--algo", "all"});
  ASSERT_EQ(sim.exit_code, 0) << sim.err;
  const std::string trimmed = sim.out.substr(0, sim.out.find_last_not_of('\n') + 1);
  const std::string last = trimmed.substr(trimmed.rfind('\n') + 1);  // the JSON line
  auto js = nlohmann::json::parse(last);
  EXPECT_EQ(js["results"].size(), 6u);
  EXPECT_LT(js["results"]["lambdapipe"]["ratio_to_ideal"].get<double>(), 1.1);
}

TEST(PlanCliTest, BadClusterAndModelInputs) {
  testing::TempDir dir;
  testing::WriteAll(dir / "bad.yaml", "name: x\nnode_groups:\n  - prefix: n\n    count: 2\n    nicc: 1Gbit\n");
  auto r = Modelcast({"plan", "--cluster", (dir / "bad.yaml").string(), "--model", "synth-tiny"});
  ExpectOneLineError(r, "plan", "bad.yaml:5: node_groups[0].nicc: unknown key");
  r = Modelcast({"plan", "--cluster", testing::SourcePath("cluster-configs/local.yaml"), "--model", "gpt-5"});
  ExpectOneLineError(r, "plan", "unknown model 'gpt-5'");
  r = Modelcast({"plan", "--cluster", testing::SourcePath("cluster-configs/local.yaml"), "--model", "synth-tiny",
                 "--targets", "9"});
  ExpectOneLineError(r, "plan", "cluster 'local' has 4");
  r = Modelcast({"plan", "--cluster", testing::SourcePath("cluster-configs/local.yaml"), "--model", "synth-tiny",
                 "--algo", "magic"});
  ExpectOneLineError(r, "plan", "unknown planning algorithm 'magic'");
  r = Modelcast({"plan", "--cluster", (dir / "missing.yaml").string(), "--model", "synth-tiny"});
  ExpectOneLineError(r, "plan", "missing.yaml");
  auto sim = RunProcess({testing::ToolPath("modelcast-sim"), "--cluster",
                         testing::SourcePath("cluster-configs/local.yaml"), "--model", "synth-tiny", "--blocks", "9"});
  EXPECT_EQ(sim.exit_code, 1);
  EXPECT_NE(sim.err.find("more than the model's 4 layers"), std::string::npos) << sim.err;
}

}  // namespace
}  // namespace modelcast
