// The serving API: Router.generate over Thrift, and POST /v1/completions over HTTP
// (OpenAI-compatible: `prompt` as text or as an array of token ids, `max_tokens`,
// `temperature`, `top_p`, `seed`, `stream` as server-sent events).
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
#include "modelcast/coordinator/serving.h"
#include "modelcast/pipeline/tokenizer.h"
#include "modelcast/rpc/errors.h"

namespace modelcast::coordinator {
namespace {

using Json = nlohmann::json;

// A request's tokens and end as they arrive from the router's threads.
struct Stream {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<int32_t> fresh;  // tokens not yet taken by the writer
  std::vector<int32_t> tokens;
  bool done = false;
  Status status;
  pipeline::RequestTiming timing;
};

struct Prompt {
  std::vector<int32_t> tokens;
  bool text = false;  // the prompt was text: the answer is text too
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
  // The ids the tokenizer knows (a model's vocabulary may be padded past its tokenizer's).
  std::vector<int32_t> Known(const std::vector<int32_t>& ids) const {
    std::vector<int32_t> out;
    for (int32_t t : ids) {
      if (tokenizer->IdToken(t)) out.push_back(t);
    }
    return out;
  }
  // The answer's text, special tokens left out.
  std::string Decode(const std::vector<int32_t>& ids) const {
    if (!tokenizer) return pipeline::ByteTokenizer::Decode(ids);
    auto r = tokenizer->Decode(Known(ids), /*skip_special_tokens=*/true);
    return r.ok() ? *r : std::string();
  }
};

Result<TextCodec> CodecFor(const ServingPlane& plane, const std::string& model) {
  TextCodec c;
  MC_ASSIGN_OR_RETURN(c.config, plane.ModelConfig(model));
  MC_ASSIGN_OR_RETURN(c.tokenizer, plane.ModelTokenizer(model));
  return c;
}

// The text of tokens as they are generated, never part of a character (the byte-level fallback
// gives each token's byte).
class TextStream {
 public:
  explicit TextStream(const TextCodec& codec) : codec_(codec) {
    if (codec_.tokenizer) decoder_.emplace(*codec_.tokenizer, true);
  }
  std::string Next(int32_t t) {
    if (!decoder_) return pipeline::ByteTokenizer::Decode({t});
    if (!codec_.tokenizer->IdToken(t)) return std::string();
    auto r = decoder_->Next(t);
    return r.ok() ? *r : std::string();
  }
  std::string Finish() {
    if (!decoder_) return std::string();
    auto r = decoder_->Finish();
    return r.ok() ? *r : std::string();
  }

 private:
  TextCodec codec_;
  std::optional<text::StreamDecoder> decoder_;
};

// Fills the request's prompt, sampling and stop token from what the client sent, checked
// against the model.
Status Prepare(const ServingPlane& plane, const std::string& model, Prompt prompt, int max_tokens, double temperature,
               double top_p, uint64_t seed, std::optional<int32_t> stop, pipeline::GenerateRequest* out,
               const std::shared_ptr<Stream>& stream) {
  MC_ASSIGN_OR_RETURN(model::LlamaConfig config, plane.ModelConfig(model));
  for (int32_t t : prompt.tokens) {
    if (t < 0 || t >= config.vocab_size) {
      return InvalidArgument("prompt token " + std::to_string(t) + " is outside model '" + model +
                             "''s vocabulary [0, " + std::to_string(config.vocab_size) + ")");
    }
  }
  if (static_cast<int64_t>(prompt.tokens.size()) + max_tokens > config.MaxPositions()) {
    return OutOfRange("a prompt of " + std::to_string(prompt.tokens.size()) + " tokens plus max_tokens " +
                      std::to_string(max_tokens) + " exceeds model '" + model + "''s " +
                      std::to_string(config.MaxPositions()) + " positions");
  }
  out->model = model;
  out->prompt = std::move(prompt.tokens);
  out->max_tokens = max_tokens;
  out->sampling = {temperature, top_p, seed};
  if (stop) {
    if (*stop >= 0) out->stop_tokens = {*stop};
  } else {
    MC_ASSIGN_OR_RETURN(out->stop_tokens, plane.ModelEosIds(model));
  }
  out->on_token = [stream](int32_t t) {
    std::lock_guard<std::mutex> lock(stream->mu);
    stream->tokens.push_back(t);
    stream->fresh.push_back(t);
    stream->cv.notify_all();
  };
  out->on_done = [stream](const Status& s, const pipeline::RequestTiming& timing) {
    std::lock_guard<std::mutex> lock(stream->mu);
    stream->done = true;
    stream->status = s;
    stream->timing = timing;
    stream->cv.notify_all();
  };
  return Status::Ok();
}

std::string FinishReason(const Stream& s, const std::vector<int32_t>& stop_tokens) {
  return !s.tokens.empty() && std::find(stop_tokens.begin(), stop_tokens.end(), s.tokens.back()) != stop_tokens.end()
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

class RouterHandler : public rpc::RouterIf {
 public:
  explicit RouterHandler(ServingPlane* plane) : plane_(plane) {}
  void generate(rpc::GenerateResponse& out, const rpc::GenerateRequest& req) override {
    rpc::ThrowIfError(rpc::CheckCaller(plane_->security(), req.header, "generate"));
    Prompt prompt;
    std::optional<TextCodec> codec;  // a text prompt's, which decodes the answer too
    if (req.__isset.prompt_tokens) {
      prompt.tokens = req.prompt_tokens;
    } else if (req.__isset.prompt_text) {
      auto c = CodecFor(*plane_, req.model);
      rpc::ThrowIfError(c.status());
      codec = std::move(*c);
      auto t = codec->Encode(req.prompt_text);
      rpc::ThrowIfError(t.status());
      prompt.tokens = std::move(*t);
      prompt.text = true;
    }
    auto stream = std::make_shared<Stream>();
    pipeline::GenerateRequest r;
    rpc::ThrowIfError(Prepare(*plane_, req.model, prompt, req.max_tokens, req.temperature, req.top_p,
                              static_cast<uint64_t>(req.seed),
                              req.__isset.stop_token ? std::optional<int32_t>(req.stop_token) : std::nullopt, &r,
                              stream));
    const std::vector<int32_t> stop = r.stop_tokens;
    rpc::ThrowIfError(plane_->router().Submit(std::move(r)));
    rpc::ThrowIfError(WaitDone(*stream, 3600));
    out.tokens = stream->tokens;
    if (codec) out.text = codec->Decode(stream->tokens);
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

void Error(httplib::Response& res, int http, const Status& s) {
  res.status = http;
  Json j = {{"error",
             {{"message", s.message()}, {"type", http == 401 ? "authentication_error" : "invalid_request_error"},
              {"code", std::string(StatusCodeName(s.code()))}}}};
  res.set_content(j.dump(), "application/json");
}

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

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

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
    b.body = Json::parse(hreq.body, nullptr, false);
    if (b.body.is_discarded() || !b.body.is_object()) {
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
  auto model_object = [](const ModelReport& m) {
    return Json{{"id", m.name}, {"object", "model"}, {"created", 0}, {"owned_by", "modelcast"}};
  };
  http_->Get("/v1/models", [=, this](const httplib::Request& hreq, httplib::Response& res) {
    if (!authorized(hreq, res, "/v1/models")) return;
    Json data = Json::array();
    for (const auto& m : state_->ListModels()) data.push_back(model_object(m));
    res.set_content(Dump(Json{{"object", "list"}, {"data", data}}), "application/json");
  });
  http_->Get(R"(/v1/models/(.+))", [=, this](const httplib::Request& hreq, httplib::Response& res) {
    if (!authorized(hreq, res, "/v1/models")) return;
    const std::string name = hreq.matches[1];
    for (const auto& m : state_->ListModels()) {
      if (m.name == name) return res.set_content(Dump(model_object(m)), "application/json");
    }
    Error(res, 404, NotFound("model '" + name + "' is not registered"));
  });
  http_->Post("/v1/completions", [=, this](const httplib::Request& hreq, httplib::Response& res) {
    auto begun = begin(hreq, res, "/v1/completions");
    if (!begun) return;
    const Json& body = begun->body;
    const std::string& model = begun->model;
    const TextCodec* codec = &begun->codec;
    Prompt prompt;
    try {
      const Json& p = body.at("prompt");
      if (p.is_string()) {
        auto t = codec->Encode(p.get<std::string>());
        if (!t.ok()) return Error(res, 400, t.status());
        prompt.tokens = std::move(*t);
        prompt.text = true;
      } else if (p.is_array() && !p.empty() && p.front().is_number_integer()) {
        prompt.tokens = p.get<std::vector<int32_t>>();
      } else {
        return Error(res, 400, InvalidArgument("'prompt' must be a string or an array of token ids"));
      }
    } catch (const Json::exception& e) {
      return Error(res, 400, InvalidArgument(std::string("'prompt': ") + e.what()));
    }
    int max_tokens = 16;
    double temperature = 1.0, top_p = 1.0;
    uint64_t seed = 0;
    bool stream_mode = false;
    try {
      max_tokens = body.value("max_tokens", 16);
      temperature = body.value("temperature", 1.0);
      top_p = body.value("top_p", 1.0);
      seed = body.value("seed", uint64_t{0});
      stream_mode = body.value("stream", false);
    } catch (const Json::exception& e) {
      return Error(res, 400, InvalidArgument(std::string("a field of the wrong type: ") + e.what()));
    }
    auto stream = std::make_shared<Stream>();
    pipeline::GenerateRequest r;
    Status s = Prepare(*this, model, prompt, max_tokens, temperature, top_p, seed, std::nullopt, &r, stream);
    const size_t prompt_len = r.prompt.size();
    const bool text = prompt.text;
    const std::string id = "cmpl-" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
    const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
    const std::vector<int32_t> stop = r.stop_tokens;
    if (s.ok()) s = router().Submit(std::move(r));
    if (!s.ok()) return Error(res, HttpStatus(s), s);
    // One completion object: a choice with `tokens` and their text, and once the request has
    // ended its usage and timing (the caller holds the stream's lock or the request has ended).
    const TextCodec text_codec = *codec;
    auto completion = [=](const std::vector<int32_t>& tokens, const std::string& piece, Json finish, bool final) {
      Json c = {{"index", 0}, {"logprobs", nullptr}};
      c["text"] = text ? piece : std::string();
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
      res.set_content(Dump(completion(stream->tokens, text_codec.Decode(stream->tokens), FinishReason(*stream, stop), true)),
                      "application/json");
      return;
    }
    // Server-sent events: one per token as it is generated, then the end and [DONE].
    res.set_header("Cache-Control", "no-cache");
    auto pieces = std::make_shared<TextStream>(text_codec);  // only the provider below touches it
    res.set_chunked_content_provider("text/event-stream", [=](size_t, httplib::DataSink& sink) {
      std::unique_lock<std::mutex> lock(stream->mu);
      stream->cv.wait_for(lock, std::chrono::seconds(60), [&] { return stream->done || !stream->fresh.empty(); });
      while (!stream->fresh.empty()) {
        const int32_t t = stream->fresh.front();
        stream->fresh.pop_front();
        const std::string ev = "data: " + Dump(completion({t}, pieces->Next(t), nullptr, false)) + "\n\n";
        if (!sink.write(ev.data(), ev.size())) return false;
      }
      if (!stream->done) return true;
      Json end = stream->status.ok()
                     ? completion({}, pieces->Finish(), FinishReason(*stream, stop), true)
                     : Json{{"error",
                             {{"message", stream->status.message()},
                              {"code", std::string(StatusCodeName(stream->status.code()))}}}};
      const std::string ev = "data: " + Dump(end) + "\n\ndata: [DONE]\n\n";
      sink.write(ev.data(), ev.size());
      sink.done();
      return true;
    });
  });
  // Chat: the messages rendered by the model's chat template (with the generation prompt), the
  // rendered text tokenized as it stands (its special tokens are in it), the answer as an
  // assistant message.
  http_->Post("/v1/chat/completions", [=, this](const httplib::Request& hreq, httplib::Response& res) {
    auto begun = begin(hreq, res, "/v1/chat/completions");
    if (!begun) return;
    const Json& body = begun->body;
    const std::string& model = begun->model;
    const TextCodec* codec = &begun->codec;
    if (!codec->tokenizer) {
      return Error(res, 400, InvalidArgument("model '" + model + "' has no tokenizer of its own: chat needs one"));
    }
    auto chat = ModelChat(model);
    if (!chat.ok()) {  // no template, or one that cannot be parsed: the request cannot be served as asked
      return Error(res, chat.status().code() == StatusCode::kFailedPrecondition ? 400 : HttpStatus(chat.status()),
                   chat.status());
    }
    // The messages: roles the templates know, content a string or text parts.
    if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty()) {
      return Error(res, 400, InvalidArgument("'messages' must be a non-empty array"));
    }
    nlohmann::ordered_json context = nlohmann::ordered_json::parse(body.dump());
    nlohmann::ordered_json& messages = context["messages"];
    for (size_t k = 0; k < messages.size(); ++k) {
      auto& m = messages[k];
      const std::string at = "'messages[" + std::to_string(k) + "]";
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
        return Error(res, 400, InvalidArgument(at + "' must be an object with a 'role'"));
      }
      const std::string role = m["role"];
      if (role != "system" && role != "user" && role != "assistant" && role != "tool" && role != "developer") {
        return Error(res, 400, InvalidArgument(at + ".role' is '" + role + "': system, user, assistant, tool or developer"));
      }
      if (m.contains("content") && m["content"].is_array()) {  // text parts, joined
        std::string text;
        for (const auto& part : m["content"]) {
          if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text")) {
            return Error(res, 400, InvalidArgument(at + ".content' has a part that is not text; this model reads text"));
          }
          text += part["text"].get<std::string>();
        }
        m["content"] = text;
      } else if (m.contains("content") && !m["content"].is_string() && !m["content"].is_null()) {
        return Error(res, 400, InvalidArgument(at + ".content' must be a string or an array of text parts"));
      } else if (!m.contains("content") || m["content"].is_null()) {
        m["content"] = "";
      }
    }
    if (body.contains("n") && !(body["n"].is_number_integer() && body["n"].get<int64_t>() == 1)) {
      return Error(res, 400, InvalidArgument("'n': only one choice per request (n = 1) is served"));
    }
    if (body.contains("stop") && !body["stop"].is_null()) {
      return Error(res, 400, InvalidArgument("'stop': stop strings are not supported yet (the model's eos ids end an answer)"));
    }
    const bool has_tools = body.contains("tools") && body["tools"].is_array() && !body["tools"].empty();
    for (const char* key : {"stream", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "n", "stop",
                            "stream_options", "model", "user", "frequency_penalty", "presence_penalty", "logprobs"}) {
      context.erase(key);
    }
    auto rendered = (*chat)->RenderForGeneration(std::move(context), has_tools);
    if (!rendered.ok()) return Error(res, 400, rendered.status().WithContext("the chat template"));
    auto ids = codec->tokenizer->Encode(*rendered, /*add_special_tokens=*/false);
    if (!ids.ok()) return Error(res, 400, ids.status());
    int max_tokens = 0;
    double temperature = 1.0, top_p = 1.0;
    uint64_t seed = 0;
    bool stream_mode = false, include_usage = false;
    try {
      const int64_t room = codec->config.MaxPositions() - static_cast<int64_t>(ids->size());
      max_tokens = body.value("max_completion_tokens", body.value("max_tokens", static_cast<int>(std::clamp<int64_t>(room, 1, 4096))));
      temperature = body.value("temperature", 1.0);
      top_p = body.value("top_p", 1.0);
      seed = body.value("seed", uint64_t{0});
      stream_mode = body.value("stream", false);
      if (body.contains("stream_options") && body["stream_options"].is_object()) {
        include_usage = body["stream_options"].value("include_usage", false);
      }
    } catch (const Json::exception& e) {
      return Error(res, 400, InvalidArgument(std::string("a field of the wrong type: ") + e.what()));
    }
    if (max_tokens < 1) return Error(res, 400, InvalidArgument("'max_completion_tokens' must be at least 1"));
    auto stream = std::make_shared<Stream>();
    pipeline::GenerateRequest r;
    Prompt prompt{std::move(*ids), true};
    Status s = Prepare(*this, model, prompt, max_tokens, temperature, top_p, seed, std::nullopt, &r, stream);
    const size_t prompt_len = r.prompt.size();
    const std::string id = "chatcmpl-" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
    const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
    const std::vector<int32_t> stop = r.stop_tokens;
    if (s.ok()) s = router().Submit(std::move(r));
    if (!s.ok()) return Error(res, HttpStatus(s), s);
    const TextCodec text_codec = *codec;
    auto object = [=](const char* kind, Json choices) {
      return Json{{"id", id}, {"object", kind}, {"created", created}, {"model", model}, {"choices", std::move(choices)}};
    };
    if (!stream_mode) {
      s = WaitDone(*stream, 3600);
      if (!s.ok()) return Error(res, HttpStatus(s), s);
      Json j = object("chat.completion",
                      Json::array({{{"index", 0},
                                    {"message", {{"role", "assistant"}, {"content", text_codec.Decode(stream->tokens)}}},
                                    {"logprobs", nullptr},
                                    {"finish_reason", FinishReason(*stream, stop)}}}));
      j["usage"] = Usage(prompt_len, stream->tokens.size());
      res.set_content(Dump(j), "application/json");
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    auto pieces = std::make_shared<TextStream>(text_codec);  // only the provider below touches it
    auto started = std::make_shared<bool>(false);
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
      while (!stream->fresh.empty()) {
        const int32_t t = stream->fresh.front();
        stream->fresh.pop_front();
        const std::string piece = pieces->Next(t);
        if (!piece.empty() && !send(delta({{"content", piece}}, nullptr))) return false;
      }
      if (!stream->done) return true;
      if (!stream->status.ok()) {
        send(Json{{"error",
                   {{"message", stream->status.message()},
                    {"type", "server_error"},
                    {"code", std::string(StatusCodeName(stream->status.code()))}}}});
      } else {
        const std::string rest = pieces->Finish();
        if (!rest.empty()) send(delta({{"content", rest}}, nullptr));
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
