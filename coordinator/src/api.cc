// The serving API: Router.generate over Thrift (token ids, text or chat messages), and over HTTP
// OpenAI's: GET /v1/models, POST /v1/completions (`prompt` as text or token ids) and POST
// /v1/chat/completions (messages through the model's chat template); `max_tokens`,
// `temperature`, `top_p`, `seed`, `stop` strings, `stream` as server-sent events.
#include <glog/logging.h>
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>

#include <nlohmann/json.hpp>

#include "Router.h"
#include "cluster_state.h"
#include "http_errors.h"
#include "modelcast/coordinator/serving.h"
#include "modelcast/pipeline/tokenizer.h"
#include "modelcast/rpc/errors.h"
#include "modelcast/text/stop_strings.h"

namespace modelcast::coordinator {
namespace {

using Json = nlohmann::json;

// A request's answer as it arrives from the router's threads: its tokens, and its text (the
// model's stream decoder's, less whatever could still begin a stop string), up to a stop token,
// a stop string or max_tokens.
struct Stream {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<int32_t, std::string>> fresh;  // tokens and the text each let show, not yet taken
  std::string tail;                                   // the text shown at the end (held back until then)
  std::vector<int32_t> tokens;
  std::string text;  // all the text shown
  bool done = false;
  bool stop_string = false;  // a stop string ended it
  Status status;
  pipeline::RequestTiming timing;
};

// How a model's text becomes token ids and back: its own tokenizer (special tokens added as its
// post-processor says: Llama's bos), or the byte-level fallback for a model without one.
struct TextCodec {
  std::shared_ptr<const text::Tokenizer> tokenizer;
  model::LlamaConfig config;

  Result<std::vector<int32_t>> Encode(const std::string& s) const {
    if (!tokenizer) return pipeline::ByteTokenizer::Encode(s, config);
    if (s.empty()) return InvalidArgument("an empty prompt");
    return tokenizer->Encode(s, /*add_special_tokens=*/true);
  }
};

Result<TextCodec> CodecFor(const ServingPlane& plane, const std::string& model) {
  TextCodec c;
  MC_ASSIGN_OR_RETURN(c.config, plane.ModelConfig(model));
  MC_ASSIGN_OR_RETURN(c.tokenizer, plane.ModelTokenizer(model));
  return c;
}

// The text of tokens as they are generated, never part of a character (the byte-level fallback
// gives each token's byte), special tokens left out, held back where it could begin a stop string.
class AnswerText {
 public:
  AnswerText(const TextCodec& codec, text::StopStrings stops) : codec_(codec), stops_(std::move(stops)) {
    if (codec_.tokenizer) decoder_.emplace(*codec_.tokenizer, true);
  }
  std::string Next(int32_t t) { return stops_.Feed(Piece(t)); }
  std::string Finish() {
    std::string rest;
    if (decoder_) {
      auto r = decoder_->Finish();
      if (r.ok()) rest = std::move(*r);
    }
    std::string out = stops_.Feed(rest);
    return out + stops_.Finish();
  }
  bool stopped() const { return stops_.stopped(); }

 private:
  std::string Piece(int32_t t) {
    if (!decoder_) return pipeline::ByteTokenizer::Decode({t});
    if (!codec_.tokenizer->IdToken(t)) return std::string();  // a vocabulary padded past the tokenizer's
    auto r = decoder_->Next(t);
    return r.ok() ? *r : std::string();
  }
  TextCodec codec_;
  std::optional<text::StreamDecoder> decoder_;
  text::StopStrings stops_;
};

// What a client asked for besides the prompt.
struct Asked {
  int max_tokens = 16;
  double temperature = 1.0, top_p = 1.0;
  uint64_t seed = 0;
  std::optional<int32_t> stop_token;  // absent: the model's eos ids; negative: none
  text::StopStrings stops;
};

// Fills the request's prompt, sampling and stops from what the client sent, checked against the
// model; the answer (tokens and text) goes to `stream`.
Status Prepare(const ServingPlane& plane, const std::string& model, const TextCodec& codec, std::vector<int32_t> prompt,
               Asked asked, pipeline::GenerateRequest* out, const std::shared_ptr<Stream>& stream) {
  const model::LlamaConfig& config = codec.config;
  for (int32_t t : prompt) {
    if (t < 0 || t >= config.vocab_size) {
      return InvalidArgument("prompt token " + std::to_string(t) + " is outside model '" + model +
                             "''s vocabulary [0, " + std::to_string(config.vocab_size) + ")");
    }
  }
  if (static_cast<int64_t>(prompt.size()) + asked.max_tokens > config.MaxPositions()) {
    return OutOfRange("a prompt of " + std::to_string(prompt.size()) + " tokens plus max_tokens " +
                      std::to_string(asked.max_tokens) + " exceeds model '" + model + "''s " +
                      std::to_string(config.MaxPositions()) + " positions");
  }
  out->model = model;
  out->prompt = std::move(prompt);
  out->max_tokens = asked.max_tokens;
  out->sampling = {asked.temperature, asked.top_p, asked.seed};
  if (asked.stop_token) {
    if (*asked.stop_token >= 0) out->stop_tokens = {*asked.stop_token};
  } else {
    MC_ASSIGN_OR_RETURN(out->stop_tokens, plane.ModelEosIds(model));
  }
  auto answer = std::make_shared<AnswerText>(codec, std::move(asked.stops));  // the router's threads only
  out->on_token = [stream, answer](int32_t t) {
    std::string shown = answer->Next(t);
    std::lock_guard<std::mutex> lock(stream->mu);
    stream->tokens.push_back(t);
    stream->text += shown;
    stream->fresh.emplace_back(t, std::move(shown));
    stream->stop_string = answer->stopped();
    stream->cv.notify_all();
    return !answer->stopped();
  };
  out->on_done = [stream, answer](const Status& s, const pipeline::RequestTiming& timing) {
    std::string tail = s.ok() ? answer->Finish() : std::string();
    std::lock_guard<std::mutex> lock(stream->mu);
    stream->text += tail;
    stream->tail = std::move(tail);
    stream->stop_string = answer->stopped();
    stream->done = true;
    stream->status = s;
    stream->timing = timing;
    stream->cv.notify_all();
  };
  return Status::Ok();
}

std::string FinishReason(const Stream& s, const std::vector<int32_t>& stop_tokens) {
  return s.stop_string || (!s.tokens.empty() &&
                           std::find(stop_tokens.begin(), stop_tokens.end(), s.tokens.back()) != stop_tokens.end())
             ? "stop"
             : "length";
}

// Waits for the end of a request (the router fails it within its queue timeout plus the time
// its steps take, each bounded by the step timeout).
Status WaitDone(Stream& s, double limit) {
  std::unique_lock<std::mutex> lock(s.mu);
  if (!s.cv.wait_for(lock, std::chrono::duration<double>(limit), [&] { return s.done; })) {
    return DeadlineExceeded("the request did not finish within " + std::to_string(limit) + " s");
  }
  return s.status;
}

// A chat's prompt: the messages (roles the templates know; content a string or text parts)
// rendered by the model's chat template with its generation prompt, the rendered text tokenized
// as it stands (its special tokens are in it). `context` holds "messages" and whatever else the
// template reads ("tools", ...).
Result<std::vector<int32_t>> ChatPrompt(const ServingPlane& plane, const std::string& model, const TextCodec& codec,
                                        nlohmann::ordered_json context) {
  if (!codec.tokenizer) {
    return InvalidArgument("model '" + model + "' has no tokenizer of its own: chat needs one");
  }
  auto chat = plane.ModelChat(model);
  if (!chat.ok()) {  // no template (FailedPrecondition), or one that cannot be parsed
    return chat.status().code() == StatusCode::kFailedPrecondition ? InvalidArgument(chat.status().message())
                                                                   : chat.status();
  }
  if (!context.contains("messages") || !context["messages"].is_array() || context["messages"].empty()) {
    return InvalidArgument("'messages' must be a non-empty array");
  }
  nlohmann::ordered_json& messages = context["messages"];
  for (size_t k = 0; k < messages.size(); ++k) {
    auto& m = messages[k];
    const std::string at = "'messages[" + std::to_string(k) + "]";
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
      return InvalidArgument(at + "' must be an object with a 'role'");
    }
    const std::string role = m["role"];
    if (role != "system" && role != "user" && role != "assistant" && role != "tool" && role != "developer") {
      return InvalidArgument(at + ".role' is '" + role + "': system, user, assistant, tool or developer");
    }
    if (m.contains("content") && m["content"].is_array()) {  // text parts, joined
      std::string text;
      for (const auto& part : m["content"]) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string()) {
          return InvalidArgument(at + ".content' has a part that is not text; this model reads text");
        }
        text += part["text"].get<std::string>();
      }
      m["content"] = text;
    } else if (m.contains("content") && !m["content"].is_string() && !m["content"].is_null()) {
      return InvalidArgument(at + ".content' must be a string or an array of text parts");
    } else if (!m.contains("content") || m["content"].is_null()) {
      m["content"] = "";
    }
    if (auto bad = text::FirstInvalidUtf8(m["content"].get<std::string>())) {
      return InvalidArgument(at + ".content' is not valid UTF-8 (at byte " + std::to_string(*bad) + ")");
    }
  }
  auto rendered = (*chat)->RenderForGeneration(std::move(context));
  if (!rendered.ok()) return InvalidArgument(rendered.status().WithContext("the chat template").message());
  return codec.tokenizer->Encode(*rendered, /*add_special_tokens=*/false);
}

// OpenAI's `stop`: absent or null, a string, or an array of strings.
Result<text::StopStrings> StopsFrom(const nlohmann::json& body) {
  if (!body.contains("stop") || body["stop"].is_null()) return text::StopStrings();
  const auto& v = body["stop"];
  if (v.is_string()) return text::StopStrings::Make({v.get<std::string>()});
  if (!v.is_array()) return InvalidArgument("'stop' must be a string or an array of strings");
  std::vector<std::string> stops;
  for (const auto& s : v) {
    if (!s.is_string()) return InvalidArgument("'stop' must be a string or an array of strings");
    stops.push_back(s.get<std::string>());
  }
  return text::StopStrings::Make(std::move(stops));
}

class RouterHandler : public rpc::RouterIf {
 public:
  explicit RouterHandler(ServingPlane* plane) : plane_(plane) {}
  void generate(rpc::GenerateResponse& out, const rpc::GenerateRequest& req) override {
    rpc::ThrowIfError(rpc::CheckCaller(plane_->security(), req.header, "generate"));
    auto codec = CodecFor(*plane_, req.model);
    rpc::ThrowIfError(codec.status());
    const int given = req.__isset.prompt_tokens + req.__isset.prompt_text + req.__isset.messages;
    if (given != 1) {
      rpc::ThrowIfError(InvalidArgument("give one of prompt_tokens, prompt_text and messages (" +
                                        std::to_string(given) + " given)"));
    }
    std::vector<int32_t> prompt;
    if (req.__isset.prompt_tokens) {
      prompt = req.prompt_tokens;
    } else if (req.__isset.prompt_text) {
      auto t = codec->Encode(req.prompt_text);
      rpc::ThrowIfError(t.status());
      prompt = std::move(*t);
    } else {
      nlohmann::ordered_json context = {{"messages", nlohmann::ordered_json::array()}};
      for (const auto& m : req.messages) context["messages"].push_back({{"role", m.role}, {"content", m.content}});
      auto t = ChatPrompt(*plane_, req.model, *codec, std::move(context));
      rpc::ThrowIfError(t.status());
      prompt = std::move(*t);
    }
    Asked asked{.max_tokens = req.max_tokens, .temperature = req.temperature, .top_p = req.top_p,
                .seed = static_cast<uint64_t>(req.seed),
                .stop_token = req.__isset.stop_token ? std::optional<int32_t>(req.stop_token) : std::nullopt};
    if (req.__isset.stop) {
      auto stops = text::StopStrings::Make(req.stop);
      rpc::ThrowIfError(stops.status());
      asked.stops = std::move(*stops);
    }
    auto stream = std::make_shared<Stream>();
    pipeline::GenerateRequest r;
    rpc::ThrowIfError(Prepare(*plane_, req.model, *codec, std::move(prompt), std::move(asked), &r, stream));
    const std::vector<int32_t> stop = r.stop_tokens;
    rpc::ThrowIfError(plane_->router().Submit(std::move(r)));
    rpc::ThrowIfError(WaitDone(*stream, 3600));
    std::lock_guard<std::mutex> lock(stream->mu);
    out.tokens = stream->tokens;
    out.text = stream->text;
    out.finish_reason = FinishReason(*stream, stop);
    out.ttft_s = stream->timing.ttft_s;
    out.tpot_s = stream->timing.tpot_s;
    out.queued_s = stream->timing.queued_s;
    out.served_by = stream->timing.served_by;
    out.attempts = stream->timing.attempts;
  }

 private:
  ServingPlane* plane_;
};

// JSON text of what the API answers; bytes that are not UTF-8 (a message may quote them) as U+FFFD.
std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

void Error(httplib::Response& res, int http, const Status& s) { HttpError(res, http, s); }

int HttpStatus(const Status& s) {
  switch (s.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
      return 400;
    case StatusCode::kNotFound:
      return 404;
    case StatusCode::kPermissionDenied:
      return 401;
    case StatusCode::kDeadlineExceeded:
    case StatusCode::kUnavailable:
    case StatusCode::kResourceExhausted:
      return 503;
    default:
      return 500;
  }
}

Json Usage(size_t prompt, size_t completion) {
  return {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
}

}  // namespace

std::shared_ptr<rpc::RouterIf> MakeRouterHandler(ServingPlane* plane) { return std::make_shared<RouterHandler>(plane); }

Status ServingPlane::StartHttp(const std::string& address, int port) {
  http_ = std::make_unique<httplib::Server>();
  // A request holds its connection's thread until its last token: the pool bounds how many
  // requests the endpoint takes at once (the rest wait in the kernel's accept queue).
  http_->new_task_queue = [n = static_cast<size_t>(config_.http_threads)] { return new httplib::ThreadPool(n); };
  // The credentials of the Thrift services: a bearer token where the cluster has one.
  auto authorized = [this](const httplib::Request& hreq, httplib::Response& res, const char* what) {
    if (security_.token.empty()) return true;
    rpc::RequestHeader h;
    const std::string auth = hreq.get_header_value("Authorization");
    if (auth.rfind("Bearer ", 0) == 0) h.__set_token(auth.substr(7));
    Status s = rpc::CheckCaller(security_, h, what);
    if (s.ok()) return true;
    Error(res, 401, s);
    return false;
  };
  // What every generation request starts with: the caller's token, a JSON body naming a model,
  // and that model's text codec; nullopt once the error has been answered.
  struct Begun {
    Json body;
    std::string model;
    TextCodec codec;
  };
  auto begin = [this, authorized](const httplib::Request& hreq, httplib::Response& res,
                                  const char* what) -> std::optional<Begun> {
    if (!authorized(hreq, res, what)) return std::nullopt;
    Begun b;
    try {
      b.body = Json::parse(hreq.body);
    } catch (const Json::exception& e) {  // its message says where (a lone surrogate, bad UTF-8, ...)
      Error(res, 400, InvalidArgument(std::string("the request body is not valid JSON: ") + e.what()));
      return std::nullopt;
    }
    if (!b.body.is_object()) {
      Error(res, 400, InvalidArgument("the request body is not a JSON object"));
      return std::nullopt;
    }
    b.model = b.body.value("model", "");
    if (b.model.empty()) {
      Error(res, 400, InvalidArgument("'model' is missing"));
      return std::nullopt;
    }
    auto codec = CodecFor(*this, b.model);
    if (!codec.ok()) {
      Error(res, HttpStatus(codec.status()), codec.status());
      return std::nullopt;
    }
    b.codec = std::move(*codec);
    return b;
  };
  // The registered models, as OpenAI's clients list them.
  auto model_object = [](const std::string& name) {
    return Json{{"id", name}, {"object", "model"}, {"created", 0}, {"owned_by", "modelcast"}};
  };
  http_->Get("/v1/models", [=, this](const httplib::Request& hreq, httplib::Response& res) {
    if (!authorized(hreq, res, "/v1/models")) return;
    Json data = Json::array();
    for (const auto& m : ModelNames()) data.push_back(model_object(m));
    res.set_content(Dump(Json{{"object", "list"}, {"data", data}}), "application/json");
  });
  http_->Get(R"(/v1/models/(.+))", [=, this](const httplib::Request& hreq, httplib::Response& res) {
    if (!authorized(hreq, res, "/v1/models")) return;
    const std::string name = hreq.matches[1];
    for (const auto& m : ModelNames()) {
      if (m == name) return res.set_content(Dump(model_object(m)), "application/json");
    }
    Error(res, 404, NotFound("model '" + name + "' is not registered"));
  });
  // What both generation endpoints read besides the prompt; nullopt once the error is answered.
  auto asked_of = [](const Json& body, httplib::Response& res, int default_max_tokens) -> std::optional<Asked> {
    Asked a;
    try {
      a.max_tokens = body.value("max_completion_tokens", body.value("max_tokens", default_max_tokens));
      a.temperature = body.value("temperature", 1.0);
      a.top_p = body.value("top_p", 1.0);
      a.seed = body.value("seed", uint64_t{0});
    } catch (const Json::exception& e) {
      Error(res, 400, InvalidArgument(std::string("a field of the wrong type: ") + e.what()));
      return std::nullopt;
    }
    if (a.max_tokens < 1) {
      Error(res, 400, InvalidArgument(std::string(body.contains("max_completion_tokens") ? "'max_completion_tokens'"
                                                                                          : "'max_tokens'") +
                                      " must be at least 1"));
      return std::nullopt;
    }
    auto stops = StopsFrom(body);
    if (!stops.ok()) {
      Error(res, 400, stops.status());
      return std::nullopt;
    }
    a.stops = std::move(*stops);
    return a;
  };
  auto created_now = [] {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  };
  http_->Post("/v1/completions", [=, this](const httplib::Request& hreq, httplib::Response& res) {
    auto begun = begin(hreq, res, "/v1/completions");
    if (!begun) return;
    const Json& body = begun->body;
    const std::string& model = begun->model;
    std::vector<int32_t> prompt;
    try {
      const Json& p = body.at("prompt");
      if (p.is_string()) {
        auto t = begun->codec.Encode(p.get<std::string>());
        if (!t.ok()) return Error(res, 400, t.status());
        prompt = std::move(*t);
      } else if (p.is_array() && !p.empty() && p.front().is_number_integer()) {
        prompt = p.get<std::vector<int32_t>>();
      } else {
        return Error(res, 400, InvalidArgument("'prompt' must be a string or an array of token ids"));
      }
    } catch (const Json::exception& e) {
      return Error(res, 400, InvalidArgument(std::string("'prompt': ") + e.what()));
    }
    bool stream_mode = false;
    try {
      stream_mode = body.value("stream", false);
    } catch (const Json::exception& e) {
      return Error(res, 400, InvalidArgument(std::string("'stream': ") + e.what()));
    }
    auto asked = asked_of(body, res, 16);
    if (!asked) return;
    auto stream = std::make_shared<Stream>();
    pipeline::GenerateRequest r;
    Status s = Prepare(*this, model, begun->codec, std::move(prompt), std::move(*asked), &r, stream);
    const size_t prompt_len = r.prompt.size();
    const std::string id = "cmpl-" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
    const int64_t created = created_now();
    const std::vector<int32_t> stop = r.stop_tokens;
    if (s.ok()) s = router().Submit(std::move(r));
    if (!s.ok()) return Error(res, HttpStatus(s), s);
    // One completion object: a choice with `tokens` and the text they let show, and once the
    // request has ended its usage and timing (the caller holds the stream's lock or the request
    // has ended).
    auto completion = [=](const std::vector<int32_t>& tokens, const std::string& piece, Json finish, bool final) {
      Json c = {{"index", 0}, {"logprobs", nullptr}};
      c["text"] = piece;
      c["tokens"] = tokens;
      c["finish_reason"] = std::move(finish);
      Json j = {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
                {"choices", Json::array({c})}};
      if (final) {
        j["usage"] = Usage(prompt_len, stream->tokens.size());
        j["modelcast"] = {{"ttft_s", stream->timing.ttft_s},
                          {"tpot_s", stream->timing.tpot_s},
                          {"queued_s", stream->timing.queued_s},
                          {"served_by", stream->timing.served_by},
                          {"attempts", stream->timing.attempts}};
      }
      return j;
    };
    if (!stream_mode) {
      s = WaitDone(*stream, 3600);
      if (!s.ok()) return Error(res, HttpStatus(s), s);
      std::lock_guard<std::mutex> lock(stream->mu);
      res.set_content(Dump(completion(stream->tokens, stream->text, FinishReason(*stream, stop), true)),
                      "application/json");
      return;
    }
    // Server-sent events: one per token as it is generated, then the end and [DONE].
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider("text/event-stream", [=](size_t, httplib::DataSink& sink) {
      std::unique_lock<std::mutex> lock(stream->mu);
      stream->cv.wait_for(lock, std::chrono::seconds(60), [&] { return stream->done || !stream->fresh.empty(); });
      while (!stream->fresh.empty()) {
        const auto [t, piece] = std::move(stream->fresh.front());
        stream->fresh.pop_front();
        const std::string ev = "data: " + Dump(completion({t}, piece, nullptr, false)) + "\n\n";
        if (!sink.write(ev.data(), ev.size())) return false;
      }
      if (!stream->done) return true;
      Json end = stream->status.ok()
                     ? completion({}, stream->tail, FinishReason(*stream, stop), true)
                     : Json{{"error",
                             {{"message", stream->status.message()},
                              {"code", std::string(StatusCodeName(stream->status.code()))}}}};
      const std::string ev = "data: " + Dump(end) + "\n\ndata: [DONE]\n\n";
      sink.write(ev.data(), ev.size());
      sink.done();
      return true;
    });
  });
  // Chat: the messages rendered by the model's chat template, the answer as an assistant message.
  http_->Post("/v1/chat/completions", [=, this](const httplib::Request& hreq, httplib::Response& res) {
    auto begun = begin(hreq, res, "/v1/chat/completions");
    if (!begun) return;
    const Json& body = begun->body;
    const std::string& model = begun->model;
    if (body.contains("n") && !(body["n"].is_number_integer() && body["n"].get<int64_t>() == 1)) {
      return Error(res, 400, InvalidArgument("'n': only one choice per request (n = 1) is served"));
    }
    // The template sees the request less what only the server reads (tools, and whatever else
    // a template may use, stay).
    nlohmann::ordered_json context = nlohmann::ordered_json::parse(body.dump());
    for (const char* key : {"stream", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "n", "stop",
                            "stream_options", "model", "user", "frequency_penalty", "presence_penalty", "logprobs"}) {
      context.erase(key);
    }
    auto ids = ChatPrompt(*this, model, begun->codec, std::move(context));
    if (!ids.ok()) return Error(res, HttpStatus(ids.status()), ids.status());
    if (static_cast<int64_t>(ids->size()) >= begun->codec.config.MaxPositions()) {
      return Error(res, 400, InvalidArgument("'messages' render to " + std::to_string(ids->size()) + " tokens: model '" +
                                             model + "' has " + std::to_string(begun->codec.config.MaxPositions()) +
                                             " positions, and the answer needs one"));
    }
    bool stream_mode = false, include_usage = false;
    try {
      stream_mode = body.value("stream", false);
      if (body.contains("stream_options") && body["stream_options"].is_object()) {
        include_usage = body["stream_options"].value("include_usage", false);
      }
    } catch (const Json::exception& e) {
      return Error(res, 400, InvalidArgument(std::string("a field of the wrong type: ") + e.what()));
    }
    // Unless the client says, the answer may fill the context (up to 4,096 tokens).
    const int64_t room = begun->codec.config.MaxPositions() - static_cast<int64_t>(ids->size());
    auto asked = asked_of(body, res, static_cast<int>(std::clamp<int64_t>(room, 1, 4096)));
    if (!asked) return;
    auto stream = std::make_shared<Stream>();
    pipeline::GenerateRequest r;
    Status s = Prepare(*this, model, begun->codec, std::move(*ids), std::move(*asked), &r, stream);
    const size_t prompt_len = r.prompt.size();
    const std::string id = "chatcmpl-" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
    const int64_t created = created_now();
    const std::vector<int32_t> stop = r.stop_tokens;
    if (s.ok()) s = router().Submit(std::move(r));
    if (!s.ok()) return Error(res, HttpStatus(s), s);
    auto object = [=](const char* kind, Json choices) {
      return Json{{"id", id}, {"object", kind}, {"created", created}, {"model", model}, {"choices", std::move(choices)}};
    };
    if (!stream_mode) {
      s = WaitDone(*stream, 3600);
      if (!s.ok()) return Error(res, HttpStatus(s), s);
      std::lock_guard<std::mutex> lock(stream->mu);
      Json j = object("chat.completion", Json::array({{{"index", 0},
                                                       {"message", {{"role", "assistant"}, {"content", stream->text}}},
                                                       {"logprobs", nullptr},
                                                       {"finish_reason", FinishReason(*stream, stop)}}}));
      j["usage"] = Usage(prompt_len, stream->tokens.size());
      res.set_content(Dump(j), "application/json");
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    auto started = std::make_shared<bool>(false);  // only the provider below touches it
    res.set_chunked_content_provider("text/event-stream", [=](size_t, httplib::DataSink& sink) {
      auto send = [&](const Json& j) {
        const std::string ev = "data: " + Dump(j) + "\n\n";
        return sink.write(ev.data(), ev.size());
      };
      auto delta = [&](Json d, Json finish) {
        return object("chat.completion.chunk",
                      Json::array({{{"index", 0}, {"delta", std::move(d)}, {"logprobs", nullptr}, {"finish_reason", finish}}}));
      };
      if (!*started) {
        *started = true;
        if (!send(delta({{"role", "assistant"}, {"content", ""}}, nullptr))) return false;
      }
      std::unique_lock<std::mutex> lock(stream->mu);
      stream->cv.wait_for(lock, std::chrono::seconds(60), [&] { return stream->done || !stream->fresh.empty(); });
      std::string pieces;  // what the fresh tokens let show, in one chunk
      for (; !stream->fresh.empty(); stream->fresh.pop_front()) pieces += stream->fresh.front().second;
      if (!pieces.empty() && !send(delta({{"content", pieces}}, nullptr))) return false;
      if (!stream->done) return true;
      if (!stream->status.ok()) {
        send(Json{{"error",
                   {{"message", stream->status.message()},
                    {"type", "server_error"},
                    {"code", std::string(StatusCodeName(stream->status.code()))}}}});
      } else {
        if (!stream->tail.empty()) send(delta({{"content", stream->tail}}, nullptr));
        send(delta(Json::object(), FinishReason(*stream, stop)));
        if (include_usage) {
          Json u = object("chat.completion.chunk", Json::array());
          u["usage"] = Usage(prompt_len, stream->tokens.size());
          send(u);
        }
      }
      const std::string done = "data: [DONE]\n\n";
      sink.write(done.data(), done.size());
      sink.done();
      return true;
    });
  });
  http_port_ = port == 0 ? http_->bind_to_any_port(address) : (http_->bind_to_port(address, port) ? port : -1);
  if (http_port_ <= 0) return Unavailable("serving: cannot listen on " + address + ":" + std::to_string(port));
  http_thread_ = std::thread([s = http_.get()] { s->listen_after_bind(); });
  return Status::Ok();
}

}  // namespace modelcast::coordinator
