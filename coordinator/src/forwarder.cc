#include "forwarder.h"

#include <glog/logging.h>
#include <httplib.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>

#include "etcd_client.h"
#include "http_errors.h"

namespace modelcast::coordinator {
namespace {

// One request forwarded: the leader's answer arrives on a thread of its own (its head first,
// then its body in pieces), and is handed to the client's connection as it comes.
struct Upstream {
  std::mutex mu;
  std::condition_variable cv;
  bool head = false, done = false, cancelled = false;
  int status = 0;
  httplib::Headers headers;
  std::deque<std::string> chunks;
  std::string error;  // why it ended early, when it did
  std::thread thread;

  ~Upstream() {
    {
      std::lock_guard lock(mu);
      cancelled = true;
    }
    if (thread.joinable()) thread.join();
  }
};

void Unavailable503(httplib::Response& res, const std::string& why) {
  res.set_header("Retry-After", "1");
  HttpError(res, 503, Unavailable(why));
}

}  // namespace

Result<std::string> ServingForwarder::Leader() {
  std::lock_guard lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  if (leader_.empty() || now - read_ > std::chrono::milliseconds(500)) {
    MC_ASSIGN_OR_RETURN(auto kvs, etcd_->Range(key_));
    leader_ = kvs.empty() ? "" : kvs[0].value;
    read_ = now;
  }
  return leader_;
}

Result<std::unique_ptr<ServingForwarder>> ServingForwarder::Start(const std::string& address, int port, int threads,
                                                                  std::shared_ptr<EtcdClient> etcd, std::string key) {
  auto f = std::unique_ptr<ServingForwarder>(new ServingForwarder());
  f->etcd_ = std::move(etcd);
  f->key_ = std::move(key);
  f->http_ = std::make_unique<httplib::Server>();
  f->http_->new_task_queue = [n = static_cast<size_t>(threads)] { return new httplib::ThreadPool(n); };
  auto forward = [raw = f.get()](const httplib::Request& req, httplib::Response& res) {
    auto at = raw->Leader();
    if (!at.ok() || at->empty()) {
      Unavailable503(res, "no coordinator leads now" + (at.ok() ? std::string() : " (" + at.status().message() + ")") +
                              ": retry");
      return;
    }
    const size_t colon = at->rfind(':');
    const std::string host = at->substr(0, colon);
    const int leader_port = std::atoi(at->c_str() + colon + 1);
    auto up = std::make_shared<Upstream>();
    httplib::Request out;
    out.method = req.method;
    out.path = req.target.empty() ? req.path : req.target;
    for (const auto& [k, v] : req.headers) {
      if (k == "Host" || k == "Content-Length" || k == "Connection" || k == "Transfer-Encoding" || k == "Accept-Encoding" ||
          k == "REMOTE_ADDR" || k == "REMOTE_PORT" || k == "LOCAL_ADDR" || k == "LOCAL_PORT") {
        continue;
      }
      out.headers.emplace(k, v);
    }
    out.body = req.body;
    Upstream* u = up.get();
    out.response_handler = [u](const httplib::Response& r) {
      std::lock_guard lock(u->mu);
      u->head = true;
      u->status = r.status;
      u->headers = r.headers;
      u->cv.notify_all();
      return !u->cancelled;
    };
    out.content_receiver = [u](const char* data, size_t n, uint64_t, uint64_t) {
      std::lock_guard lock(u->mu);
      u->chunks.emplace_back(data, n);
      u->cv.notify_all();
      return !u->cancelled;
    };
    up->thread = std::thread([u, host, leader_port, out = std::move(out)]() mutable {
      httplib::Client client(host, leader_port);
      client.set_connection_timeout(std::chrono::seconds(2));
      client.set_read_timeout(std::chrono::seconds(600));  // a long generation streams for minutes
      auto result = client.send(out);
      std::lock_guard lock(u->mu);
      if (!result) u->error = "the leader's answer ended early (" + httplib::to_string(result.error()) + ")";
      u->done = true;
      u->cv.notify_all();
    });
    {
      std::unique_lock lock(up->mu);
      up->cv.wait(lock, [&] { return up->head || up->done; });
      if (!up->head) {
        Unavailable503(res, "the leading coordinator at " + *at + " did not answer: " + up->error + ": retry");
        return;
      }
      res.status = up->status;
      for (const auto& [k, v] : up->headers) {
        if (k == "Content-Length" || k == "Transfer-Encoding" || k == "Connection" || k == "Content-Type" ||
            k == "Keep-Alive") {
          continue;
        }
        res.set_header(k, v);
      }
    }
    std::string type = "application/octet-stream";
    if (auto it = up->headers.find("Content-Type"); it != up->headers.end()) type = it->second;
    if (type.rfind("text/event-stream", 0) != 0) {
      // A whole answer is passed on whole: one the leader's death cuts short is answered 503,
      // which clients retry, not a 200 with half a body, which they do not.
      std::unique_lock lock(up->mu);
      up->cv.wait(lock, [&] { return up->done; });
      if (!up->error.empty()) {
        Unavailable503(res, "the leading coordinator at " + *at + " went away mid-answer: retry");
        return;
      }
      std::string all;
      for (auto& c : up->chunks) all += c;
      res.set_content(std::move(all), type);
      return;
    }
    // A stream (server-sent events) is passed on as it comes.
    res.set_chunked_content_provider(type, [up](size_t, httplib::DataSink& sink) {
      std::unique_lock lock(up->mu);
      up->cv.wait(lock, [&] { return !up->chunks.empty() || up->done; });
      if (!up->chunks.empty()) {
        std::string chunk = std::move(up->chunks.front());
        up->chunks.pop_front();
        lock.unlock();
        return sink.write(chunk.data(), chunk.size());
      }
      if (!up->error.empty()) return false;  // cut short: the client sees the stream end early
      lock.unlock();
      sink.done();
      return true;
    });
  };
  f->http_->Get(".*", forward);
  f->http_->Post(".*", forward);
  f->http_->Delete(".*", forward);
  if (port == 0) {
    f->port_ = f->http_->bind_to_any_port(address);
  } else {
    f->port_ = f->http_->bind_to_port(address, port) ? port : -1;
  }
  if (f->port_ <= 0) {
    return Unavailable("standby: cannot listen on " + address + ":" + std::to_string(port) + " for the HTTP API");
  }
  f->thread_ = std::thread([raw = f.get()] { raw->http_->listen_after_bind(); });
  LOG(INFO) << "coordinator: standby forwarding its HTTP API on " << address << ":" << f->port_ << " to the leader";
  return f;
}

ServingForwarder::~ServingForwarder() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace modelcast::coordinator
