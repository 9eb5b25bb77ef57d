// Choosing a transport backend at run time, by name and by what the machine has.
#pragma once

#include <memory>
#include <string>

#include "modelcast/fabric/transport.h"
#include "modelcast/fabric/ucx_transport.h"

namespace modelcast::fabric {

// The transport an agent runs: "ucx", "verbs", or "auto" (verbs when this build has it and the
// machine has an RDMA device behind the listen address, else UCX, saying why in one log line).
// The verbs backend takes the name, listen address and connect timeout of `options`.
Result<std::unique_ptr<Transport>> MakeTransport(const std::string& backend, const UcxOptions& options);

}  // namespace modelcast::fabric
