// The agent's configuration (its YAML mapping) and its inventory as the RPC describes it.
#include "modelcast/agent/agent.h"
#include "modelcast/fabric/fault_transport.h"

namespace modelcast::agent {

namespace {

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
  MC_RETURN_IF_ERROR(coord.CheckKeys({"address", "port", "endpoints"}));
  if (coord.Has("endpoints")) {
    if (coord.Has("address") || coord.Has("port")) {
      return coord.Error("has both endpoints and address/port: name every coordinator in endpoints");
    }
    MC_ASSIGN_OR_RETURN(ConfigNode eps, coord.Child("endpoints"));
    if (!eps.IsSequence()) return eps.Error("must be a list of host:port");
    MC_ASSIGN_OR_RETURN(auto items, eps.Elements());
    for (const auto& e : items) {
      MC_ASSIGN_OR_RETURN(std::string text, e.AsString());
      auto one = rpc::ParseEndpoints(text);
      if (!one.ok() || one->size() != 1) return e.Error(one.ok() ? "must be one host:port" : one.status().message());
      c.coordinators.push_back((*one)[0]);
    }
    if (c.coordinators.empty()) return eps.Error("must name at least one coordinator");
  } else {
    rpc::Endpoint one;
    MC_ASSIGN_OR_RETURN(one.host, coord.GetString("address"));
    MC_ASSIGN_OR_RETURN(int64_t cport, coord.GetInt("port"));
    if (cport < 1 || cport > 65535) return coord.Child("port")->Error("must be between 1 and 65535");
    one.port = static_cast<int>(cport);
    c.coordinators.push_back(one);
  }
  c.fabric.name = c.node;
  c.fabric.thread.nice = kDefaultFabricNice;
  if (auto f = root.OptionalChild("fabric")) {
    MC_RETURN_IF_ERROR(f->CheckKeys(
        {"listen", "serving_listen", "transport", "tls", "net_devices", "fault", "nice", "cpus", "max_send_rate", "pieces"}));
    MC_ASSIGN_OR_RETURN(int64_t nice, f->GetInt("nice", c.fabric.thread.nice));
    if (nice < 0 || nice > 19) return f->Child("nice")->Error("must be between 0 and 19 (0: as the agent's other threads)");
    c.fabric.thread.nice = static_cast<int>(nice);
    if (f->Has("cpus")) {
      MC_ASSIGN_OR_RETURN(ConfigNode cpus, f->Child("cpus"));
      MC_ASSIGN_OR_RETURN(std::string text, cpus.AsString());
      auto list = ParseCpuList(text);
      if (!list.ok()) return cpus.Error(list.status().message());
      c.fabric.thread.cpus = std::move(*list);
    }
    if (f->Has("max_send_rate")) {
      MC_ASSIGN_OR_RETURN(ConfigNode rate, f->Child("max_send_rate"));
      MC_ASSIGN_OR_RETURN(double bits, rate.AsBitRate());
      if (!(bits > 0)) return rate.Error("must be more than 0 (leave it out for no bound)");
      c.max_send_rate = bits / 8;
    }
    MC_ASSIGN_OR_RETURN(int64_t pieces, f->GetInt("pieces", static_cast<int64_t>(c.pieces)));
    if (pieces < 1 || pieces > 1024) return f->Child("pieces")->Error("must be between 1 and 1024 (1: whole slices)");
    c.pieces = static_cast<size_t>(pieces);
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

}  // namespace modelcast::agent
