#include "wire.h"

#include <algorithm>
#include <cctype>

namespace modelcast::coordinator {
namespace {

// The journal records the enums as numbers: ours must keep the IDL's.
static_assert(static_cast<int>(OperationKind::kScaleOut) == rpc::OperationKind::SCALE_OUT &&
              static_cast<int>(OperationKind::kScaleIn) == rpc::OperationKind::SCALE_IN);
static_assert(static_cast<int>(OperationState::kPending) == rpc::OperationState::PENDING &&
              static_cast<int>(OperationState::kRunning) == rpc::OperationState::RUNNING &&
              static_cast<int>(OperationState::kSucceeded) == rpc::OperationState::SUCCEEDED &&
              static_cast<int>(OperationState::kFailed) == rpc::OperationState::FAILED &&
              static_cast<int>(OperationState::kCancelled) == rpc::OperationState::CANCELLED);
static_assert(static_cast<int>(NodeRole::kSource) == rpc::NodeRole::SOURCE &&
              static_cast<int>(NodeRole::kTarget) == rpc::NodeRole::TARGET &&
              static_cast<int>(NodeRole::kRelease) == rpc::NodeRole::RELEASE);
static_assert(static_cast<int>(NodeState::kWaiting) == rpc::NodeState::WAITING &&
              static_cast<int>(NodeState::kReceiving) == rpc::NodeState::RECEIVING &&
              static_cast<int>(NodeState::kComplete) == rpc::NodeState::COMPLETE &&
              static_cast<int>(NodeState::kFailed) == rpc::NodeState::FAILED &&
              static_cast<int>(NodeState::kLost) == rpc::NodeState::LOST &&
              static_cast<int>(NodeState::kDraining) == rpc::NodeState::DRAINING &&
              static_cast<int>(NodeState::kReleased) == rpc::NodeState::RELEASED);
static_assert(static_cast<int>(InstanceState::kLoading) == rpc::InstanceState::LOADING &&
              static_cast<int>(InstanceState::kPipeline) == rpc::InstanceState::PIPELINE &&
              static_cast<int>(InstanceState::kLocal) == rpc::InstanceState::LOCAL &&
              static_cast<int>(InstanceState::kDraining) == rpc::InstanceState::DRAINING);

template <typename Wire, typename Ours>
typename Wire::type Cast(Ours v) {
  return static_cast<typename Wire::type>(static_cast<int>(v));
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

}  // namespace

// The IDL's names (rpc::to_string, generated from it): the only spelling of each.
std::string NameOf(OperationKind kind) { return rpc::to_string(Cast<rpc::OperationKind>(kind)); }
std::string NameOf(OperationState state) { return rpc::to_string(Cast<rpc::OperationState>(state)); }
std::string NameOf(NodeState state) { return rpc::to_string(Cast<rpc::NodeState>(state)); }
std::string InSentence(NodeState state) { return Lower(NameOf(state)); }

ScaleOutArgs FromWire(const rpc::ScaleOutRequest& req) {
  ScaleOutArgs a;
  a.model = req.model;
  a.replicas = req.replicas;
  if (req.__isset.options) {
    const auto& o = req.options;
    if (o.__isset.algorithm) a.algorithm = o.algorithm;
    if (o.__isset.deadline_s) a.deadline = o.deadline_s;
    a.dry_run = o.__isset.dry_run && o.dry_run;
    if (o.__isset.targets) a.allowed_targets = o.targets;
  }
  if (req.header.__isset.request_id) a.request_id = req.header.request_id;
  return a;
}

ScaleInArgs FromWire(const rpc::ScaleInRequest& req) {
  ScaleInArgs a;
  a.model = req.model;
  a.replicas = req.replicas;
  if (req.__isset.nodes) a.nodes = req.nodes;
  if (req.header.__isset.request_id) a.request_id = req.header.request_id;
  return a;
}

JoinArgs FromWire(const rpc::JoinRequest& req) {
  JoinArgs a;
  a.node = req.node;
  a.rpc_address = req.rpc_address;
  a.fabric_address = req.fabric_address;
  if (req.__isset.serving_address) a.serving_address = req.serving_address;
  a.inventory = req.inventory;
  return a;
}

HeartbeatArgs FromWire(const rpc::HeartbeatRequest& req) {
  HeartbeatArgs a;
  a.node = req.node;
  a.epoch = req.epoch;
  if (req.__isset.inventory) a.inventory = req.inventory;
  return a;
}

ProgressUpdate FromWire(const rpc::ProgressReport& r) {
  ProgressUpdate u;
  u.node = r.node;
  u.operation_id = r.operation_id;
  for (const auto& s : r.slices) u.slices.push_back({s.slice, s.bytes, s.started, s.finished});
  u.done = r.done;
  if (r.__isset.error) u.error = r.error;
  u.store_failure = r.__isset.failure && r.failure == rpc::FragmentFailure::STORE;
  if (r.__isset.started_unix) u.started_unix = r.started_unix;
  if (r.__isset.corrupt_slices) u.corrupt_slices = r.corrupt_slices;
  if (r.__isset.sent_to) {
    for (const auto& l : r.sent_to) u.sent_to.push_back({l.peer, l.bytes, l.busy_s});
  }
  if (r.__isset.received_from) {
    for (const auto& l : r.received_from) u.received_from.push_back({l.peer, l.bytes, l.busy_s});
  }
  return u;
}

rpc::ScaleOutResponse ToWire(const ScaleOutResult& result) {
  rpc::ScaleOutResponse r;
  r.operation_id = result.operation_id;
  r.targets = result.targets;
  r.sources = result.sources;
  if (result.plan_json) r.__set_plan_json(*result.plan_json);
  return r;
}

rpc::OperationStatus ToWire(const OperationStatus& s) {
  rpc::OperationStatus r;
  r.id = s.id;
  r.kind = Cast<rpc::OperationKind>(s.kind);
  r.model = s.model;
  r.replicas = s.replicas;
  r.state = Cast<rpc::OperationState>(s.state);
  r.created_unix = s.created_unix;
  if (s.started_unix) r.__set_started_unix(*s.started_unix);
  if (s.finished_unix) r.__set_finished_unix(*s.finished_unix);
  for (const auto& n : s.nodes) {
    rpc::NodeProgress p;
    p.node = n.node;
    p.role = Cast<rpc::NodeRole>(n.role);
    p.slices_received = n.slices_received;
    p.slices_total = n.slices_total;
    p.bytes_received = n.bytes_received;
    p.rate_bytes_per_s = n.rate_bytes_per_s;
    p.state = Cast<rpc::NodeState>(n.state);
    if (n.error) p.__set_error(*n.error);
    if (n.complete_unix) p.__set_complete_unix(*n.complete_unix);
    if (n.corrupt_slices) p.__set_corrupt_slices(*n.corrupt_slices);
    if (n.link_bytes_per_s) p.__set_link_bytes_per_s(*n.link_bytes_per_s);
    r.nodes.push_back(std::move(p));
  }
  if (s.error) r.__set_error(*s.error);
  r.replans = s.replans;
  if (s.first_pipeline_s) r.__set_first_pipeline_s(*s.first_pipeline_s);
  if (s.first_pipeline_blocks_s) r.__set_first_pipeline_blocks_s(*s.first_pipeline_blocks_s);
  if (s.first_byte_unix) r.__set_first_byte_unix(*s.first_byte_unix);
  return r;
}

rpc::Instance ToWire(const Instance& i) {
  rpc::Instance r;
  r.model = i.model;
  r.node = i.node;
  r.state = Cast<rpc::InstanceState>(i.state);
  if (i.pipeline_id) r.__set_pipeline_id(*i.pipeline_id);
  r.since_unix = i.since_unix;
  return r;
}

rpc::ModelInfo ToWire(const ModelReport& m) {
  rpc::ModelInfo info;
  const auto& man = *m.manifest;
  info.summary.name = m.name;
  info.summary.dtype = std::string(DTypeShortName(man.dtype));
  info.summary.num_layers = man.config.num_hidden_layers;
  info.summary.num_blocks = static_cast<int32_t>(man.blocks.size());
  info.summary.num_slices = static_cast<int32_t>(man.slices.size());
  info.summary.slice_bytes = static_cast<int64_t>(man.slice_bytes);
  info.summary.total_bytes = static_cast<int64_t>(man.TotalBytes());
  info.summary.parameters = man.config.ParameterCount();
  info.keep_alive_s = m.keep_alive;
  info.instances = m.instances;
  info.loading = m.loading;
  info.ssd_holders = m.ssd_holders;
  info.host_holders = m.host_holders;
  info.gpu_holders = m.gpu_holders;
  if (!m.ssd_errors.empty()) info.__set_ssd_errors(m.ssd_errors);
  return info;
}

rpc::ClusterStatus ToWire(const ClusterReport& c) {
  rpc::ClusterStatus s;
  s.cluster = c.cluster;
  for (const auto& n : c.nodes) {
    rpc::NodeStatus ns;
    ns.name = n.name;
    ns.rpc_address = n.rpc_address;
    ns.alive = n.alive;
    ns.last_heartbeat_unix = n.last_heartbeat_unix;
    ns.inventory = n.inventory;
    if (n.measured_nic) ns.__set_measured_nic_bytes_per_s(*n.measured_nic);
    s.nodes.push_back(std::move(ns));
  }
  for (const auto& m : c.models) s.models.push_back(ToWire(m));
  return s;
}

}  // namespace modelcast::coordinator
