// The plan fragments an agent runs. Each runs on a thread of its own over its own channel of
// the fabric mux: its own blocks come up to host memory first, every block gets a pinned host
// buffer, the executor moves the slices, the store records each one as it lands, and progress
// goes to the coordinator every 200 ms and at the end.
//
// Threads: Start, Cancel, Running and Stop may be called from any thread (the RPC handlers').
// A fragment's thread touches its own request and fragment, the store, the transport and the
// mux (each safe from any thread), the coordinator link and the counters.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "Agent.h"
#include "coordinator_link.h"
#include "modelcast/fabric/channel_mux.h"
#include "modelcast/fabric/executor.h"
#include "modelcast/fabric/fragment.h"
#include "modelcast/model/manifest.h"
#include "modelcast/tiers/store.h"

namespace modelcast::agent {

class FragmentRunner {
 public:
  struct Counters {
    std::atomic<uint64_t> ok{0}, failed{0}, slices_in{0}, bytes_in{0}, slices_out{0}, bytes_out{0}, corrupt_in{0};
  };

  FragmentRunner(const AgentConfig& config, tiers::Store& store, fabric::Transport& transport, fabric::ChannelMux& mux,
                 CoordinatorLink& link);
  ~FragmentRunner();

  // Starts `fragment` of `req` (checked by the caller against `manifest`) on its own thread.
  // AlreadyExists when the operation runs here already; Cancelled when it was cancelled before
  // it arrived (a replan overtook its dispatch); Unavailable once stopping.
  Status Start(const rpc::RunFragmentRequest& req, fabric::PlanFragment fragment,
               std::shared_ptr<const model::Manifest> manifest);
  // Cancels operation `id` and waits (at most `wait`) until its fragment has ended and
  // reported. NotFound when it is not running here (it is then refused if it comes later);
  // Unavailable when it is still stopping after `wait`.
  Status Cancel(const std::string& id, const std::string& asked_by, std::chrono::milliseconds wait);
  std::vector<std::string> Running() const;
  // Cancels every fragment and joins their threads; Start refuses from then on.
  void Stop();

  const Counters& counters() const { return counters_; }
  // Called (on a run's thread; it must not block) with the model of every slice that lands and
  // is recorded in the store. Set before the first fragment starts.
  void SetLandedHook(std::function<void(const std::string& model)> hook) { landed_hook_ = std::move(hook); }

 private:
  struct Progress;  // one fragment's pending progress and its reporter
  // The fragment's thread: runs it, reports its end, forgets it.
  void Main(const rpc::RunFragmentRequest& req, const fabric::PlanFragment& fragment,
            std::shared_ptr<const model::Manifest> manifest, std::shared_ptr<std::atomic<bool>> cancel);
  // Runs one fragment; `failure` says whether this node's own store refused (a full host pool,
  // an unreadable SSD, a slice it could not record), which the coordinator repairs as a lost node.
  Status Execute(const rpc::RunFragmentRequest& req, const fabric::PlanFragment& fragment, const model::Manifest& m,
                 const std::atomic<bool>& cancel, Progress& progress, fabric::ExecutorReport& outcome,
                 rpc::FragmentFailure::type& failure);
  void Report(const std::string& operation, double started_unix, std::vector<rpc::SliceProgress> slices, bool done,
              const Status& error, const fabric::ExecutorReport* end, rpc::FragmentFailure::type failure);

  const AgentConfig& config_;
  tiers::Store& store_;
  fabric::Transport& transport_;
  fabric::ChannelMux& mux_;
  CoordinatorLink& link_;
  Counters counters_;
  std::function<void(const std::string&)> landed_hook_;
  const std::shared_ptr<fabric::SendPacer> pacer_;  // every run's share of the uplink (nullptr: unbounded)

  mutable std::mutex mu_;
  std::condition_variable cv_;  // a fragment left `running_`
  bool stopping_ = false;
  std::map<std::string, std::thread> threads_;
  std::map<std::string, std::shared_ptr<std::atomic<bool>>> running_;  // operation -> its cancel flag
  // Fragments cancelled before they arrived: refused if they come after all (the newest ones).
  std::set<std::string> cancelled_early_;
  std::deque<std::string> cancelled_order_;
  static constexpr size_t kRememberCancelled = 1024;
};

}  // namespace modelcast::agent
