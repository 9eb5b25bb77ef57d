#include "modelcast/pipeline/router.h"

#include <glog/logging.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <random>
#include <mutex>
#include <thread>
#include <tuple>

namespace modelcast::pipeline {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct Request {
  GenerateRequest r;
  Sampler sampler;
  uint64_t cache_id = 0;  // the request's KV caches on its current engine
  std::vector<int32_t> generated;
  int64_t fed = 0;  // tokens fed to the current engine
  Clock::time_point submitted = Clock::now(), dispatched, first_token, last_token;
  bool was_dispatched = false;
  int attempts = 0;
  std::string engine;

  explicit Request(GenerateRequest req) : r(std::move(req)), sampler(r.sampling) {}

  RequestTiming Timing() const {
    RequestTiming t;
    if (was_dispatched) t.queued_s = Seconds(dispatched - submitted);
    if (!generated.empty()) {
      t.ttft_s = Seconds(first_token - submitted);
      if (generated.size() > 1) t.tpot_s = Seconds(last_token - first_token) / static_cast<double>(generated.size() - 1);
    }
    t.served_by = engine;
    t.attempts = std::max(attempts, 1);
    return t;
  }
};
using RequestPtr = std::shared_ptr<Request>;

// Whether a step's failure is the engine's (a stage gone: the request can go on elsewhere)
// rather than the request's.
bool EngineFault(const Status& s) {
  switch (s.code()) {
    case StatusCode::kUnavailable:
    case StatusCode::kDeadlineExceeded:
    case StatusCode::kNotFound:
    case StatusCode::kCancelled:
      return true;
    default:
      return false;
  }
}

}  // namespace

struct Engine {
  std::string id, model;
  EngineKind kind = EngineKind::kLocal;
  std::unique_ptr<Pipeline> pipeline;
  std::function<void(const Status&)> on_gone;
  std::deque<RequestPtr> inbox;  // dispatched here, not yet in the batch
  std::vector<RequestPtr> batch;
  bool draining = false, stop = false;
  bool warming = false;  // its stages are being built: it takes only what no ready engine can
  bool interrupted = false;  // its step was interrupted to give its requests to a ready engine
  uint64_t served = 0;
  std::condition_variable cv;
  std::thread thread;
  size_t load() const { return inbox.size() + batch.size(); }
};

struct Router::Impl {
  RouterOptions options;
  std::mutex mu;
  std::condition_variable cv;  // the dispatcher's
  std::map<std::string, std::deque<RequestPtr>> queues;
  std::map<std::string, std::shared_ptr<Engine>> engines;
  std::vector<std::shared_ptr<Engine>> gone;  // left; their threads to join
  // KV cache ids start at a random point of a 2^32-wide space of this router's own: stages may
  // serve the requests of several routers at once (every coordinator of a replicated head
  // routes), and one router's ids must not name another's caches.
  std::atomic<uint64_t> next_cache_id{1};
  bool closing = false;
  std::thread dispatcher;

  static void Finish(const RequestPtr& req, const Status& status) {
    if (req->r.on_done) req->r.on_done(status, req->Timing());
  }

  void Dispatch() {
    std::unique_lock<std::mutex> lock(mu);
    while (!closing) {
      for (auto& e : gone) {
        if (e->thread.joinable()) e->thread.join();
      }
      gone.clear();
      std::vector<RequestPtr> expired;
      const auto now = Clock::now();
      for (auto& [model, q] : queues) {
        while (!q.empty()) {
          std::shared_ptr<Engine> best;
          for (auto& [id, e] : engines) {
            if (e->model != model || e->draining || e->load() >= static_cast<size_t>(options.max_batch)) continue;
            // Ready engines first (full instances, then pipelines), the least loaded; a warming
            // one only when no ready one has room.
            if (!best || std::make_tuple(e->warming, e->kind != EngineKind::kLocal, e->load()) <
                             std::make_tuple(best->warming, best->kind != EngineKind::kLocal, best->load())) {
              best = e;
            }
          }
          if (!best) break;
          RequestPtr req = q.front();
          q.pop_front();
          if (!req->was_dispatched) req->was_dispatched = true, req->dispatched = now;
          req->attempts++;
          best->inbox.push_back(std::move(req));
          best->cv.notify_one();
        }
        while (!q.empty() && now - q.front()->submitted > std::chrono::duration<double>(options.queue_timeout)) {
          expired.push_back(q.front());
          q.pop_front();
        }
      }
      // Requests waiting in a warming engine's stages go to a ready engine as soon as one has
      // room: the warming engine's step is interrupted, and they come back to the queue.
      for (auto& [id, w] : engines) {
        if (!w->warming || w->batch.empty()) continue;
        const bool room = std::any_of(engines.begin(), engines.end(), [&](const auto& kv) {
          const Engine& e = *kv.second;
          return e.model == w->model && !e.warming && !e.draining && e.load() < static_cast<size_t>(options.max_batch);
        });
        if (!room) continue;
        w->interrupted = true;
        w->pipeline->Interrupt();  // again each pass while so: a step not yet begun misses it
      }
      if (!expired.empty()) {
        lock.unlock();
        for (auto& req : expired) {
          Finish(req, DeadlineExceeded("no engine of model '" + req->r.model + "' took the request within " +
                                       std::to_string(options.queue_timeout) + " s"));
        }
        lock.lock();
        continue;
      }
      cv.wait_for(lock, std::chrono::milliseconds(100));
    }
  }

  // Takes every request off the engine (its batch and inbox, their KV caches on it freed) back
  // to the front of their queue, to continue elsewhere; `counted`: the attempt on it counts, and
  // those out of attempts go to `failed` instead.
  void GiveBackLocked(Engine& e, bool counted, std::vector<RequestPtr>* failed) {
    std::vector<RequestPtr> all(e.batch.begin(), e.batch.end());
    all.insert(all.end(), e.inbox.begin(), e.inbox.end());
    e.batch.clear();
    e.inbox.clear();
    auto& q = queues[e.model];
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
      RequestPtr req = *it;
      e.pipeline->Drop(req->cache_id);
      if (!counted) req->attempts--;
      if (req->attempts >= options.max_attempts) {
        failed->push_back(req);
        continue;
      }
      req->cache_id = next_cache_id++;
      req->fed = 0;
      q.push_front(req);
    }
  }

  void Run(const std::shared_ptr<Engine>& e) {
    Pipeline& p = *e->pipeline;
    while (true) {
      std::vector<RequestPtr> rejected;
      {
        std::unique_lock<std::mutex> lock(mu);
        e->cv.wait(lock, [&] { return e->stop || !e->inbox.empty() || !e->batch.empty() || e->draining; });
        if (e->stop) return;
        e->interrupted = false;
        while (!e->inbox.empty()) {
          e->batch.push_back(std::move(e->inbox.front()));
          e->inbox.pop_front();
        }
        if (e->batch.empty() && e->draining) {
          engines.erase(e->id);
          gone.push_back(e);
          lock.unlock();
          LOG(INFO) << "router: engine " << e->id << " drained after " << e->served << " requests";
          if (e->on_gone) e->on_gone(Status::Ok());
          cv.notify_all();
          return;
        }
      }
      // The step: a new request (or one moved here) prefills its prompt and what it generated
      // so far; a running one feeds its last token.
      StepInput in;
      std::vector<RequestPtr> stepped;
      for (auto& req : e->batch) {
        if (req->fed == 0) {
          std::vector<int32_t> seq = req->r.prompt;
          seq.insert(seq.end(), req->generated.begin(), req->generated.end());
          Status bad;
          for (int32_t t : seq) {
            if (t < 0 || t >= p.vocab_size()) {
              bad = InvalidArgument("token id " + std::to_string(t) + " is outside model '" + e->model +
                                    "''s vocabulary [0, " + std::to_string(p.vocab_size()) + ")");
              break;
            }
          }
          const int64_t need = static_cast<int64_t>(req->r.prompt.size()) + req->r.max_tokens;
          if (bad.ok() && need > p.max_positions()) {
            bad = OutOfRange("prompt of " + std::to_string(req->r.prompt.size()) + " tokens plus max_tokens " +
                             std::to_string(req->r.max_tokens) + " exceeds model '" + e->model + "''s " +
                             std::to_string(p.max_positions()) + " positions");
          }
          if (!bad.ok()) {
            req->engine = e->id;
            rejected.push_back(req);
            Finish(req, bad);
            continue;
          }
          if (req->cache_id == 0) req->cache_id = next_cache_id++;
          in.items.push_back({req->cache_id, 0, static_cast<int32_t>(seq.size())});
          in.tokens.insert(in.tokens.end(), seq.begin(), seq.end());
        } else {
          in.items.push_back({req->cache_id, req->fed, 1});
          in.tokens.push_back(req->generated.back());
        }
        stepped.push_back(req);
      }
      if (!rejected.empty()) {
        std::lock_guard<std::mutex> lock(mu);
        std::erase_if(e->batch, [&](const RequestPtr& r) {
          return std::find(rejected.begin(), rejected.end(), r) != rejected.end();
        });
        cv.notify_all();
      }
      if (stepped.empty()) continue;
      StepOutput out;
      const auto step_start = Clock::now();
      Status s = p.Step(in, &out);
      if (s.ok() && (options.emulated_step > 0 || options.emulated_token > 0)) {
        const double floor = options.emulated_step + options.emulated_token * static_cast<double>(in.tokens.size());
        std::this_thread::sleep_until(step_start + std::chrono::duration_cast<Clock::duration>(
                                                       std::chrono::duration<double>(floor)));
      }
      if (!s.ok()) {
        // A warming engine's failure is its own whatever the error (its stages were never all
        // built), and costs its requests no attempt. Interrupted (see Dispatch), it stays.
        std::vector<RequestPtr> failed;
        bool given_back = false, left = false;
        {
          std::lock_guard<std::mutex> lock(mu);
          const bool warming = e->warming;
          if (warming && e->interrupted && !e->draining && !e->stop) {
            LOG(INFO) << "router: engine " << e->id << " (warming) gives its " << e->load()
                      << " requests to a ready engine";
            GiveBackLocked(*e, /*counted=*/false, &failed);
            e->interrupted = false;
            given_back = true;
          } else if (EngineFault(s) || warming) {
            LOG(WARNING) << "router: engine " << e->id << (warming ? " (warming)" : "") << " failed: " << s.ToString()
                         << "; its " << e->load() << " requests go on elsewhere";
            GiveBackLocked(*e, /*counted=*/!warming, &failed);
            engines.erase(e->id);
            gone.push_back(e);
            left = true;
          }
        }
        if (given_back || left) {
          cv.notify_all();
          for (auto& req : failed) Finish(req, s.WithContext("after " + std::to_string(req->attempts) + " attempts"));
          if (left) {
            if (e->on_gone) e->on_gone(s);
            return;
          }
          continue;
        }
      }
      if (s.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        e->warming = false;  // a step went through: its stages are all built
      }
      std::vector<RequestPtr> finished;
      const auto now = Clock::now();
      for (size_t i = 0; i < stepped.size(); ++i) {
        RequestPtr& req = stepped[i];
        if (!s.ok()) {
          p.Drop(req->cache_id);
          req->engine = e->id;
          Finish(req, s);
          finished.push_back(req);
          continue;
        }
        const std::span<const float> logits(out.logits.data() + i * p.vocab_size(), p.vocab_size());
        const int32_t token = req->sampler.Next(logits);
        req->fed += in.items[i].num_tokens;
        req->generated.push_back(token);
        if (req->generated.size() == 1) req->first_token = now;
        req->last_token = now;
        req->engine = e->id;
        const bool go_on = !req->r.on_token || req->r.on_token(token);
        if (!go_on || static_cast<int>(req->generated.size()) >= req->r.max_tokens ||
            std::find(req->r.stop_tokens.begin(), req->r.stop_tokens.end(), token) != req->r.stop_tokens.end()) {
          p.Drop(req->cache_id);
          Finish(req, Status::Ok());
          finished.push_back(req);
        }
      }
      if (!finished.empty()) {
        std::lock_guard<std::mutex> lock(mu);
        std::erase_if(e->batch, [&](const RequestPtr& r) {
          return std::find(finished.begin(), finished.end(), r) != finished.end();
        });
        e->served += finished.size();
        cv.notify_all();
      }
    }
  }
};

Router::Router(RouterOptions options) : impl_(std::make_shared<Impl>()) {
  impl_->options = options;
  impl_->next_cache_id = (static_cast<uint64_t>(std::random_device{}()) << 32) | 1;
  impl_->dispatcher = std::thread([i = impl_.get()] { i->Dispatch(); });
}

Router::~Router() {
  std::vector<std::shared_ptr<Engine>> all;
  std::vector<RequestPtr> left;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->closing = true;
    for (auto& [id, e] : impl_->engines) {
      e->stop = true;
      e->cv.notify_all();
      all.push_back(e);
    }
    all.insert(all.end(), impl_->gone.begin(), impl_->gone.end());
  }
  impl_->cv.notify_all();
  if (impl_->dispatcher.joinable()) impl_->dispatcher.join();
  for (auto& e : all) {
    if (e->thread.joinable()) e->thread.join();
    left.insert(left.end(), e->batch.begin(), e->batch.end());
    left.insert(left.end(), e->inbox.begin(), e->inbox.end());
  }
  for (auto& [model, q] : impl_->queues) left.insert(left.end(), q.begin(), q.end());
  for (auto& req : left) Impl::Finish(req, Cancelled("the router stopped"));
}

Status Router::AddEngine(const std::string& id, const std::string& model, EngineKind kind,
                         std::unique_ptr<Pipeline> pipeline, std::function<void(const Status&)> on_gone, bool warming) {
  if (pipeline == nullptr) return InvalidArgument("engine " + id + " has no pipeline");
  auto e = std::make_shared<Engine>();
  e->id = id;
  e->model = model;
  e->kind = kind;
  e->warming = warming;
  e->pipeline = std::move(pipeline);
  e->on_gone = std::move(on_gone);
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->closing) return Cancelled("the router is stopping");
    if (impl_->engines.count(id)) return AlreadyExists("the router already has an engine " + id);
    impl_->engines[id] = e;
    e->thread = std::thread([i = impl_.get(), e] { i->Run(e); });
  }
  LOG(INFO) << "router: engine " << id << " (" << (kind == EngineKind::kLocal ? "local instance" : "pipeline")
            << (warming ? ", warming" : "") << ") serves " << model;
  impl_->cv.notify_all();
  return Status::Ok();
}

Status Router::ReadyEngine(const std::string& id) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->engines.find(id);
    if (it == impl_->engines.end()) return NotFound("the router has no engine " + id);
    it->second->warming = false;
  }
  impl_->cv.notify_all();
  return Status::Ok();
}

Status Router::DrainEngine(const std::string& id) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto it = impl_->engines.find(id);
  if (it == impl_->engines.end()) return NotFound("the router has no engine " + id);
  it->second->draining = true;
  it->second->cv.notify_all();
  return Status::Ok();
}

std::vector<EngineInfo> Router::Engines(const std::string& model) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  std::vector<EngineInfo> out;
  for (const auto& [id, e] : impl_->engines) {
    if (!model.empty() && e->model != model) continue;
    out.push_back({id, e->model, e->kind, e->load(), e->draining, e->warming, e->served});
  }
  return out;
}

Status Router::Submit(GenerateRequest request) {
  if (request.model.empty()) return InvalidArgument("a request names no model");
  if (request.prompt.empty()) return InvalidArgument("an empty prompt");
  if (request.max_tokens < 1) {
    return InvalidArgument("max_tokens " + std::to_string(request.max_tokens) + " must be at least 1");
  }
  MC_RETURN_IF_ERROR(request.sampling.Validate());
  auto req = std::make_shared<Request>(std::move(request));
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->closing) return Cancelled("the router is stopping");
    impl_->queues[req->r.model].push_back(std::move(req));
  }
  impl_->cv.notify_all();
  return Status::Ok();
}

}  // namespace modelcast::pipeline
