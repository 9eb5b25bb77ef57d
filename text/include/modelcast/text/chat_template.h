// A model's chat template: the Jinja text of tokenizer_config.json's `chat_template`, rendered as
// transformers renders it (jinja2 with trim_blocks and lstrip_blocks, loop controls, its
// `raise_exception`, `tojson` and `strftime_now`), so that the prompt a model sees from modelcast
// is byte for byte the one it sees from transformers.
//
// The part of Jinja chat templates use is implemented: text, {{ }}, {% %}, {# #} with `-`
// whitespace control; if/elif/else, for (with `loop`, `else`, a filter condition and tuple
// unpacking), set (names, namespace attributes, blocks), macro and call; literals, lists, dicts,
// tuples, attribute and item access, slices, calls, the operators and tests, and the filters
// and methods the families' templates call. A template using something else is refused by name
// when it is parsed; an error while rendering (an unknown filter, `raise_exception`) names the
// line.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "modelcast/common/status.h"

namespace modelcast::text {

class ChatTemplate {
 public:
  static Result<std::unique_ptr<ChatTemplate>> Parse(std::string_view source, const std::string& name);
  ~ChatTemplate();
  // Renders with `context`'s keys as variables (messages, tools, add_generation_prompt,
  // bos_token, eos_token, ...). A template's `raise_exception` is InvalidArgument with its message.
  Result<std::string> Render(const nlohmann::ordered_json& context) const;

  struct Node;

 private:
  ChatTemplate() = default;
  std::string name_;
  std::vector<std::unique_ptr<Node>> body_;
};

// What a model's tokenizer_config.json says about chat: its template (one, or named ones of which
// "default" and "tool_use" are used) and the special tokens templates are rendered with.
// FailedPrecondition naming `where` when it has no template or is not a JSON object.
struct ChatSetup {
  std::unique_ptr<ChatTemplate> plain, with_tools;  // with_tools: a named "tool_use" template, if any
  std::string bos_token, eos_token;
  // The context's bos_token/eos_token set, add_generation_prompt on; a context with tools is
  // rendered by the "tool_use" template where there is one.
  Result<std::string> RenderForGeneration(nlohmann::ordered_json context) const;
};
Result<std::unique_ptr<ChatSetup>> ChatSetupFromTokenizerConfig(std::string_view tokenizer_config,
                                                                const std::string& where);

}  // namespace modelcast::text
