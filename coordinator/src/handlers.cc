// The coordinator's Thrift services: every call checks the caller first, turns the request into
// the coordinator's own types (wire.h) and a call on ClusterState, and its answer into the IDL's
// (a failed Status into the IDL's typed exception).
#include <thrift/processor/TMultiplexedProcessor.h>

#include <glog/logging.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>

#include "Coordinator.h"
#include "Membership.h"
#include "Router.h"
#include "cluster_state.h"
#include "election.h"
#include "modelcast/coordinator/daemon.h"
#include "modelcast/coordinator/serving.h"
#include "modelcast/rpc/errors.h"
#include "wire.h"

namespace modelcast::coordinator {
namespace {

using rpc::ThrowStatus;
void Check(const Status& st) { rpc::ThrowIfError(st); }

// Checks the caller's credentials, counting a refusal.
void Authorize(ClusterState* state, const rpc::SecurityConfig& security, const rpc::RequestHeader& header,
               const char* method) {
  Status st = rpc::CheckCaller(security, header, method);
  if (!st.ok()) {
    state->CountRefusal();
    ThrowStatus(st);
  }
}

class CoordinatorHandler : public rpc::CoordinatorIf {
 public:
  CoordinatorHandler(ClusterState* state, const rpc::SecurityConfig& security) : state_(state), security_(security) {}

  void registerModel(rpc::ModelInfo& out, const rpc::RegisterModelRequest& req) override {
    Authorize(state_, security_, req.header, "registerModel");
    auto info = state_->RegisterModel(
        req.name, req.manifest_json, req.__isset.keep_alive_s ? std::optional<double>(req.keep_alive_s) : std::nullopt,
        ClusterState::TextFiles(req.text_files.begin(), req.text_files.end()));
    Check(info.status());
    out = ToWire(*info);
  }
  void listModels(std::vector<rpc::ModelInfo>& out, const rpc::RequestHeader& header) override {
    Authorize(state_, security_, header, "listModels");
    out.clear();
    for (const auto& m : state_->ListModels()) out.push_back(ToWire(m));
  }
  void scaleOut(rpc::ScaleOutResponse& out, const rpc::ScaleOutRequest& req) override {
    Authorize(state_, security_, req.header, "scaleOut");
    auto resp = state_->ScaleOut(FromWire(req));
    Check(resp.status());
    out = ToWire(*resp);
  }
  void scaleIn(std::string& out, const rpc::ScaleInRequest& req) override {
    Authorize(state_, security_, req.header, "scaleIn");
    auto id = state_->ScaleIn(FromWire(req));
    Check(id.status());
    out = std::move(*id);
  }
  void getOperation(rpc::OperationStatus& out, const rpc::RequestHeader& header, const std::string& id) override {
    Authorize(state_, security_, header, "getOperation");
    auto op = state_->GetOperation(id);
    Check(op.status());
    out = ToWire(*op);
  }
  void getClusterStatus(rpc::ClusterStatus& out, const rpc::RequestHeader& header) override {
    Authorize(state_, security_, header, "getClusterStatus");
    out = ToWire(state_->GetStatus());
  }
  void listInstances(std::vector<rpc::Instance>& out, const rpc::RequestHeader& header,
                     const std::string& model) override {
    Authorize(state_, security_, header, "listInstances");
    auto list = state_->ListInstances(model);
    Check(list.status());
    out.clear();
    for (const auto& i : *list) out.push_back(ToWire(i));
  }

 private:
  ClusterState* state_;
  rpc::SecurityConfig security_;
};

class MembershipHandler : public rpc::MembershipIf {
 public:
  MembershipHandler(ClusterState* state, const rpc::SecurityConfig& security, const CoordinatorConfig& config)
      : state_(state), security_(security), config_(config) {}

  void join(rpc::JoinResponse& out, const rpc::JoinRequest& req) override {
    Authorize(state_, security_, req.header, "join");
    Check(state_->Join(FromWire(req)));
    out.cluster = state_->cluster_name();
    out.epoch = state_->epoch();
    out.heartbeat_interval_ms = static_cast<int32_t>(config_.heartbeat_interval * 1000);
    out.heartbeat_deadline_ms = static_cast<int32_t>(config_.heartbeat_deadline * 1000);
  }
  void heartbeat(rpc::HeartbeatResponse& out, const rpc::HeartbeatRequest& req) override {
    Authorize(state_, security_, req.header, "heartbeat");
    auto known = state_->Heartbeat(FromWire(req));
    Check(known.status());
    out.rejoin = !*known;
  }
  void reportProgress(const rpc::ProgressReport& report) override {
    Authorize(state_, security_, report.header, "reportProgress");
    Check(state_->Progress(FromWire(report)));
  }

 private:
  ClusterState* state_;
  rpc::SecurityConfig security_;
  CoordinatorConfig config_;
};

}  // namespace

std::shared_ptr<rpc::RouterIf> MakeRouterHandler(ServingPlane* plane);  // api.cc

Result<std::unique_ptr<CoordinatorDaemon>> CoordinatorDaemon::Start(const ClusterConfig& cluster,
                                                                    const CoordinatorConfig& config,
                                                                    const std::function<bool()>& stop_requested) {
  auto d = std::make_unique<CoordinatorDaemon>();
  EtcdFence fence;
  ServingConfig serving = config.serving;
  if (!config.etcd_endpoints.empty()) {
    // Every coordinator of a replicated head routes through the same agents: each under a name
    // of its own, which the stages send its results back to.
    char name[32];
    std::snprintf(name, sizeof name, "router-%08x", std::random_device{}());
    serving.fabric.name = name;
  }
  if (!config.etcd_endpoints.empty()) {
    // Coordinators that share the state elect one to lead; the others stand by until it goes.
    MC_ASSIGN_OR_RETURN(std::shared_ptr<EtcdClient> etcd, EtcdClient::Create(config.etcd_endpoints, config.etcd_timeout));
    MC_RETURN_IF_ERROR(etcd->Version().status());
    LeaderElection::Options o;
    o.key = config.etcd_prefix + "/leader";
    o.value = config.address + ":" + std::to_string(config.port);
    o.ttl_s = config.etcd_lease;
    o.on_change = [raw = d.get(), led_once = std::make_shared<bool>(false)](bool led, int64_t) {
      if (led) {
        *led_once = true;
        return;
      }
      if (!*led_once || raw->resigning_) return;
      // Its lease is gone: another coordinator may lead already. It must act no more, and the
      // surest way is to stop; whoever supervises it starts it again, as a standby.
      LOG(ERROR) << "coordinator: lost the leadership (its etcd lease); exiting so that it acts no more";
      google::FlushLogFiles(google::GLOG_INFO);
      std::_Exit(75);
    };
    MC_ASSIGN_OR_RETURN(d->election_, LeaderElection::Start(etcd, o));
    LOG(INFO) << "coordinator: standing by for the leadership of '" << config.etcd_prefix << "/'";
    // Standing by, it serves requests through the leader's engines (their routes in etcd); its
    // plane leads, unchanged, once it does.
    if (config.serving.enabled && !d->election_->leading()) {
      MC_ASSIGN_OR_RETURN(d->serving_, ServingPlane::Follow(serving, config.security, {etcd, config.etcd_prefix}));
    }
    while (!d->election_->leading()) {
      if (stop_requested && stop_requested()) {
        d->resigning_ = true;
        return Cancelled("coordinator: stopped while standing by");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the election's thread decides
    }
    fence = {o.key, d->election_->fence_revision()};
    d->etcd_ = etcd;
  }
  MC_ASSIGN_OR_RETURN(d->state_, ClusterState::Open(cluster, config, fence));
  auto mux = std::make_shared<apache::thrift::TMultiplexedProcessor>();
  mux->registerProcessor(kCoordinatorService,
                         std::make_shared<rpc::CoordinatorProcessor>(
                             std::make_shared<CoordinatorHandler>(d->state_.get(), config.security)));
  mux->registerProcessor(kMembershipService,
                         std::make_shared<rpc::MembershipProcessor>(
                             std::make_shared<MembershipHandler>(d->state_.get(), config.security, config)));
  if (config.serving.enabled) {
    if (d->serving_) {
      MC_RETURN_IF_ERROR(d->serving_->Lead(d->state_.get(), fence));
    } else {
      ServingShare share;
      if (d->etcd_) share = {d->etcd_, config.etcd_prefix};
      MC_ASSIGN_OR_RETURN(d->serving_, ServingPlane::Start(serving, config.security, d->state_.get(), share, &fence));
    }
    mux->registerProcessor(kRouterService, std::make_shared<rpc::RouterProcessor>(MakeRouterHandler(d->serving_.get())));
  }
  MC_ASSIGN_OR_RETURN(d->server_, rpc::RpcServer::Start(mux, config.address, config.port, config.security));
  LOG(INFO) << "coordinator for cluster '" << cluster.name << "' listening on " << config.address << ":" << d->port();
  if (config.metrics.enabled) {
    MC_ASSIGN_OR_RETURN(d->metrics_,
                        rpc::MetricsServer::Start(config.metrics.address, config.metrics.port,
                                                  [state = d->state_.get()] { return state->RenderMetrics(); }));
  }
  d->watchdog_ = std::thread([self = d.get(), interval = config.heartbeat_interval] {
    std::unique_lock lock(self->mu_);
    while (!self->cv_.wait_for(lock, std::chrono::duration<double>(interval), [&] { return self->stopping_; })) {
      lock.unlock();
      self->state_->CheckLiveness();
      lock.lock();
    }
  });
  return d;
}

CoordinatorDaemon::~CoordinatorDaemon() {
  resigning_ = true;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  server_.reset();
  serving_.reset();
}

}  // namespace modelcast::coordinator
