#include "fragments.h"

#include <glog/logging.h>

#include <algorithm>
#include <atomic>
#include <future>

#include "modelcast/common/thread_placement.h"
#include "modelcast/fabric/transport.h"

namespace modelcast::agent {

using namespace std::chrono_literals;

// What a fragment has to report, and the thread that reports it every 200 ms while it runs.
struct FragmentRunner::Progress {
  const double started_unix =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  bool urgent = false;  // a block completed: report now, not at the next batch
  std::vector<rpc::SliceProgress> pending;

  void Add(rpc::SliceProgress p, bool now = false) {
    {
      std::lock_guard lock(mu);
      pending.push_back(std::move(p));
      urgent = urgent || now;
    }
    if (now) cv.notify_all();
  }
  // Seconds from the fragment's start to `t` (SliceProgress times count from it).
  double Since(std::chrono::steady_clock::time_point t) const {
    return std::chrono::duration<double>(t - start).count();
  }
};

FragmentRunner::FragmentRunner(const AgentConfig& config, tiers::Store& store, fabric::Transport& transport,
                               fabric::ChannelMux& mux, CoordinatorLink& link)
    : config_(config),
      store_(store),
      transport_(transport),
      mux_(mux),
      link_(link),
      pacer_(config.max_send_rate > 0 ? std::make_shared<fabric::SendPacer>(config.max_send_rate) : nullptr) {}

FragmentRunner::~FragmentRunner() { Stop(); }

Status FragmentRunner::Start(const rpc::RunFragmentRequest& req, fabric::PlanFragment fragment,
                             std::shared_ptr<const model::Manifest> manifest) {
  std::lock_guard lock(mu_);
  if (stopping_) return Unavailable("the agent is stopping");
  const std::string& id = req.operation_id;
  if (running_.count(id)) return AlreadyExists("runFragment: operation '" + id + "' is already running here");
  if (cancelled_early_.count(id)) {
    return Cancelled("runFragment: operation '" + id + "' was cancelled before it arrived");
  }
  // Threads of fragments that have ended are joined here (each has left `running_` and needs
  // the lock no more), so that finished operations hold no thread.
  for (auto it = threads_.begin(); it != threads_.end();) {
    if (running_.count(it->first)) {
      ++it;
      continue;
    }
    it->second.join();
    it = threads_.erase(it);
  }
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  running_[id] = cancel;
  threads_[id] = std::thread([this, req, fragment = std::move(fragment), manifest, cancel] {
    Main(req, fragment, manifest, cancel);
  });
  return Status::Ok();
}

Status FragmentRunner::Cancel(const std::string& id, const std::string& asked_by, std::chrono::milliseconds wait) {
  std::unique_lock lock(mu_);
  auto it = running_.find(id);
  if (it == running_.end()) {
    // It may still be on its way (dispatched before the replan that cancels it): it will be
    // refused when it comes.
    if (cancelled_early_.insert(id).second) {
      cancelled_order_.push_back(id);
      if (cancelled_order_.size() > kRememberCancelled) {
        cancelled_early_.erase(cancelled_order_.front());
        cancelled_order_.pop_front();
      }
    }
    return NotFound("cancelOperation: operation '" + id + "' is not running here");
  }
  LOG(INFO) << "agent " << config_.node << ": cancelling operation " << id << " (asked by " << asked_by << ")";
  it->second->store(true);
  // Answer once the fragment has ended and reported, so that the caller then sees what this
  // node holds for good; a fragment still loading its own copy may take longer than the bound.
  if (!cv_.wait_for(lock, wait, [&] { return !running_.count(id); })) {
    return Unavailable("cancelOperation: operation '" + id + "' is still stopping after " +
                       std::to_string(wait.count()) + " ms");
  }
  return Status::Ok();
}

std::vector<std::string> FragmentRunner::Running() const {
  std::lock_guard lock(mu_);
  std::vector<std::string> ids;
  for (const auto& [id, cancel] : running_) ids.push_back(id);
  return ids;
}

void FragmentRunner::Stop() {
  std::map<std::string, std::thread> threads;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    for (auto& [id, cancel] : running_) cancel->store(true);
    threads.swap(threads_);
  }
  for (auto& [id, t] : threads) t.join();
}

void FragmentRunner::Main(const rpc::RunFragmentRequest& req, const fabric::PlanFragment& fragment,
                          std::shared_ptr<const model::Manifest> manifest,
                          std::shared_ptr<std::atomic<bool>> cancel) {
  if (!config_.fabric.thread.is_default()) {
    if (Status st = config_.fabric.thread.Apply(); !st.ok()) {
      LOG(WARNING) << "agent " << config_.node << ": operation " << req.operation_id << ": " << st.ToString();
    }
  }
  Progress progress;
  // Progress goes to the coordinator in batches (every 200 ms) while the fragment runs; a block
  // completed (which may let a pipeline form) and the end wake the reporter at once.
  std::thread reporter([&] {
    std::unique_lock l(progress.mu);
    while (!progress.finished) {
      progress.cv.wait_for(l, 200ms, [&] { return progress.finished || progress.urgent; });
      if (progress.finished) break;
      progress.urgent = false;
      std::vector<rpc::SliceProgress> batch;
      batch.swap(progress.pending);
      l.unlock();
      if (!batch.empty()) {
        Report(req.operation_id, progress.started_unix, std::move(batch), false, Status::Ok(), nullptr,
               rpc::FragmentFailure::OTHER);
      }
      l.lock();
    }
  });
  fabric::ExecutorReport outcome;
  rpc::FragmentFailure::type failure = rpc::FragmentFailure::OTHER;
  Status st = Execute(req, fragment, *manifest, *cancel, progress, outcome, failure);
  (st.ok() ? counters_.ok : counters_.failed)++;
  {
    std::lock_guard l(progress.mu);
    progress.finished = true;
  }
  progress.cv.notify_all();
  reporter.join();
  if (!st.ok()) LOG(WARNING) << "agent " << config_.node << ": operation " << req.operation_id << ": " << st.message();
  std::vector<rpc::SliceProgress> rest;
  {
    std::lock_guard l(progress.mu);
    rest.swap(progress.pending);
  }
  Report(req.operation_id, progress.started_unix, std::move(rest), true, st, &outcome, failure);
  {
    std::lock_guard l(mu_);
    running_.erase(req.operation_id);
  }
  cv_.notify_all();
}

Status FragmentRunner::Execute(const rpc::RunFragmentRequest& req, const fabric::PlanFragment& fragment,
                               const model::Manifest& m, const std::atomic<bool>& cancel, Progress& progress,
                               fabric::ExecutorReport& outcome, rpc::FragmentFailure::type& failure) {
  const auto& model = req.model;
  const auto refused = [&](Status st) {
    failure = rpc::FragmentFailure::STORE;
    return st.WithContext("node '" + config_.node + "': its store");
  };
  const auto deadline = std::chrono::milliseconds(static_cast<int64_t>(req.deadline_s * 1000));
  std::set<uint32_t> received;
  for (const auto& r : fragment.receives) received.insert(r.slice);
  // Blocks this node supplies itself (to send, or loaded locally) come up to host memory first,
  // unless host memory holds those slices already (a target that received them in an earlier
  // attempt of the operation forwards them from there).
  std::vector<bool> on_host(m.slices.size(), false);
  {
    const auto inventory = store_.GetInventory();
    if (const auto* h = inventory.Find(model)) {
      for (uint32_t s : h->slices[int(Tier::kHost)]) on_host[s] = true;
    }
  }
  std::set<uint32_t> own_blocks;
  for (const auto& s : fragment.sends) {
    if (!received.count(s.slice) && !on_host[s.slice]) own_blocks.insert(m.slices[s.slice].block);
  }
  for (uint32_t s : fragment.local_loads) own_blocks.insert(m.slices[s].block);
  // A cold source streams: its blocks are read up from SSD while the run goes on, and each slice,
  // once read and verified, is handed to the run (the supply), which sends it at once. The run
  // does not wait for the whole model to be in host memory before its first byte.
  const auto load_t0 = std::chrono::steady_clock::now();
  std::shared_ptr<fabric::SliceSupply> supply;
  // The load's outcome, once it has ended; it fails the supply when the load fails. (A future of
  // std::async waits for the load when destroyed, however this function returns.)
  std::future<Status> loaded;
  // Their buffers are pinned before the load starts, so that none can be evicted between the load
  // and the run (the run sends from them as the supply says).
  std::map<uint32_t, tiers::Lease> own_leases;
  for (uint32_t b : own_blocks) {
    auto lease = store_.ReserveForReceive(model, b);
    if (!lease.ok()) return refused(lease.status().WithContext("a host buffer for block " + std::to_string(b)));
    own_leases.emplace(b, std::move(*lease));
  }
  if (!own_blocks.empty()) {
    supply = std::make_shared<fabric::SliceSupply>();
    tiers::MoveOptions mo;
    mo.on_slice = [supply](const SliceEvent& e) { supply->Add(e.slice); };
    auto up = store_.Promote(model, {own_blocks.begin(), own_blocks.end()}, Tier::kHost, std::move(mo));
    if (!up.ok()) return refused(up.status());
    loaded = std::async(std::launch::async, [loading = *up, supply, deadline, model] {
      Status st = loading->Wait(deadline).WithContext("loading model '" + model + "' from this node's tiers");
      if (!st.ok()) supply->Fail(st);
      return st;
    });
  }
  // Every block gets its host buffer, pinned for the run: held ones as they are, the others
  // reserved for what arrives. The leases, and the regions registered below, belong to the
  // run (keep_alive): they are let go when no transfer of it can still be in flight.
  struct Pinned {
    std::vector<tiers::Lease> leases;
    std::vector<std::unique_ptr<fabric::MemoryRegion>> regions;
  };
  auto pinned = std::make_shared<Pinned>();
  std::vector<uint64_t> offsets;
  for (const auto& b : m.blocks) {
    if (auto own = own_leases.find(b.index); own != own_leases.end()) {
      offsets.push_back(own->second.pool_offset());
      pinned->leases.push_back(std::move(own->second));
      continue;
    }
    auto lease = store_.Acquire(model, b.index, Tier::kHost);
    if (!lease.ok()) lease = store_.ReserveForReceive(model, b.index);
    if (!lease.ok()) return refused(lease.status().WithContext("a host buffer for block " + std::to_string(b.index)));
    offsets.push_back(lease->pool_offset());
    pinned->leases.push_back(std::move(*lease));
  }
  // Held: what host memory has now (the supply adds the rest of what is loading as it comes).
  std::vector<bool> held(m.slices.size(), false);
  const auto inventory = store_.GetInventory();
  if (const auto* h = inventory.Find(model)) {
    for (uint32_t s : h->slices[int(Tier::kHost)]) held[s] = !received.count(s);
  }
  std::map<std::string, std::string> addresses;
  for (const auto& p : req.peers) addresses[p.node] = p.fabric_address;
  MC_ASSIGN_OR_RETURN(auto channel, mux_.Open(req.channel));
  for (const auto& peer : fragment.Peers()) {
    if (cancel) return Cancelled("operation " + req.operation_id + " was cancelled");
    auto it = addresses.find(peer);
    if (it == addresses.end()) return InvalidArgument("runFragment: no fabric address for peer '" + peer + "'");
    MC_RETURN_IF_ERROR(fabric::ConnectWithRetry(transport_, peer, it->second, std::min(req.deadline_s, 30.0)));
  }
  const auto layout = fabric::ModelLayout::FromManifest(m, offsets, store_.host_pool_size());
  // SliceProgress times count from the fragment's start; the executor's from its own.
  const double offset = progress.Since(std::chrono::steady_clock::now());
  fabric::ExecutorOptions opts;
  MC_ASSIGN_OR_RETURN(opts.method, fabric::ParseSliceMethod(req.method.empty() ? "auto" : req.method));
  // Writes (where the transport tells a write's arrival, or the operation asks for them) go
  // into this operation's blocks alone: each block this node sends from or receives into is
  // registered for this run and deregistered when it ends, and a receiver offers its senders
  // those regions and nothing else of its memory.
  if (opts.method == fabric::SliceMethod::kWrites ||
      (opts.method == fabric::SliceMethod::kAuto && transport_.capabilities().write_notify)) {
    std::set<uint32_t> used;
    for (const auto& s : fragment.sends) used.insert(m.slices[s.slice].block);
    for (const auto& r : fragment.receives) used.insert(m.slices[r.slice].block);
    opts.block_regions.assign(m.blocks.size(), nullptr);
    for (uint32_t b : used) {
      MC_ASSIGN_OR_RETURN(auto r, transport_.Register(store_.host_pool_base() + offsets[b], m.blocks[b].file_bytes,
                                                      fabric::MemoryKind::kHost));
      opts.block_regions[b] = r.get();
      pinned->regions.push_back(std::move(r));
    }
  }
  opts.keep_alive = pinned;
  opts.deadline = req.deadline_s;
  opts.cancel = &cancel;
  // A slice the store cannot record is not reported received: the run fails with it.
  std::atomic<bool> landing_refused{false};
  // Slices each block still waits for (on_slice calls come one at a time).
  std::vector<uint32_t> missing(m.blocks.size(), 0);
  for (uint32_t s : received) missing[m.slices[s].block]++;
  opts.on_slice = [&](const SliceEvent& e) {
    Status st = store_.Landed(e.model, e.slice);
    if (!st.ok()) {
      landing_refused = true;
      return st;
    }
    if (landed_hook_) landed_hook_(e.model);
    const uint32_t block = m.slices[e.slice].block;
    const bool block_done = missing[block] > 0 && --missing[block] == 0;
    rpc::SliceProgress p;
    p.slice = static_cast<int32_t>(e.slice);
    p.source = e.source;
    p.bytes = static_cast<int64_t>(e.bytes);
    p.started = e.started + offset;
    p.finished = e.finished + offset;
    progress.Add(std::move(p), block_done);
    return Status::Ok();
  };
  opts.supply = supply;
  opts.pacer = pacer_;
  opts.pieces = config_.pieces;
  opts.verifier_thread = config_.fabric.thread;
  const auto run_t0 = std::chrono::steady_clock::now();
  auto executed = fabric::ExecuteFragment(*channel, layout, store_.host_pool_base(), held, fragment, opts);
  Status load = Status::Ok();
  if (loaded.valid()) {
    // The load ends with the run's sends; what it still reads is for this node alone (local loads).
    load = loaded.get();
    if (executed.ok() && !load.ok()) return refused(load);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_t0).count();
    for (uint32_t s : fragment.local_loads) {
      rpc::SliceProgress p;
      p.slice = static_cast<int32_t>(s);
      p.source = "local";
      p.bytes = static_cast<int64_t>(m.slices[s].length);
      p.started = 0;
      p.finished = secs;
      progress.Add(std::move(p));
    }
    if (executed.ok() && executed->first_send >= 0) {
      LOG(INFO) << "agent " << config_.node << ": operation " << req.operation_id << ": first slice out "
                << 1e3 * (std::chrono::duration<double>(run_t0 - load_t0).count() + executed->first_send)
                << " ms after its blocks began loading from this node's tiers";
    }
  }
  if (!executed.ok()) {
    if (landing_refused || !load.ok()) failure = rpc::FragmentFailure::STORE;
    return executed.status();
  }
  const auto& report = *executed;
  counters_.slices_in += report.slices_received;
  counters_.bytes_in += report.bytes_received;
  counters_.slices_out += report.slices_sent;
  counters_.bytes_out += report.bytes_sent;
  counters_.corrupt_in += report.corrupt;
  LOG(INFO) << "agent " << config_.node << ": operation " << req.operation_id << " done: " << report.slices_received
            << " slices in, " << report.slices_sent << " out, " << report.seconds << " s";
  outcome = report;
  return Status::Ok();
}

void FragmentRunner::Report(const std::string& operation, double started_unix, std::vector<rpc::SliceProgress> slices,
                            bool done, const Status& error, const fabric::ExecutorReport* end,
                            rpc::FragmentFailure::type failure) {
  rpc::ProgressReport r;
  if (done && end != nullptr) {
    r.__set_corrupt_slices(static_cast<int32_t>(end->corrupt));
    // This end's view of each link, for the coordinator to find a straggler.
    const auto samples = [](const std::vector<fabric::LinkUse>& uses) {
      std::vector<rpc::LinkSample> list;
      for (const auto& u : uses) {
        rpc::LinkSample l;
        l.peer = u.peer;
        l.bytes = static_cast<int64_t>(u.bytes);
        l.busy_s = u.busy_seconds;
        list.push_back(std::move(l));
      }
      return list;
    };
    if (!end->sent_to.empty()) r.__set_sent_to(samples(end->sent_to));
    if (!end->received_from.empty()) r.__set_received_from(samples(end->received_from));
  }
  r.__set_started_unix(started_unix);
  r.operation_id = operation;
  r.slices = std::move(slices);
  r.done = done;
  if (!error.ok()) {
    r.__set_error(error.message());
    r.__set_failure(failure);
  }
  link_.Report(std::move(r));
}

}  // namespace modelcast::agent
