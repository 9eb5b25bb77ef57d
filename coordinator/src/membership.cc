#include "membership.h"

#include <algorithm>

#include <glog/logging.h>

#include "inventory.h"

namespace modelcast::coordinator {

Membership::Membership(const planner::ClusterConfig& cluster, double heartbeat_deadline)
    : cluster_(cluster.name), heartbeat_deadline_(heartbeat_deadline) {
  for (const auto& n : cluster.nodes) nodes_[n.name].config = n;
}

std::string Membership::Describe() const {
  return "cluster '" + cluster_ + "' (" + std::to_string(nodes_.size()) + " nodes in its config)";
}

bool Membership::Alive(const Node& n) const {
  const auto heard = std::chrono::steady_clock::now() - n.last_heartbeat - (deaf_ - n.deaf_at_heartbeat);
  return n.joined && std::chrono::duration<double>(heard).count() <= heartbeat_deadline_;
}

Status Membership::Join(const JoinArgs& a) {
  auto it = nodes_.find(a.node);
  if (it == nodes_.end()) return NotFound("node '" + a.node + "' is not in " + Describe());
  if (a.rpc_address.empty()) return InvalidArgument("join: node '" + a.node + "' gave no rpc_address");
  Node& n = it->second;
  n.joined = true;
  n.rpc_address = a.rpc_address;
  n.fabric_address = a.fabric_address;
  n.serving_address = a.serving_address.value_or(a.fabric_address);
  n.inventory = a.inventory;
  n.last_heartbeat = std::chrono::steady_clock::now();
  n.deaf_at_heartbeat = deaf_;
  n.last_heartbeat_unix = UnixNow();
  LOG(INFO) << "coordinator: node '" << a.node << "' joined from " << a.rpc_address;
  return Status::Ok();
}

Result<bool> Membership::Heartbeat(const HeartbeatArgs& a, int64_t epoch) {
  auto it = nodes_.find(a.node);
  if (it == nodes_.end()) return NotFound("node '" + a.node + "' is not in cluster '" + cluster_ + "'");
  Node& n = it->second;
  if (!n.joined || a.epoch != epoch) return false;
  n.last_heartbeat = std::chrono::steady_clock::now();
  n.deaf_at_heartbeat = deaf_;
  n.last_heartbeat_unix = UnixNow();
  if (a.inventory) n.inventory = *a.inventory;
  return true;
}

void Membership::SetInventory(const std::string& name, const rpc::NodeInventory& inventory) {
  nodes_.at(name).inventory = inventory;
}

double Membership::Nic(const std::string& name) const {
  const Node& n = nodes_.at(name);
  return n.measured_nic > 0 ? std::min(n.measured_nic, n.config.nic) : n.config.nic;
}

// A node's best link (in or out) is what it can do at least: every link of a degraded node is
// slow, while a healthy node fed by a slow one still has fast links.
void Membership::JudgeLinks(const std::string& op, const std::map<std::string, double>& best) {
  std::map<std::string, double> fraction;
  for (const auto& [name, rate] : best) {
    auto it = nodes_.find(name);
    if (it != nodes_.end() && it->second.config.nic > 0) fraction[name] = rate / it->second.config.nic;
  }
  if (fraction.size() < 3) return;  // no majority to judge against
  std::vector<double> f;
  for (const auto& [name, x] : fraction) f.push_back(x);
  std::nth_element(f.begin(), f.begin() + static_cast<std::ptrdiff_t>(f.size() / 2), f.end());
  const double median = f[f.size() / 2];
  for (const auto& [name, x] : fraction) {
    Node& n = nodes_.at(name);
    if (x < kSlowLink * median) {
      n.measured_nic = n.config.nic * x / median;
      LOG(WARNING) << "coordinator: " << op << ": node '" << name << "' is a straggler: its links carried at most "
                   << best.at(name) * 8 / 1e6 << " Mbit/s, " << x / median
                   << " of the other nodes' (relative to their configured rates); planning it at "
                   << n.measured_nic * 8 / 1e6 << " Mbit/s until a multicast measures it faster";
    } else if (n.measured_nic > 0) {
      n.measured_nic = 0;
      LOG(INFO) << "coordinator: " << op << ": node '" << name << "' measured back at " << best.at(name) * 8 / 1e6
                << " Mbit/s: planning it at its configured rate again";
    }
  }
}

NodeReport Membership::Report(const std::string& name) const {
  const Node& n = nodes_.at(name);
  NodeReport r;
  r.name = name;
  r.rpc_address = n.rpc_address;
  r.alive = Alive(n);
  r.last_heartbeat_unix = n.last_heartbeat_unix;
  r.inventory = n.inventory;
  if (n.measured_nic > 0) r.measured_nic = n.measured_nic;
  return r;
}

}  // namespace modelcast::coordinator
