#include "modelcast/fabric/transport_factory.h"

#include <glog/logging.h>

#include <algorithm>

#include "modelcast/fabric/verbs_transport.h"

namespace modelcast::fabric {

Result<std::unique_ptr<Transport>> MakeTransport(const std::string& backend, const UcxOptions& options) {
  if (backend != "auto" && backend != "ucx" && backend != "verbs")
    return InvalidArgument("transport '" + backend + "' is not one of auto, ucx, verbs");
  if (backend == "ucx") return MakeUcxTransport(options);
  VerbsOptions vo;
  vo.name = options.name;
  vo.listen_address = options.listen_address;
  vo.connect_timeout = options.connect_timeout;
  vo.thread = options.thread;
  if (backend == "verbs") return MakeVerbsTransport(vo);
  // auto: verbs when the listen address belongs to an RDMA device.
  std::string why;
  if (!VerbsCompiled()) {
    why = "this build has no verbs backend";
  } else {
    const auto devices = FindRdmaDevices();
    const std::string ip = options.listen_address.substr(0, options.listen_address.rfind(':'));
    bool behind = false;
    for (const auto& d : devices) behind |= std::find(d.addresses.begin(), d.addresses.end(), ip) != d.addresses.end();
    if (devices.empty()) {
      why = "no RDMA device found";
    } else if (!behind) {
      why = "no RDMA device behind " + ip;
    } else {
      auto verbs = MakeVerbsTransport(vo);
      if (verbs.ok()) return verbs;
      why = verbs.status().message();
    }
  }
  LOG(INFO) << "fabric: " << why << "; using UCX";
  return MakeUcxTransport(options);
}

}  // namespace modelcast::fabric
