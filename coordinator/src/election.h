// Leader election among coordinators on an etcd lease (issue 24): whoever creates the election
// key (with its lease) leads until its lease ends; the key's create revision is the leader's
// fence (EtcdLog::Fence), so every write of a deposed leader is refused. A candidate keeps its
// lease alive from a thread of its own; when it cannot (etcd unreachable past the TTL, or the
// lease gone) it stops leading at once and says so, so that it never acts on a lease it no
// longer holds. Standbys wait, watching the key, and campaign when it goes.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "etcd_client.h"

namespace modelcast::coordinator {

class LeaderElection {
 public:
  struct Options {
    std::string key;       // the election key, e.g. <prefix>/leader
    std::string value;     // what the leader publishes there (its address, for clients)
    int64_t ttl_s = 3;     // the lease: a dead leader is replaced within this long
    // Called on the election's thread: led = true with the fence's create revision when this
    // candidate becomes the leader; led = false (revision 0) when it stops leading.
    std::function<void(bool led, int64_t revision)> on_change;
  };

  // Starts campaigning at once (a thread of its own).
  static Result<std::unique_ptr<LeaderElection>> Start(std::shared_ptr<EtcdClient> client, Options options);
  // Resigns (the key is deleted with the lease, so a standby takes over at once) and stops.
  ~LeaderElection();

  bool leading() const { return leading_; }
  int64_t fence_revision() const { return fence_revision_; }
  // The lease it leads on (while leading): keys put with it go when the leadership does.
  int64_t lease() const { return lease_; }
  // Who leads now (the election key's value), empty when nobody does.
  Result<std::string> Leader() const;

 private:
  LeaderElection() = default;
  void Run();
  // Waits `seconds` or until stopped; false when stopped.
  bool Sleep(double seconds);
  // The same, waking early (true) when a watch saw the leader's key deleted.
  bool SleepUnlessKeyGone(double seconds);
  // Stops leading (once) and says why.
  void StopLeading(const std::string& why);
  // While leading: stops leading once LeadLimitNs has passed since the last keep-alive that was
  // answered was sent, whether or not a keep-alive call is still waiting (an unreachable etcd
  // makes each call wait its timeout, per member).
  void Watchdog();
  int64_t LeadLimitNs() const;

  std::shared_ptr<EtcdClient> client_;
  Options options_;
  std::atomic<bool> leading_{false};
  std::atomic<int64_t> fence_revision_{0};
  // When the last answered grant or keep-alive of our lease was sent (steady clock, ns): the
  // lease lives at least the TTL from then.
  std::atomic<int64_t> renewed_ns_{0};
  std::mutex change_mu_;  // StopLeading
  std::atomic<int64_t> lease_{0};  // written by the election's thread only
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool key_gone_ = false;  // the leader's key, watched by a standby, was deleted
  std::thread thread_, watchdog_;
};

}  // namespace modelcast::coordinator
