// How modelcast's RPC servers and clients authenticate, from the `security` section of a
// daemon's config:
//
//   security:
//     tls: {cert: /etc/modelcast/node.pem, key: /etc/modelcast/node.key, ca: /etc/modelcast/ca.pem}
//     token_file: /etc/modelcast/token      # or token: "...", at least 16 characters
//     insecure: false                       # plaintext with neither: only when said so
//
// With tls, connections are mutual TLS: both sides present a certificate signed by `ca`, and a
// client without one never gets to make a call. With a token, every call's RequestHeader must
// carry it (compared in constant time). With neither, the daemon refuses to start unless the
// config says `insecure: true`.
#pragma once

#include <string>

#include "modelcast/common/config.h"
#include "modelcast/common/status.h"
#include "modelcast_types.h"

namespace modelcast::rpc {

struct SecurityConfig {
  std::string token;
  std::string tls_cert, tls_key, tls_ca;  // PEM files; all three or none
  bool insecure = false;

  bool tls() const { return !tls_cert.empty(); }
  // Errors name the file, line and key.
  static Result<SecurityConfig> FromConfig(const ConfigNode& node);
  // Something is configured (or insecure is said), the TLS files are readable, the token is long enough.
  Status Validate() const;
};

// The header a client sends: its token (if any) and who it is.
RequestHeader MakeHeader(const SecurityConfig& security, const std::string& caller);

// Checks one call. A refusal is logged (method, caller, why) and returned as a
// PermissionDenied status, which the handler turns into NotAuthorized before changing anything.
Status CheckCaller(const SecurityConfig& security, const RequestHeader& header, const char* method);

}  // namespace modelcast::rpc
