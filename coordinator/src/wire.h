// The one mapping between the coordinator's types (cluster_types.h) and the IDL's: requests in,
// answers out. Only the handlers (handlers.cc) call these.
#pragma once

#include "modelcast/coordinator/cluster_types.h"
#include "modelcast_types.h"

namespace modelcast::coordinator {

ScaleOutArgs FromWire(const rpc::ScaleOutRequest& req);
ScaleInArgs FromWire(const rpc::ScaleInRequest& req);
JoinArgs FromWire(const rpc::JoinRequest& req);
HeartbeatArgs FromWire(const rpc::HeartbeatRequest& req);
ProgressUpdate FromWire(const rpc::ProgressReport& report);

rpc::ScaleOutResponse ToWire(const ScaleOutResult& result);
rpc::OperationStatus ToWire(const OperationStatus& status);
rpc::Instance ToWire(const Instance& instance);
rpc::ModelInfo ToWire(const ModelReport& model);
rpc::ClusterStatus ToWire(const ClusterReport& cluster);

}  // namespace modelcast::coordinator
