#include "modelcast/agent/agent.h"

#include <thrift/protocol/TMultiplexedProtocol.h>

#include <chrono>
#include <deque>
#include <set>

#include <glog/logging.h>

#include "Agent.h"
#include "Membership.h"
#include "modelcast/common/checksum.h"
#include "modelcast/fabric/channel_mux.h"
#include "modelcast/fabric/executor.h"
#include "modelcast/fabric/fault_transport.h"
#include "modelcast/fabric/verbs_transport.h"
#include "modelcast/rpc/errors.h"
#include "serving.h"

namespace modelcast::agent {
namespace {

using namespace std::chrono_literals;

std::vector<rpc::SliceRun> Runs(const std::vector<uint32_t>& sorted) {
  std::vector<rpc::SliceRun> runs;
  for (uint32_t s : sorted) {
    if (!runs.empty() && static_cast<uint32_t>(runs.back().first + runs.back().count) == s) {
      runs.back().count++;
    } else {
      rpc::SliceRun r;
      r.first = static_cast<int32_t>(s);
      r.count = 1;
      runs.push_back(r);
    }
  }
  return runs;
}

using rpc::ThrowStatus;
void Check(const Status& st) { rpc::ThrowIfError(st); }

}  // namespace

rpc::NodeInventory ToRpcInventory(const tiers::Inventory& inv) {
  rpc::NodeInventory out;
  for (const auto& t : inv.tiers) {
    rpc::TierUsage u;
    u.tier = std::string(TierName(t.tier));
    u.capacity = static_cast<int64_t>(t.capacity);
    u.used = static_cast<int64_t>(t.used);
    u.pinned = static_cast<int64_t>(t.pinned);
    out.tiers.push_back(u);
  }
  for (const auto& m : inv.models) {
    rpc::ModelHolding h;
    h.model = m.model;
    h.ssd = Runs(m.slices[int(Tier::kSsd)]);
    h.host = Runs(m.slices[int(Tier::kHost)]);
    h.gpu = Runs(m.slices[int(Tier::kGpu)]);
    h.ssd_complete = m.ssd_complete;
    if (!m.ssd_error.empty()) h.__set_ssd_error(m.ssd_error);
    out.models.push_back(std::move(h));
  }
  return out;
}

Result<AgentConfig> AgentConfig::FromConfig(const ConfigNode& root) {
  MC_RETURN_IF_ERROR(
      root.CheckKeys({"node", "address", "port", "coordinator", "fabric", "store", "security", "metrics"}));
  AgentConfig c;
  MC_ASSIGN_OR_RETURN(c.node, root.GetString("node"));
  MC_ASSIGN_OR_RETURN(c.address, root.GetString("address", c.address));
  MC_ASSIGN_OR_RETURN(int64_t port, root.GetInt("port", 0));
  if (port < 0 || port > 65535) return root.Child("port")->Error("must be between 0 and 65535");
  c.port = static_cast<int>(port);
  MC_ASSIGN_OR_RETURN(ConfigNode coord, root.Child("coordinator"));
  MC_RETURN_IF_ERROR(coord.CheckKeys({"address", "port"}));
  MC_ASSIGN_OR_RETURN(c.coordinator_address, coord.GetString("address"));
  MC_ASSIGN_OR_RETURN(int64_t cport, coord.GetInt("port"));
  if (cport < 1 || cport > 65535) return coord.Child("port")->Error("must be between 1 and 65535");
  c.coordinator_port = static_cast<int>(cport);
  c.fabric.name = c.node;
  if (auto f = root.OptionalChild("fabric")) {
    MC_RETURN_IF_ERROR(f->CheckKeys({"listen", "serving_listen", "transport", "tls", "net_devices", "fault"}));
    MC_ASSIGN_OR_RETURN(c.fault, f->GetString("fault", ""));
    if (!c.fault.empty()) {
      auto parsed = fabric::FaultOptions::Parse(c.fault);
      if (!parsed.ok()) return f->Child("fault")->Error(parsed.status().message());
    }
    MC_ASSIGN_OR_RETURN(c.fabric.listen_address, f->GetString("listen", c.fabric.listen_address));
    MC_ASSIGN_OR_RETURN(c.transport, f->GetString("transport", c.transport));
    MC_ASSIGN_OR_RETURN(c.fabric.tls, f->GetString("tls", ""));
    MC_ASSIGN_OR_RETURN(c.fabric.net_devices, f->GetString("net_devices", ""));
    MC_ASSIGN_OR_RETURN(c.serving_listen, f->GetString("serving_listen", ""));
  }
  if (c.serving_listen.empty()) {
    c.serving_listen = c.fabric.listen_address.substr(0, c.fabric.listen_address.rfind(':')) + ":0";
  }
  MC_ASSIGN_OR_RETURN(ConfigNode store, root.Child("store"));
  MC_ASSIGN_OR_RETURN(c.store, tiers::StoreOptions::FromConfig(store));
  MC_ASSIGN_OR_RETURN(ConfigNode sec, root.Child("security"));
  MC_ASSIGN_OR_RETURN(c.security, rpc::SecurityConfig::FromConfig(sec));
  if (auto m = root.OptionalChild("metrics")) {
    MC_ASSIGN_OR_RETURN(c.metrics, rpc::MetricsConfig::FromConfig(*m));
  }
  return c;
}

struct AgentDaemon::Impl {
  AgentConfig config;
  tiers::Store* store = nullptr;
  std::unique_ptr<fabric::Transport> transport;
  std::unique_ptr<fabric::ChannelMux> mux;  // one channel per running operation
  // Serving has a transport of its own: activations must not queue behind a scale-out's
  // slices in the same connection.
  std::unique_ptr<fabric::Transport> serving_transport;
  std::unique_ptr<ServingHost> serving;

  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  int64_t epoch = 0;
  int heartbeat_ms = 1000;
  std::map<std::string, std::thread> fragments;
  // Fragments cancelled before they arrived (a replan overtook their dispatch): refused if they
  // come after all. The newest kRememberCancelled ids.
  std::set<std::string> cancelled_early;
  std::deque<std::string> cancelled_order;
  static constexpr size_t kRememberCancelled = 1024;
  std::map<std::string, std::shared_ptr<std::atomic<bool>>> running;  // operation -> its cancel flag
  std::thread membership;

  // One connection to the coordinator's Membership service, shared under a lock.
  std::mutex conn_mu;
  std::unique_ptr<rpc::RpcConnection> conn;
  std::unique_ptr<rpc::MembershipClient> client;

  rpc::RequestHeader Header() const { return rpc::MakeHeader(config.security, config.node); }

  // Runs `call` on the coordinator's Membership client, reconnecting once when the connection broke.
  Status WithCoordinator(const std::function<void(rpc::MembershipClient&)>& call) {
    std::lock_guard lock(conn_mu);
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (!client) {
        auto c = rpc::Connect(config.coordinator_address, config.coordinator_port, config.security, 5000);
        if (!c.ok()) return c.status();
        conn = std::move(*c);
        client = std::make_unique<rpc::MembershipClient>(
            std::make_shared<apache::thrift::protocol::TMultiplexedProtocol>(conn->protocol, "Membership"));
      }
      Status st = rpc::CallStatus([&] { call(*client); });
      if (st.code() != StatusCode::kUnavailable) return st;
      // The connection broke (or the coordinator is busy): reconnect and try once more.
      client.reset();
      conn.reset();
      if (attempt == 1) return st.WithContext("coordinator");
    }
    return Unavailable("coordinator unreachable");
  }

  rpc::NodeInventory Inventory() const { return ToRpcInventory(store->GetInventory()); }

  Status Join() {
    rpc::JoinRequest req;
    req.header = Header();
    req.node = config.node;
    req.rpc_address = config.address + ":" + std::to_string(rpc_port);
    req.fabric_address = transport->address();
    req.__set_serving_address(serving_transport->address());
    req.inventory = Inventory();
    req.version = "modelcast agent";
    rpc::JoinResponse resp;
    MC_RETURN_IF_ERROR(WithCoordinator([&](rpc::MembershipClient& c) { c.join(resp, req); }));
    std::lock_guard lock(mu);
    epoch = resp.epoch;
    heartbeat_ms = std::max(10, resp.heartbeat_interval_ms);
    LOG(INFO) << "agent " << config.node << ": joined cluster '" << resp.cluster << "' (epoch " << resp.epoch << ")";
    return Status::Ok();
  }

  void MembershipLoop() {
    bool joined = false;
    std::unique_lock lock(mu);
    while (!stopping) {
      lock.unlock();
      Status st;
      if (!joined) {
        st = Join();
        joined = st.ok();
        if (!st.ok()) {
          LOG_EVERY_N(WARNING, 20) << "agent " << config.node << ": cannot join: " << st.message();
        }
      } else {
        rpc::HeartbeatRequest req;
        req.header = Header();
        req.node = config.node;
        {
          std::lock_guard l(mu);
          req.epoch = epoch;
        }
        req.__set_inventory(Inventory());
        rpc::HeartbeatResponse resp;
        st = WithCoordinator([&](rpc::MembershipClient& c) { c.heartbeat(resp, req); });
        if (!st.ok() || resp.rejoin) joined = false;
      }
      lock.lock();
      cv.wait_for(lock, std::chrono::milliseconds(joined ? heartbeat_ms : 200), [&] { return stopping; });
    }
  }

  void Report(const std::string& operation, double started_unix, std::vector<rpc::SliceProgress> slices, bool done,
              const Status& error, const fabric::ExecutorReport* end = nullptr,
              rpc::FragmentFailure::type failure = rpc::FragmentFailure::OTHER) {
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
    r.header = Header();
    r.node = config.node;
    r.operation_id = operation;
    r.slices = std::move(slices);
    r.done = done;
    if (!error.ok()) {
      r.__set_error(error.message());
      r.__set_failure(failure);
    }
    Status st = WithCoordinator([&](rpc::MembershipClient& c) { c.reportProgress(r); });
    if (!st.ok()) LOG(WARNING) << "agent " << config.node << ": progress of " << operation << ": " << st.message();
  }

  // Runs one fragment; `failure` says whether this node's own store refused (a full host pool,
  // an unreadable SSD, a slice it could not record), which the coordinator repairs as a lost node.
  Status RunFragment(const rpc::RunFragmentRequest& req, std::shared_ptr<const model::Manifest> manifest,
                     const std::atomic<bool>& cancel, std::chrono::steady_clock::time_point fragment_start,
                     std::mutex& pending_mu, std::vector<rpc::SliceProgress>& pending, fabric::ExecutorReport& outcome,
                     rpc::FragmentFailure::type& failure);

  int rpc_port = 0;
  std::atomic<uint64_t> fragments_ok{0}, fragments_failed{0}, slices_in{0}, bytes_in{0}, slices_out{0}, bytes_out{0},
      slices_corrupt_in{0};
};

Status AgentDaemon::Impl::RunFragment(const rpc::RunFragmentRequest& req, std::shared_ptr<const model::Manifest> m,
                                      const std::atomic<bool>& cancel,
                                      std::chrono::steady_clock::time_point fragment_start, std::mutex& pending_mu,
                                      std::vector<rpc::SliceProgress>& pending, fabric::ExecutorReport& outcome,
                                      rpc::FragmentFailure::type& failure) {
  const auto& model = req.model;
  const auto refused = [&](Status st) {
    failure = rpc::FragmentFailure::STORE;
    return st.WithContext("node '" + config.node + "': its store");
  };
  const auto deadline = std::chrono::milliseconds(static_cast<int64_t>(req.deadline_s * 1000));
  std::set<uint32_t> received;
  for (const auto& r : req.receives) received.insert(static_cast<uint32_t>(r.slice));
  // Blocks this node supplies itself (to send, or loaded locally) come up to host memory first,
  // unless host memory holds those slices already (a target that received them in an earlier
  // attempt of the operation forwards them from there).
  std::vector<bool> on_host(m->slices.size(), false);
  {
    const auto inventory = store->GetInventory();
    if (const auto* h = inventory.Find(model)) {
      for (uint32_t s : h->slices[int(Tier::kHost)]) on_host[s] = true;
    }
  }
  std::set<uint32_t> own_blocks;
  for (const auto& s : req.sends) {
    const auto slice = static_cast<uint32_t>(s.slice);
    if (!received.count(slice) && !on_host[slice]) own_blocks.insert(m->slices[slice].block);
  }
  for (int32_t s : req.local_loads) own_blocks.insert(m->slices[s].block);
  if (!own_blocks.empty()) {
    const auto t0 = std::chrono::steady_clock::now();
    auto up = store->Promote(model, {own_blocks.begin(), own_blocks.end()}, Tier::kHost);
    if (!up.ok()) return refused(up.status());
    Status loaded = (*up)->Wait(deadline);
    if (!loaded.ok()) return refused(loaded.WithContext("loading model '" + model + "' from this node's tiers"));
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::lock_guard lock(pending_mu);
    for (int32_t s : req.local_loads) {
      rpc::SliceProgress p;
      p.slice = s;
      p.source = "local";
      p.bytes = static_cast<int64_t>(m->slices[s].length);
      p.started = 0;
      p.finished = secs;
      pending.push_back(p);
    }
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
  for (const auto& b : m->blocks) {
    auto lease = store->Acquire(model, b.index, Tier::kHost);
    if (!lease.ok()) lease = store->ReserveForReceive(model, b.index);
    if (!lease.ok()) return refused(lease.status().WithContext("a host buffer for block " + std::to_string(b.index)));
    offsets.push_back(lease->pool_offset());
    pinned->leases.push_back(std::move(*lease));
  }
  std::vector<bool> held(m->slices.size(), false);
  const auto inventory = store->GetInventory();
  if (const auto* h = inventory.Find(model)) {
    for (uint32_t s : h->slices[int(Tier::kHost)]) held[s] = !received.count(s);
  }
  fabric::PlanFragment fragment;
  fragment.node = config.node;
  for (const auto& s : req.sends) fragment.sends.push_back({uint32_t(s.tick), s.peer, uint32_t(s.slice)});
  for (const auto& r : req.receives) fragment.receives.push_back({uint32_t(r.tick), r.peer, uint32_t(r.slice)});
  std::map<std::string, std::string> addresses;
  for (const auto& p : req.peers) addresses[p.node] = p.fabric_address;
  MC_ASSIGN_OR_RETURN(auto channel, mux->Open(req.channel));
  for (const auto& peer : fragment.Peers()) {
    if (cancel) return Cancelled("operation " + req.operation_id + " was cancelled");
    auto it = addresses.find(peer);
    if (it == addresses.end()) return InvalidArgument("runFragment: no fabric address for peer '" + peer + "'");
    MC_RETURN_IF_ERROR(fabric::ConnectWithRetry(*transport, peer, it->second, std::min(req.deadline_s, 30.0)));
  }
  const auto layout = fabric::ModelLayout::FromManifest(*m, offsets, store->host_pool_size());
  MC_RETURN_IF_ERROR(fragment.Validate(layout));
  // SliceProgress times count from the fragment's start; the executor's from its own.
  const double offset = std::chrono::duration<double>(std::chrono::steady_clock::now() - fragment_start).count();
  fabric::ExecutorOptions opts;
  MC_ASSIGN_OR_RETURN(opts.method, fabric::ParseSliceMethod(req.method.empty() ? "auto" : req.method));
  // Writes (where the transport tells a write's arrival, or the operation asks for them) go
  // into this operation's blocks alone: each block this node sends from or receives into is
  // registered for this run and deregistered when it ends, and a receiver offers its senders
  // those regions and nothing else of its memory.
  if (opts.method == fabric::SliceMethod::kWrites ||
      (opts.method == fabric::SliceMethod::kAuto && transport->capabilities().write_notify)) {
    std::set<uint32_t> used;
    for (const auto& s : fragment.sends) used.insert(m->slices[s.slice].block);
    for (const auto& r : fragment.receives) used.insert(m->slices[r.slice].block);
    opts.block_regions.assign(m->blocks.size(), nullptr);
    for (uint32_t b : used) {
      MC_ASSIGN_OR_RETURN(auto r, transport->Register(store->host_pool_base() + offsets[b], m->blocks[b].file_bytes,
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
  opts.on_slice = [&](const SliceEvent& e) {
    Status st = store->Landed(e.model, e.slice);
    if (!st.ok()) {
      landing_refused = true;
      return st;
    }
    rpc::SliceProgress p;
    p.slice = static_cast<int32_t>(e.slice);
    p.source = e.source;
    p.bytes = static_cast<int64_t>(e.bytes);
    p.started = e.started + offset;
    p.finished = e.finished + offset;
    std::lock_guard lock(pending_mu);
    pending.push_back(p);
    return Status::Ok();
  };
  auto executed = fabric::ExecuteFragment(*channel, layout, store->host_pool_base(), held, fragment, opts);
  if (!executed.ok()) {
    if (landing_refused) failure = rpc::FragmentFailure::STORE;
    return executed.status();
  }
  auto& report = *executed;
  slices_in += report.slices_received;
  bytes_in += report.bytes_received;
  slices_out += report.slices_sent;
  bytes_out += report.bytes_sent;
  slices_corrupt_in += report.corrupt;
  LOG(INFO) << "agent " << config.node << ": operation " << req.operation_id << " done: " << report.slices_received
            << " slices in, " << report.slices_sent << " out, " << report.seconds << " s";
  outcome = std::move(report);
  return Status::Ok();
}

namespace {

class AgentHandler : public rpc::AgentIf {
 public:
  explicit AgentHandler(std::shared_ptr<AgentDaemon::Impl> impl) : impl_(std::move(impl)) {}

  void runFragment(const rpc::RunFragmentRequest& req) override {
    Check(rpc::CheckCaller(impl_->config.security, req.header, "runFragment"));
    auto parsed = model::Manifest::Parse(req.manifest_json, "runFragment: model '" + req.model + "' manifest");
    Check(parsed.status());
    if (parsed->name != req.model)
      ThrowStatus(InvalidArgument("runFragment: the manifest is not of model '" + req.model + "'"));
    const int32_t n = static_cast<int32_t>(parsed->slices.size());
    for (const auto* steps : {&req.sends, &req.receives}) {
      for (const auto& s : *steps) {
        if (s.slice < 0 || s.slice >= n) {
          ThrowStatus(InvalidArgument("runFragment: slice " + std::to_string(s.slice) + " is not in model '" +
                                      req.model + "' (" + std::to_string(n) + " slices)"));
        }
      }
    }
    for (int32_t s : req.local_loads) {
      if (s < 0 || s >= n)
        ThrowStatus(InvalidArgument("runFragment: local slice " + std::to_string(s) + " out of range"));
    }
    if (!(req.deadline_s > 0)) ThrowStatus(InvalidArgument("runFragment: deadline_s must be positive"));
    if (req.channel < 1 || req.channel > 255) {
      ThrowStatus(InvalidArgument("runFragment: channel " + std::to_string(req.channel) + " is not between 1 and 255"));
    }
    // A fragment reads only what this node holds: every slice it sends or loads locally is in
    // one of its tiers, or arrives in this same fragment (FailedPrecondition: the coordinator
    // planned on holdings that have changed since, and plans again).
    {
      std::set<int32_t> held, arriving;
      for (const auto& r : req.receives) arriving.insert(r.slice);
      const auto inventory = impl_->store->GetInventory();
      if (const auto* h = inventory.Find(req.model)) {
        for (const auto& tier : h->slices) held.insert(tier.begin(), tier.end());
      }
      auto readable = [&](int32_t s) { return held.count(s) || arriving.count(s); };
      for (const auto& s : req.sends) {
        if (!readable(s.slice)) {
          ThrowStatus(FailedPrecondition("runFragment: would send slice " + std::to_string(s.slice) + " of model '" +
                                      req.model + "' to '" + s.peer + "', which this node neither holds nor receives"));
        }
      }
      for (int32_t s : req.local_loads) {
        if (!held.count(s)) {
          ThrowStatus(FailedPrecondition("runFragment: would load slice " + std::to_string(s) + " of model '" +
                                      req.model + "' locally, which this node does not hold"));
        }
      }
    }
    Check(impl_->store->AddModel(*parsed));
    auto manifest = impl_->store->FindModel(req.model);
    std::lock_guard lock(impl_->mu);
    if (impl_->stopping) ThrowStatus(Unavailable("the agent is stopping"));
    if (impl_->running.count(req.operation_id)) {
      ThrowStatus(AlreadyExists("runFragment: operation '" + req.operation_id + "' is already running here"));
    }
    if (impl_->cancelled_early.count(req.operation_id)) {
      ThrowStatus(Cancelled("runFragment: operation '" + req.operation_id + "' was cancelled before it arrived"));
    }
    // Threads of fragments that have ended are joined here (each has left `running` and needs
    // the lock no more), so that finished operations hold no thread.
    for (auto it = impl_->fragments.begin(); it != impl_->fragments.end();) {
      if (impl_->running.count(it->first)) {
        ++it;
        continue;
      }
      it->second.join();
      it = impl_->fragments.erase(it);
    }
    auto cancel = std::make_shared<std::atomic<bool>>(false);
    impl_->running[req.operation_id] = cancel;
    impl_->fragments[req.operation_id] = std::thread([impl = impl_, req, manifest, cancel] {
      std::mutex pending_mu;
      std::vector<rpc::SliceProgress> pending;
      const double started_unix =
          std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
      const auto fragment_start = std::chrono::steady_clock::now();
      bool finished = false;
      std::condition_variable finished_cv;
      // Progress goes to the coordinator in batches (every 200 ms) while the fragment runs; the
      // end wakes the reporter at once.
      std::thread reporter([&] {
        std::unique_lock l(pending_mu);
        while (!finished) {
          finished_cv.wait_for(l, 200ms, [&] { return finished; });
          if (finished) break;
          std::vector<rpc::SliceProgress> batch;
          batch.swap(pending);
          l.unlock();
          if (!batch.empty()) impl->Report(req.operation_id, started_unix, std::move(batch), false, Status::Ok());
          l.lock();
        }
      });
      fabric::ExecutorReport outcome;
      rpc::FragmentFailure::type failure = rpc::FragmentFailure::OTHER;
      Status st = impl->RunFragment(req, manifest, *cancel, fragment_start, pending_mu, pending, outcome, failure);
      (st.ok() ? impl->fragments_ok : impl->fragments_failed)++;
      {
        std::lock_guard l(pending_mu);
        finished = true;
      }
      finished_cv.notify_all();
      reporter.join();
      if (!st.ok())
        LOG(WARNING) << "agent " << impl->config.node << ": operation " << req.operation_id << ": " << st.message();
      std::vector<rpc::SliceProgress> rest;
      {
        std::lock_guard l(pending_mu);
        rest.swap(pending);
      }
      impl->Report(req.operation_id, started_unix, std::move(rest), true, st, &outcome, failure);
      {
        std::lock_guard l(impl->mu);
        impl->running.erase(req.operation_id);
      }
      impl->cv.notify_all();
    });
  }
  void cancelOperation(const rpc::RequestHeader& header, const std::string& id) override {
    Check(rpc::CheckCaller(impl_->config.security, header, "cancelOperation"));
    std::unique_lock lock(impl_->mu);
    auto it = impl_->running.find(id);
    if (it == impl_->running.end()) {
      // It may still be on its way (dispatched before the replan that cancels it): it will be
      // refused when it comes.
      if (impl_->cancelled_early.insert(id).second) {
        impl_->cancelled_order.push_back(id);
        if (impl_->cancelled_order.size() > AgentDaemon::Impl::kRememberCancelled) {
          impl_->cancelled_early.erase(impl_->cancelled_order.front());
          impl_->cancelled_order.pop_front();
        }
      }
      ThrowStatus(NotFound("cancelOperation: operation '" + id + "' is not running here"));
    }
    LOG(INFO) << "agent " << impl_->config.node << ": cancelling operation " << id << " (asked by "
              << (header.__isset.caller ? header.caller : std::string("?")) << ")";
    it->second->store(true);
    // Answer once the fragment has ended and reported, so that the caller then sees what this
    // node holds for good; a fragment still loading its own copy may take longer than the bound.
    if (!impl_->cv.wait_for(lock, 5s, [&] { return !impl_->running.count(id); })) {
      ThrowStatus(Unavailable("cancelOperation: operation '" + id + "' is still stopping after 5 s"));
    }
  }
  void load(const rpc::MoveRequest& req) override { Move("load", req, true); }
  void demote(const rpc::MoveRequest& req) override { Move("demote", req, false); }
  void evict(const rpc::MoveRequest& req) override {
    Check(rpc::CheckCaller(impl_->config.security, req.header, "evict"));
    Check(impl_->store->RemoveModel(req.model));
  }
  void startServing(const rpc::ServeRequest& req) override {
    Check(rpc::CheckCaller(impl_->config.security, req.header, "startServing"));
    Check(impl_->serving->Start(req));
  }
  void stopServing(const rpc::ServeRequest& req) override {
    Check(rpc::CheckCaller(impl_->config.security, req.header, "stopServing"));
    Check(impl_->serving->Stop(req));
  }
  void getStatus(rpc::AgentStatus& out, const rpc::RequestHeader& header) override {
    Check(rpc::CheckCaller(impl_->config.security, header, "getStatus"));
    out.node = impl_->config.node;
    out.inventory = impl_->Inventory();
    out.serving = impl_->serving->List();
    std::lock_guard lock(impl_->mu);
    for (const auto& [id, cancel] : impl_->running) out.running_operations.push_back(id);
  }

 private:
  void Move(const char* method, const rpc::MoveRequest& req, bool up) {
    Check(rpc::CheckCaller(impl_->config.security, req.header, method));
    auto tier = ParseTier(req.tier);
    Check(tier.status());
    std::vector<uint32_t> blocks(req.blocks.begin(), req.blocks.end());
    auto r = up ? impl_->store->Promote(req.model, blocks, *tier) : impl_->store->Demote(req.model, blocks, *tier);
    Check(r.status());
    Check((*r)->Wait(std::chrono::minutes(10)));
  }
  std::shared_ptr<AgentDaemon::Impl> impl_;
};

}  // namespace

Result<std::unique_ptr<AgentDaemon>> AgentDaemon::Start(const AgentConfig& config) {
  std::unique_ptr<AgentDaemon> d(new AgentDaemon());
  d->impl_ = std::make_shared<Impl>();
  Impl& impl = *d->impl_;
  impl.config = config;
  MC_ASSIGN_OR_RETURN(d->store_, tiers::Store::Open(config.store));
  impl.store = d->store_.get();
  MC_ASSIGN_OR_RETURN(impl.transport, fabric::MakeTransport(config.transport, config.fabric));
  if (!config.fault.empty()) {
    MC_ASSIGN_OR_RETURN(auto faults, fabric::FaultOptions::Parse(config.fault));
    LOG(WARNING) << "agent " << config.node << ": the fabric injects faults: " << config.fault;
    impl.transport = fabric::MakeFaultTransport(std::move(impl.transport), faults);
  }
  MC_RETURN_IF_ERROR(impl.transport->Start());
  MC_ASSIGN_OR_RETURN(impl.mux, fabric::ChannelMux::Create(*impl.transport));
  fabric::UcxOptions serving_options = config.fabric;
  serving_options.listen_address = config.serving_listen;
  MC_ASSIGN_OR_RETURN(impl.serving_transport, fabric::MakeUcxTransport(serving_options));
  MC_RETURN_IF_ERROR(impl.serving_transport->Start());
  MC_ASSIGN_OR_RETURN(impl.serving, ServingHost::Create(*d->store_, *impl.serving_transport, config.node));
  MC_ASSIGN_OR_RETURN(
      d->server_, rpc::RpcServer::Start(std::make_shared<rpc::AgentProcessor>(std::make_shared<AgentHandler>(d->impl_)),
                                        config.address, config.port, config.security));
  impl.rpc_port = d->server_->port();
  if (config.metrics.enabled) {
    MC_ASSIGN_OR_RETURN(d->metrics_, rpc::MetricsServer::Start(config.metrics.address, config.metrics.port,
                                                               [self = d.get()] { return self->RenderMetrics(); }));
  }
  impl.membership = std::thread([i = d->impl_] { i->MembershipLoop(); });
  LOG(INFO) << "agent " << config.node << ": serving on " << config.address << ":" << impl.rpc_port << ", fabric at "
            << impl.transport->address();
  return d;
}

std::string AgentDaemon::fabric_address() const { return impl_->transport->address(); }
std::string AgentDaemon::serving_address() const { return impl_->serving_transport->address(); }

std::string AgentDaemon::RenderMetrics() const {
  rpc::MetricsText m;
  const auto inv = store_->GetInventory();
  for (const auto& t : inv.tiers) {
    const std::string tier = "tier=\"" + std::string(TierName(t.tier)) + "\"";
    m.Gauge("modelcast_tier_capacity_bytes", "Hard capacity of each tier of the store", static_cast<double>(t.capacity),
            tier);
  }
  for (const auto& t : inv.tiers) {
    const std::string tier = "tier=\"" + std::string(TierName(t.tier)) + "\"";
    m.Gauge("modelcast_tier_used_bytes", "Bytes in use in each tier", static_cast<double>(t.used), tier);
  }
  for (const auto& t : inv.tiers) {
    const std::string tier = "tier=\"" + std::string(TierName(t.tier)) + "\"";
    m.Gauge("modelcast_tier_pinned_bytes", "Bytes that cannot be evicted now", static_cast<double>(t.pinned), tier);
  }
  const auto c = store_->counters();
  m.Counter("modelcast_ssd_read_bytes_total", "Bytes read from SSD and verified",
            static_cast<double>(c.bytes_read_ssd));
  m.Counter("modelcast_ssd_written_bytes_total", "Bytes written behind to SSD",
            static_cast<double>(c.bytes_written_ssd));
  m.Counter("modelcast_gpu_copied_bytes_total", "Bytes copied up to the GPU", static_cast<double>(c.bytes_to_gpu));
  for (Tier t : {Tier::kHost, Tier::kGpu}) {
    m.Counter("modelcast_evictions_total", "Blocks evicted from a tier", static_cast<double>(c.evictions[int(t)]),
              "tier=\"" + std::string(TierName(t)) + "\"");
  }
  m.Counter("modelcast_corrupt_slices_total", "Slices that failed their checksum (and were read or sent again)",
            static_cast<double>(c.corrupt_slices), "from=\"ssd\"");
  m.Counter("modelcast_corrupt_slices_total", "Slices that failed their checksum (and were read or sent again)",
            static_cast<double>(impl_->slices_corrupt_in.load()), "from=\"fabric\"");
  m.Counter("modelcast_fallbacks_total", "Slower paths taken (logged once each)", static_cast<double>(c.uring_refused),
            "kind=\"io_uring_refused\"");
  m.Counter("modelcast_fallbacks_total", "Slower paths taken (logged once each)", static_cast<double>(c.direct_refused),
            "kind=\"o_direct_refused\"");
  m.Counter("modelcast_fragments_total", "Plan fragments run", static_cast<double>(impl_->fragments_ok.load()),
            "result=\"ok\"");
  m.Counter("modelcast_fragments_total", "Plan fragments run", static_cast<double>(impl_->fragments_failed.load()),
            "result=\"failed\"");
  m.Gauge("modelcast_fabric_registered_regions", "Memory registrations the fabric holds now",
          static_cast<double>(impl_->transport->stats().regions + impl_->serving_transport->stats().regions));
  m.Counter("modelcast_fabric_slices_total", "Slices moved by the fabric", static_cast<double>(impl_->slices_in.load()),
            "direction=\"in\"");
  m.Counter("modelcast_fabric_slices_total", "Slices moved by the fabric",
            static_cast<double>(impl_->slices_out.load()), "direction=\"out\"");
  m.Counter("modelcast_fabric_bytes_total", "Bytes moved by the fabric", static_cast<double>(impl_->bytes_in.load()),
            "direction=\"in\"");
  m.Counter("modelcast_fabric_bytes_total", "Bytes moved by the fabric", static_cast<double>(impl_->bytes_out.load()),
            "direction=\"out\"");
  return m.text();
}

AgentDaemon::~AgentDaemon() {
  if (impl_) {
    {
      std::lock_guard lock(impl_->mu);
      impl_->stopping = true;
      for (auto& [id, cancel] : impl_->running) cancel->store(true);
    }
    impl_->cv.notify_all();
    if (impl_->membership.joinable()) impl_->membership.join();
  }
  server_.reset();
  metrics_.reset();
  if (impl_) {
    std::map<std::string, std::thread> fragments;
    {
      std::lock_guard lock(impl_->mu);
      fragments.swap(impl_->fragments);
    }
    for (auto& [id, t] : fragments) t.join();
    impl_->serving.reset();
    impl_->serving_transport.reset();
    impl_->mux.reset();
    impl_->transport.reset();
  }
}

}  // namespace modelcast::agent
