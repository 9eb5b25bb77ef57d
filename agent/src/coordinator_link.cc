#include "coordinator_link.h"

#include <glog/logging.h>
#include <thrift/protocol/TMultiplexedProtocol.h>

#include <chrono>

#include "modelcast/rpc/errors.h"

namespace modelcast::agent {

CoordinatorLink::CoordinatorLink(const AgentConfig& config, std::function<rpc::NodeInventory()> inventory)
    : config_(config), inventory_(std::move(inventory)) {}

CoordinatorLink::~CoordinatorLink() { Stop(); }

rpc::RequestHeader CoordinatorLink::Header() const { return rpc::MakeHeader(config_.security, config_.node); }

void CoordinatorLink::Start(rpc::JoinRequest identity) {
  identity_ = std::move(identity);
  loop_ = std::thread([this] { Loop(); });
}

void CoordinatorLink::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (loop_.joinable()) loop_.join();
}

Status CoordinatorLink::WithCoordinator(const std::function<void(rpc::MembershipClient&)>& call) {
  std::lock_guard lock(conn_mu_);
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (!client_) {
      // Whichever coordinator listens leads (standbys do not listen until elected).
      auto c = rpc::ConnectAny(config_.coordinators, config_.security, 5000, &next_coordinator_);
      if (!c.ok()) return c.status();
      conn_ = std::move(*c);
      client_ = std::make_unique<rpc::MembershipClient>(
          std::make_shared<apache::thrift::protocol::TMultiplexedProtocol>(conn_->protocol, "Membership"));
    }
    Status st = rpc::CallStatus([&] { call(*client_); });
    if (st.code() != StatusCode::kUnavailable) return st;
    // The connection broke (or the coordinator is busy): reconnect and try once more.
    client_.reset();
    conn_.reset();
    if (attempt == 1) return st.WithContext("coordinator");
  }
  return Unavailable("coordinator unreachable");
}

Status CoordinatorLink::Join() {
  rpc::JoinRequest req = identity_;
  req.header = Header();
  req.node = config_.node;
  req.inventory = inventory_();
  rpc::JoinResponse resp;
  MC_RETURN_IF_ERROR(WithCoordinator([&](rpc::MembershipClient& c) { c.join(resp, req); }));
  {
    std::lock_guard lock(mu_);
    epoch_ = resp.epoch;
    heartbeat_ms_ = std::max(10, resp.heartbeat_interval_ms);
  }
  LOG(INFO) << "agent " << config_.node << ": joined cluster '" << resp.cluster << "' (epoch " << resp.epoch << ")";
  if (joined_hook_) joined_hook_(resp.epoch);
  return Status::Ok();
}

void CoordinatorLink::Loop() {
  bool joined = false;
  std::unique_lock lock(mu_);
  while (!stopping_) {
    lock.unlock();
    Status st;
    if (!joined) {
      st = Join();
      joined = st.ok();
      if (!st.ok()) {
        LOG_EVERY_N(WARNING, 20) << "agent " << config_.node << ": cannot join: " << st.message();
      }
    } else {
      rpc::HeartbeatRequest req;
      req.header = Header();
      req.node = config_.node;
      {
        std::lock_guard l(mu_);
        req.epoch = epoch_;
      }
      req.__set_inventory(inventory_());
      rpc::HeartbeatResponse resp;
      st = WithCoordinator([&](rpc::MembershipClient& c) { c.heartbeat(resp, req); });
      if (!st.ok() || resp.rejoin) joined = false;
    }
    lock.lock();
    cv_.wait_for(lock, std::chrono::milliseconds(joined ? heartbeat_ms_ : 200), [&] { return stopping_; });
  }
}

void CoordinatorLink::Report(rpc::ProgressReport r) {
  r.header = Header();
  r.node = config_.node;
  Status st = WithCoordinator([&](rpc::MembershipClient& c) { c.reportProgress(r); });
  if (!st.ok()) LOG(WARNING) << "agent " << config_.node << ": progress of " << r.operation_id << ": " << st.message();
}

}  // namespace modelcast::agent
