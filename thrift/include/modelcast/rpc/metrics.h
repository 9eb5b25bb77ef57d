// Prometheus metrics over HTTP: each daemon renders its figures as Prometheus text on GET
// /metrics, served by a small HTTP server (cpp-httplib) on an address of its own.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "modelcast/common/config.h"
#include "modelcast/common/status.h"

namespace httplib {
class Server;
}

namespace modelcast::rpc {

// Builds the Prometheus text format, one metric family at a time.
class MetricsText {
 public:
  // `labels` like `tier="host"` (already formatted), or empty.
  void Gauge(const std::string& name, const std::string& help, double value, const std::string& labels = "");
  void Counter(const std::string& name, const std::string& help, double value, const std::string& labels = "");
  const std::string& text() const { return text_; }

 private:
  void Add(const std::string& type, const std::string& name, const std::string& help, double value,
           const std::string& labels);
  std::string text_;
  std::string last_family_;
};

// The `metrics` section of a daemon's config: {address: 127.0.0.1, port: 9400}. Absent: off.
struct MetricsConfig {
  bool enabled = false;
  std::string address = "127.0.0.1";
  int port = 0;
  static Result<MetricsConfig> FromConfig(const ConfigNode& node);
};

class MetricsServer {
 public:
  // Serves GET /metrics with what `render` returns at each request.
  static Result<std::unique_ptr<MetricsServer>> Start(const std::string& address, int port,
                                                      std::function<std::string()> render);
  ~MetricsServer();
  int port() const { return port_; }

 private:
  MetricsServer() = default;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace modelcast::rpc
