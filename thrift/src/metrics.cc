#include "modelcast/rpc/metrics.h"

#include <httplib.h>

#include <cstdio>

#include <glog/logging.h>

namespace modelcast::rpc {

void MetricsText::Add(const std::string& type, const std::string& name, const std::string& help, double value,
                      const std::string& labels) {
  if (name != last_family_) {
    text_ += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
    last_family_ = name;
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", value);
  text_ += name + (labels.empty() ? "" : "{" + labels + "}") + " " + buf + "\n";
}

void MetricsText::Gauge(const std::string& name, const std::string& help, double value, const std::string& labels) {
  Add("gauge", name, help, value, labels);
}

void MetricsText::Counter(const std::string& name, const std::string& help, double value, const std::string& labels) {
  Add("counter", name, help, value, labels);
}

Result<MetricsConfig> MetricsConfig::FromConfig(const ConfigNode& node) {
  MC_RETURN_IF_ERROR(node.CheckKeys({"address", "port"}));
  MetricsConfig c;
  c.enabled = true;
  MC_ASSIGN_OR_RETURN(c.address, node.GetString("address", c.address));
  MC_ASSIGN_OR_RETURN(int64_t port, node.GetInt("port", 0));
  if (port < 0 || port > 65535) return node.Child("port")->Error("must be between 0 and 65535");
  c.port = static_cast<int>(port);
  return c;
}

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& address, int port,
                                                            std::function<std::string()> render) {
  std::unique_ptr<MetricsServer> m(new MetricsServer());
  m->server_ = std::make_unique<httplib::Server>();
  m->server_->Get("/metrics", [render](const httplib::Request&, httplib::Response& res) {
    res.set_content(render(), "text/plain; version=0.0.4");
  });
  if (port == 0) {
    m->port_ = m->server_->bind_to_any_port(address);
  } else {
    m->port_ = m->server_->bind_to_port(address, port) ? port : -1;
  }
  if (m->port_ <= 0) return Unavailable("metrics: cannot listen on " + address + ":" + std::to_string(port));
  m->thread_ = std::thread([s = m->server_.get()] { s->listen_after_bind(); });
  LOG(INFO) << "metrics on http://" << address << ":" << m->port_ << "/metrics";
  return m;
}

MetricsServer::~MetricsServer() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace modelcast::rpc
