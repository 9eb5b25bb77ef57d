#include "modelcast/agent/agent.h"

#include <glog/logging.h>

#include <chrono>
#include <set>

#include "Agent.h"
#include "coordinator_link.h"
#include "fragments.h"
#include "modelcast/fabric/channel_mux.h"
#include "modelcast/fabric/fault_transport.h"
#include "modelcast/fabric/transport_factory.h"
#include "modelcast/rpc/errors.h"
#include "modelcast/rpc/fragment_wire.h"
#include "serving.h"

namespace modelcast::agent {

using namespace std::chrono_literals;

struct AgentDaemon::Impl {
  AgentConfig config;
  tiers::Store* store = nullptr;
  std::unique_ptr<fabric::Transport> transport;
  std::unique_ptr<fabric::ChannelMux> mux;  // one channel per running operation
  // Serving has a transport of its own: activations must not queue behind a scale-out's
  // slices in the same connection.
  std::unique_ptr<fabric::Transport> serving_transport;
  std::unique_ptr<ServingHost> serving;
  std::unique_ptr<CoordinatorLink> link;
  std::unique_ptr<FragmentRunner> fragments;
  int rpc_port = 0;

  rpc::NodeInventory Inventory() const { return ToRpcInventory(store->GetInventory()); }
};

namespace {

using rpc::ThrowStatus;
void Check(const Status& st) { rpc::ThrowIfError(st); }

// The Agent service: each call checks its caller and its input, then hands the work to the
// part of the agent that does it (the fragment runner, the store, the serving host).
class AgentHandler : public rpc::AgentIf {
 public:
  explicit AgentHandler(std::shared_ptr<AgentDaemon::Impl> impl) : impl_(std::move(impl)) {}

  void runFragment(const rpc::RunFragmentRequest& req) override {
    Check(rpc::CheckCaller(impl_->config.security, req.header, "runFragment"));
    auto parsed = model::Manifest::Parse(req.manifest_json, "runFragment: model '" + req.model + "' manifest");
    Check(parsed.status());
    if (parsed->name != req.model)
      ThrowStatus(InvalidArgument("runFragment: the manifest is not of model '" + req.model + "'"));
    if (!(req.deadline_s > 0)) ThrowStatus(InvalidArgument("runFragment: deadline_s must be positive"));
    if (req.channel < 1 || req.channel > 255) {
      ThrowStatus(InvalidArgument("runFragment: channel " + std::to_string(req.channel) + " is not between 1 and 255"));
    }
    auto fragment = rpc::FromWire(req, impl_->config.node, static_cast<uint32_t>(parsed->slices.size()));
    Check(fragment.status());
    Check(Readable(req.model, *fragment));
    Check(impl_->store->AddModel(*parsed));
    if (req.__isset.text_files) {  // checked against the manifest; written with the SSD copy
      Check(impl_->store->PutTextFiles(req.model, {req.text_files.begin(), req.text_files.end()})
                .WithContext("runFragment: model '" + req.model + "'"));
    }
    Check(impl_->fragments->Start(req, std::move(*fragment), impl_->store->FindModel(req.model)));
  }
  void cancelOperation(const rpc::RequestHeader& header, const std::string& id) override {
    Check(rpc::CheckCaller(impl_->config.security, header, "cancelOperation"));
    Check(impl_->fragments->Cancel(id, header.__isset.caller ? header.caller : std::string("?"), 5s));
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
    out.running_operations = impl_->fragments->Running();
  }

 private:
  // A fragment reads only what this node holds: every slice it sends or loads locally is in
  // one of its tiers, or arrives in this same fragment (FailedPrecondition: the coordinator
  // planned on holdings that have changed since, and plans again).
  Status Readable(const std::string& model, const fabric::PlanFragment& fragment) const {
    std::set<uint32_t> held, arriving;
    for (const auto& r : fragment.receives) arriving.insert(r.slice);
    const auto inventory = impl_->store->GetInventory();
    if (const auto* h = inventory.Find(model)) {
      for (const auto& tier : h->slices) held.insert(tier.begin(), tier.end());
    }
    for (const auto& s : fragment.sends) {
      if (!held.count(s.slice) && !arriving.count(s.slice)) {
        return FailedPrecondition("runFragment: would send slice " + std::to_string(s.slice) + " of model '" + model +
                                  "' to '" + s.peer + "', which this node neither holds nor receives");
      }
    }
    for (uint32_t s : fragment.local_loads) {
      if (!held.count(s)) {
        return FailedPrecondition("runFragment: would load slice " + std::to_string(s) + " of model '" + model +
                                  "' locally, which this node does not hold");
      }
    }
    return Status::Ok();
  }

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
  MC_ASSIGN_OR_RETURN(impl.mux, fabric::ChannelMux::Create(*impl.transport, config.fabric.thread));
  fabric::UcxOptions serving_options = config.fabric;
  serving_options.listen_address = config.serving_listen;
  serving_options.thread = {};  // serving's own transport is not the fabric's to slow down
  MC_ASSIGN_OR_RETURN(impl.serving_transport, fabric::MakeUcxTransport(serving_options));
  MC_RETURN_IF_ERROR(impl.serving_transport->Start());
  MC_ASSIGN_OR_RETURN(impl.serving, ServingHost::Create(*d->store_, *impl.serving_transport, config.node));
  impl.link = std::make_unique<CoordinatorLink>(impl.config, [i = d->impl_.get()] { return i->Inventory(); });
  impl.fragments = std::make_unique<FragmentRunner>(impl.config, *impl.store, *impl.transport, *impl.mux, *impl.link);
  // Pipelines of a coordinator that no longer leads end with it: joined to a later one, their
  // stages stop. Stages waiting for their blocks look again whenever a slice lands.
  impl.link->SetJoinedHook([serving = impl.serving.get()](int64_t epoch) { serving->Joined(epoch); });
  impl.fragments->SetLandedHook([serving = impl.serving.get()](const std::string& model) { serving->Landed(model); });
  MC_ASSIGN_OR_RETURN(
      d->server_, rpc::RpcServer::Start(std::make_shared<rpc::AgentProcessor>(std::make_shared<AgentHandler>(d->impl_)),
                                        config.address, config.port, config.security));
  impl.rpc_port = d->server_->port();
  if (config.metrics.enabled) {
    MC_ASSIGN_OR_RETURN(d->metrics_, rpc::MetricsServer::Start(config.metrics.address, config.metrics.port,
                                                               [self = d.get()] { return self->RenderMetrics(); }));
  }
  rpc::JoinRequest identity;
  identity.rpc_address = config.address + ":" + std::to_string(impl.rpc_port);
  identity.fabric_address = impl.transport->address();
  identity.__set_serving_address(impl.serving_transport->address());
  identity.version = "modelcast agent";
  impl.link->Start(std::move(identity));
  LOG(INFO) << "agent " << config.node << ": serving on " << config.address << ":" << impl.rpc_port << ", fabric at "
            << impl.transport->address();
  return d;
}

std::string AgentDaemon::fabric_address() const { return impl_->transport->address(); }
std::string AgentDaemon::serving_address() const { return impl_->serving_transport->address(); }

std::string AgentDaemon::RenderMetrics() const {
  rpc::MetricsText m;
  const auto& counters = impl_->fragments->counters();
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
            static_cast<double>(counters.corrupt_in.load()), "from=\"fabric\"");
  m.Counter("modelcast_fallbacks_total", "Slower paths taken (logged once each)", static_cast<double>(c.uring_refused),
            "kind=\"io_uring_refused\"");
  m.Counter("modelcast_fallbacks_total", "Slower paths taken (logged once each)", static_cast<double>(c.direct_refused),
            "kind=\"o_direct_refused\"");
  m.Counter("modelcast_fragments_total", "Plan fragments run", static_cast<double>(counters.ok.load()),
            "result=\"ok\"");
  m.Counter("modelcast_fragments_total", "Plan fragments run", static_cast<double>(counters.failed.load()),
            "result=\"failed\"");
  m.Gauge("modelcast_fabric_registered_regions", "Memory registrations the fabric holds now",
          static_cast<double>(impl_->transport->stats().regions + impl_->serving_transport->stats().regions));
  m.Counter("modelcast_fabric_slices_total", "Slices moved by the fabric", static_cast<double>(counters.slices_in.load()),
            "direction=\"in\"");
  m.Counter("modelcast_fabric_slices_total", "Slices moved by the fabric",
            static_cast<double>(counters.slices_out.load()), "direction=\"out\"");
  m.Counter("modelcast_fabric_bytes_total", "Bytes moved by the fabric", static_cast<double>(counters.bytes_in.load()),
            "direction=\"in\"");
  m.Counter("modelcast_fabric_bytes_total", "Bytes moved by the fabric", static_cast<double>(counters.bytes_out.load()),
            "direction=\"out\"");
  return m.text();
}

AgentDaemon::~AgentDaemon() {
  if (impl_ && impl_->fragments) {
    // Fragments first (cancelled, joined, their ends reported), while the link still reports.
    impl_->fragments->Stop();
  }
  if (impl_ && impl_->link) impl_->link->Stop();
  server_.reset();
  metrics_.reset();
  if (impl_) {
    impl_->fragments.reset();
    impl_->link.reset();
    impl_->serving.reset();
    impl_->serving_transport.reset();
    impl_->mux.reset();
    impl_->transport.reset();
  }
}

}  // namespace modelcast::agent
