// The progress thread of a transport: it owns the backend's resources, runs commands posted
// from other threads, drives the backend's progress, and sleeps on the backend's event fd
// (plus an eventfd for posted commands) when there is nothing to do. No busy polling.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "modelcast/common/status.h"
#include "modelcast/common/thread_placement.h"

namespace modelcast::fabric {

class EventLoop {
 public:
  struct Hooks {
    int event_fd = -1;               // readable when the backend has events
    std::function<bool()> progress;  // does pending work; true if it did something
    std::function<bool()> arm;       // true: armed, safe to sleep; false: events pending
  };

  EventLoop();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Starts the loop thread, named `thread_name`, placed per `placement` (its nice value and CPUs).
  Status Start(std::string thread_name, Hooks hooks, const ThreadPlacement& placement = {});
  // Runs `fn` on the loop thread, soon. Commands posted after Stop are dropped.
  void Post(std::function<void()> fn);
  // Runs `fn` on the loop thread after `seconds`. Returns an id for Cancel.
  uint64_t RunAfter(double seconds, std::function<void()> fn);
  void Cancel(uint64_t timer);
  // Runs `fn` on the loop thread and waits for it (at most `deadline` seconds).
  Status RunSync(std::function<void()> fn, double deadline = 10);
  bool OnLoopThread() const { return std::this_thread::get_id() == thread_id_; }
  bool running() const { return running_; }
  // Runs `last` on the loop thread (final teardown), then stops and joins the thread.
  void Stop(std::function<void()> last = nullptr);

 private:
  void Run(Hooks hooks);
  void Wake();

  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::thread thread_;
  std::thread::id thread_id_;
  std::atomic<bool> running_{false};
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::deque<std::function<void()>> commands_;
  std::multimap<std::chrono::steady_clock::time_point, std::pair<uint64_t, std::function<void()>>> timers_;
  uint64_t next_timer_ = 1;
  std::function<void()> last_;
};

}  // namespace modelcast::fabric
