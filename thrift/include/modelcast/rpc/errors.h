// Status <-> the IDL's typed exceptions, at the RPC edge only.
#pragma once

#include <functional>

#include "modelcast/common/status.h"
#include "modelcast_types.h"

namespace modelcast::rpc {

// Throws what the IDL declares for a failed Status: NotAuthorized for PermissionDenied,
// Unavailable for Unavailable, InvalidRequest (with the matching ErrorCode) for the rest.
[[noreturn]] void ThrowStatus(const Status& status);
inline void ThrowIfError(const Status& status) {
  if (!status.ok()) ThrowStatus(status);
}

// Runs an RPC call, turning the exceptions it may throw (typed ones and transport failures)
// back into a Status.
Status CallStatus(const std::function<void()>& call);

}  // namespace modelcast::rpc
