#include "event_loop.h"

#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <future>


namespace modelcast::fabric {

EventLoop::EventLoop() = default;

EventLoop::~EventLoop() {
  Stop();
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
}

Status EventLoop::Start(std::string thread_name, Hooks hooks, const ThreadPlacement& placement) {
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return IOError("epoll_create1", errno);
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) return IOError("eventfd", errno);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = wake_fd_;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev) != 0) return IOError("epoll_ctl(eventfd)", errno);
  if (hooks.event_fd >= 0) {
    ev.data.fd = hooks.event_fd;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, hooks.event_fd, &ev) != 0) return IOError("epoll_ctl(backend fd)", errno);
  }
  running_ = true;
  std::promise<void> started;
  auto ready = started.get_future();
  Status placed;
  thread_ = std::thread([this, hooks = std::move(hooks), &started, &placed, thread_name, placement]() mutable {
    thread_id_ = std::this_thread::get_id();
    ::pthread_setname_np(::pthread_self(), thread_name.substr(0, 15).c_str());
    if (!placement.is_default()) placed = placement.Apply();
    started.set_value();
    Run(std::move(hooks));
  });
  ready.wait();
  return placed.WithContext("placing the " + thread_name + " thread");
}

void EventLoop::Wake() {
  const uint64_t one = 1;
  if (wake_fd_ >= 0) (void)::write(wake_fd_, &one, sizeof(one));
}

void EventLoop::Post(std::function<void()> fn) {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    commands_.push_back(std::move(fn));
  }
  Wake();
}

uint64_t EventLoop::RunAfter(double seconds, std::function<void()> fn) {
  std::lock_guard lock(mu_);
  const uint64_t id = next_timer_++;
  const auto when = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                           std::chrono::duration<double>(seconds));
  timers_.emplace(when, std::make_pair(id, std::move(fn)));
  Wake();
  return id;
}

void EventLoop::Cancel(uint64_t timer) {
  std::lock_guard lock(mu_);
  for (auto it = timers_.begin(); it != timers_.end(); ++it) {
    if (it->second.first == timer) {
      timers_.erase(it);
      return;
    }
  }
}

Status EventLoop::RunSync(std::function<void()> fn, double deadline) {
  if (OnLoopThread()) {
    fn();
    return Status::Ok();
  }
  auto done = std::make_shared<std::promise<void>>();
  auto f = done->get_future();
  Post([fn = std::move(fn), done] {
    fn();
    done->set_value();
  });
  if (f.wait_for(std::chrono::duration<double>(deadline)) != std::future_status::ready) {
    return DeadlineExceeded("transport thread did not run a command within " + std::to_string(deadline) + " s");
  }
  return Status::Ok();
}

void EventLoop::Stop(std::function<void()> last) {
  if (!running_) return;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    last_ = std::move(last);
    stopping_ = true;
  }
  Wake();
  if (thread_.joinable()) thread_.join();
  running_ = false;
}

void EventLoop::Run(Hooks hooks) {
  epoll_event events[4];
  while (true) {
    std::deque<std::function<void()>> batch;
    std::vector<std::function<void()>> due;
    bool stop;
    int timeout_ms = 1000;
    {
      std::lock_guard lock(mu_);
      batch.swap(commands_);
      const auto now = std::chrono::steady_clock::now();
      while (!timers_.empty() && timers_.begin()->first <= now) {
        due.push_back(std::move(timers_.begin()->second.second));
        timers_.erase(timers_.begin());
      }
      if (!timers_.empty()) {
        const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(timers_.begin()->first - now).count();
        timeout_ms = static_cast<int>(std::min<int64_t>(timeout_ms, wait + 1));
      }
      stop = stopping_;
    }
    for (auto& fn : batch) fn();
    for (auto& fn : due) fn();
    if (stop) break;
    bool worked = !batch.empty() || !due.empty();
    while (hooks.progress && hooks.progress()) worked = true;
    if (worked) continue;
    {
      std::lock_guard lock(mu_);
      if (!commands_.empty()) continue;
    }
    if (hooks.arm && !hooks.arm()) continue;  // events pending: progress again
    const int n = ::epoll_wait(epoll_fd_, events, 4, timeout_ms);
    for (int i = 0; i < n; ++i) {
      if (events[i].data.fd == wake_fd_) {
        uint64_t count;
        (void)::read(wake_fd_, &count, sizeof(count));
      }
    }
  }
  // Final teardown on this thread, then drain what it posted.
  if (last_) last_();
  while (hooks.progress && hooks.progress()) {
  }
}

}  // namespace modelcast::fabric
