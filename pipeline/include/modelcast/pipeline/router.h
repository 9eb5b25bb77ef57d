// The request router: per model, a queue of generation requests, served by engines. An engine
// is one full local instance or one cross-node pipeline; it runs its requests with
// iteration-level batching (every step carries each running request's next token, and new
// requests' prompts, through the pipeline at once). Requests go to full instances first, then
// to pipelines, the least loaded first.
//
// An engine added as warming (a pipeline prepared ahead of its blocks, whose stages are built
// by their agents as the blocks land) takes only what no ready engine has room for: those
// requests wait in its stages, and their first step runs the moment the last block lands, not
// after the coordinator has heard of it. As soon as a ready engine has room, the waiting step
// is interrupted (Pipeline::Interrupt) and its requests go there. Its failure (the blocks were
// late and it was let go) sends them back to the queue; neither counts an attempt. It is ready
// once a step has gone through it, or ReadyEngine says so.
//
// An engine can be drained (it takes nothing new, and goes once its requests have finished:
// how pipelines dissolve) or fail (a stage's node is lost): its requests then go back to the
// queue and continue on another engine from where they were (the prompt and the tokens
// generated so far are prefilled there, and sampling goes on with the same generator), so a
// client sees each token once.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "modelcast/common/status.h"
#include "modelcast/pipeline/pipeline.h"
#include "modelcast/pipeline/sampler.h"

namespace modelcast::pipeline {

enum class EngineKind { kLocal, kPipeline };

struct RequestTiming {
  double queued_s = 0;        // submit -> first dispatch
  double ttft_s = 0;          // submit -> first token
  double tpot_s = 0;          // mean time per output token after the first
  std::string served_by;      // the engine that produced the last token
  int attempts = 1;           // engines it ran on
};

struct GenerateRequest {
  std::string model;
  std::vector<int32_t> prompt;
  int max_tokens = 16;
  SamplingParams sampling;
  std::vector<int32_t> stop_tokens;  // generation ends after any of these (the model's eos ids); empty: none
  // Called on the router's threads, in order; they must not block for long. on_token returns
  // whether to go on: false ends the request after this token, as a stop token does (how stop
  // strings, found in the text, end an answer).
  std::function<bool(int32_t token)> on_token;
  std::function<void(const Status& status, const RequestTiming& timing)> on_done;
};

struct EngineInfo {
  std::string id;
  std::string model;
  EngineKind kind = EngineKind::kLocal;
  size_t running = 0;  // requests it holds (queued on it or in its batch)
  bool draining = false;
  bool warming = false;  // added as warming, not made ready yet
  uint64_t served = 0;  // requests finished on it
};

struct RouterOptions {
  int max_batch = 16;          // requests per engine step
  double queue_timeout = 60;   // seconds a request may wait for an engine before it fails
  int max_attempts = 3;        // engines a request may be tried on
  // Emulation of an accelerator's step time, for benchmarks on a box whose nodes share a few
  // cores: an engine's step lasts at least emulated_step + emulated_token x its tokens (0: as
  // long as the computation takes).
  double emulated_step = 0;
  double emulated_token = 0;
};

class Router {
 public:
  explicit Router(RouterOptions options = {});
  ~Router();  // fails what is still queued or running with Cancelled
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // Adds an engine of `model` (AlreadyExists for a taken id). `on_gone` runs once the engine
  // has left: drained (OK) or failed (the error). `warming`: its stages are still being built
  // (see above) until ReadyEngine.
  Status AddEngine(const std::string& id, const std::string& model, EngineKind kind, std::unique_ptr<Pipeline> pipeline,
                   std::function<void(const Status&)> on_gone = nullptr, bool warming = false);
  // A warming engine's stages are all built: it takes requests as any other. NotFound if absent
  // (it failed meanwhile).
  Status ReadyEngine(const std::string& id);
  // Stops dispatching to the engine; it leaves once its requests have finished. NotFound if absent.
  Status DrainEngine(const std::string& id);
  std::vector<EngineInfo> Engines(const std::string& model = "") const;

  // Queues a request. Refused at once (InvalidArgument) when it is malformed: an empty prompt,
  // max_tokens < 1, bad sampling parameters. Everything later arrives through on_done.
  Status Submit(GenerateRequest request);

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace modelcast::pipeline
