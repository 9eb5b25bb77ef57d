#include "election.h"

#include <glog/logging.h>

#include <algorithm>
#include <chrono>

namespace modelcast::coordinator {

Result<std::unique_ptr<LeaderElection>> LeaderElection::Start(std::shared_ptr<EtcdClient> client, Options options) {
  if (options.key.empty()) return InvalidArgument("election: no key");
  if (options.ttl_s < 1) return InvalidArgument("election: the lease's TTL must be at least 1 s");
  auto e = std::unique_ptr<LeaderElection>(new LeaderElection());
  e->client_ = std::move(client);
  e->options_ = std::move(options);
  e->thread_ = std::thread([raw = e.get()] { raw->Run(); });
  e->watchdog_ = std::thread([raw = e.get()] { raw->Watchdog(); });
  return e;
}

LeaderElection::~LeaderElection() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (watchdog_.joinable()) watchdog_.join();
}

namespace {
int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

void LeaderElection::StopLeading(const std::string& why) {
  std::lock_guard<std::mutex> lock(change_mu_);
  if (!leading_.exchange(false)) return;
  fence_revision_ = 0;
  LOG(WARNING) << "election: no longer leading (" << why << ")";
  if (options_.on_change) options_.on_change(false, 0);
}

// How long after sending the last keep-alive that was answered a leader may still act: the lease
// lives at least the TTL from then (etcd renewed it after it was sent), so this leaves a margin
// of a fifth of the TTL (at least 0.3 s) before a standby can win.
int64_t LeaderElection::LeadLimitNs() const {
  const double ttl = static_cast<double>(options_.ttl_s);
  return static_cast<int64_t>((ttl - std::max(0.3, ttl / 5)) * 1e9);
}

void LeaderElection::Watchdog() {
  while (Sleep(0.02)) {
    if (leading_ && SteadyNs() - renewed_ns_ > LeadLimitNs()) {
      StopLeading("no keep-alive of its lease answered in time: etcd unreachable or too slow");
    }
  }
}

bool LeaderElection::Sleep(double seconds) {
  std::unique_lock<std::mutex> lock(mu_);
  return !cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return stopping_; });
}

bool LeaderElection::SleepUnlessKeyGone(double seconds) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return stopping_ || key_gone_; });
  return !stopping_;
}

Result<std::string> LeaderElection::Leader() const {
  MC_ASSIGN_OR_RETURN(auto kvs, client_->Range(options_.key));
  return kvs.empty() ? std::string() : kvs[0].value;
}

void LeaderElection::Run() {
  const double ttl = static_cast<double>(options_.ttl_s);
  // Keeps our lease alive; false (the lease forgotten) when etcd says it is gone.
  auto keep_alive = [&]() -> Result<int64_t> {
    const int64_t sent = SteadyNs();
    auto left = client_->LeaseKeepAlive(lease_);
    if (left.ok()) renewed_ns_ = sent;
    return left;
  };
  while (Sleep(0)) {
    // A lease of our own, then the key if nobody holds it.
    if (lease_ == 0) {
      const int64_t sent = SteadyNs();
      auto lease = client_->LeaseGrant(options_.ttl_s);
      if (!lease.ok()) {
        LOG(WARNING) << "election: " << lease.status().message();
        if (!Sleep(ttl / 3)) break;
        continue;
      }
      lease_ = *lease;
      renewed_ns_ = sent;
    }
    auto won = client_->Txn({{options_.key, EtcdCompare::Target::kCreate, EtcdCompare::Op::kEqual, 0, ""}},
                            {EtcdOp::Put(options_.key, options_.value, lease_)}, {EtcdOp::Get(options_.key)});
    if (!won.ok()) {
      LOG(WARNING) << "election: " << won.status().message();
      if (!Sleep(ttl / 3)) break;
      continue;
    }
    if (won->succeeded) {
      if (SteadyNs() - renewed_ns_ > LeadLimitNs() / 2 && !keep_alive().ok()) {
        // Won on a lease that may be about to end and cannot be renewed: not led on. The key
        // goes with that lease; a new one campaigns again once it has.
        lease_ = 0;
        continue;
      }
      {
        std::lock_guard<std::mutex> lock(change_mu_);
        fence_revision_ = won->revision;
        leading_ = true;
      }
      LOG(INFO) << "election: leading (" << options_.key << " at revision " << won->revision << ")";
      if (options_.on_change) options_.on_change(true, won->revision);
      // Lead while the lease lives: kept alive every quarter of its TTL. The watchdog stops
      // leading once LeadLimitNs passes without an answered keep-alive, even while a call still
      // waits; here an answer that the lease is gone stops it too.
      while (Sleep(ttl / 4) && leading_) {
        auto left = keep_alive();
        if (!left.ok() && left.status().code() == StatusCode::kNotFound) StopLeading("the lease expired");
      }
      if (leading_) break;  // stopped while leading: resign below
      lease_ = 0;  // whatever etcd thinks of it, it is not used again
      continue;
    }
    // Someone leads: keep our lease alive and campaign again the moment the key goes (a dead
    // leader's key goes with its lease): a watch on it wakes us; every third of the TTL the key
    // is also read, should the watch have ended.
    {
      std::lock_guard<std::mutex> lock(mu_);
      key_gone_ = false;
    }
    int64_t seen = 0;
    std::unique_ptr<EtcdWatch> watch;
    if (auto holder = client_->Range(options_.key, "", &seen); holder.ok() && !holder->empty()) {
      auto w = client_->Watch(
          options_.key, "", seen + 1,
          [this](const EtcdEvent& e) {
            if (!e.deleted) return;
            std::lock_guard<std::mutex> lock(mu_);
            key_gone_ = true;
            cv_.notify_all();
          },
          [](const Status&) {});
      if (w.ok()) watch = std::move(*w);
    }
    while (SleepUnlessKeyGone(ttl / 3)) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (key_gone_) break;
      }
      if (auto left = keep_alive(); !left.ok() && left.status().code() == StatusCode::kNotFound) {
        lease_ = 0;
        break;
      }
      auto holder = client_->Range(options_.key);
      if (holder.ok() && holder->empty()) break;
    }
    watch.reset();  // joins its thread, which takes mu_: not held here
  }
  // Resigning: the lease (and the key, if ours) goes at once, so a standby need not wait.
  if (lease_ != 0) {
    if (Status st = client_->LeaseRevoke(lease_); !st.ok()) LOG(WARNING) << "election: resigning: " << st.message();
  }
  StopLeading("resigned");
}

}  // namespace modelcast::coordinator
