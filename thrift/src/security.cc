#include "modelcast/rpc/security.h"

#include <unistd.h>

#include <glog/logging.h>

#include "modelcast/common/file_util.h"

namespace modelcast::rpc {

namespace {

// Compares without an early exit, so the time taken does not tell how much of a guess matched.
bool ConstantTimeEquals(const std::string& expected, const std::string& given) {
  if (expected.empty()) return false;
  unsigned char diff = expected.size() != given.size() ? 1 : 0;
  for (size_t i = 0; i < given.size(); ++i) {
    diff |= static_cast<unsigned char>(expected[i % expected.size()] ^ given[i]);
  }
  return diff == 0;
}

constexpr size_t kMinTokenChars = 16;

}  // namespace

Result<SecurityConfig> SecurityConfig::FromConfig(const ConfigNode& node) {
  MC_RETURN_IF_ERROR(node.CheckKeys({"tls", "token", "token_file", "insecure"}));
  SecurityConfig c;
  MC_ASSIGN_OR_RETURN(c.insecure, node.GetBool("insecure", false));
  if (node.Has("token") && node.Has("token_file")) {
    MC_ASSIGN_OR_RETURN(ConfigNode t, node.Child("token_file"));
    return t.Error("give token or token_file, not both");
  }
  if (node.Has("token")) {
    MC_ASSIGN_OR_RETURN(c.token, node.GetString("token"));
    if (c.token.size() < kMinTokenChars) {
      MC_ASSIGN_OR_RETURN(ConfigNode t, node.Child("token"));
      return t.Error("must be at least " + std::to_string(kMinTokenChars) + " characters");
    }
  }
  if (node.Has("token_file")) {
    MC_ASSIGN_OR_RETURN(std::string path, node.GetString("token_file"));
    MC_ASSIGN_OR_RETURN(ConfigNode t, node.Child("token_file"));
    auto text = ReadFileToString(path, 4096);
    if (!text.ok()) return t.Error("cannot read " + path + ": " + text.status().message());
    c.token = *text;
    while (!c.token.empty() && (c.token.back() == '\n' || c.token.back() == '\r' || c.token.back() == ' ')) {
      c.token.pop_back();
    }
    if (c.token.size() < kMinTokenChars) {
      return t.Error(path + " must hold a token of at least " + std::to_string(kMinTokenChars) + " characters");
    }
  }
  if (auto tls = node.OptionalChild("tls")) {
    MC_RETURN_IF_ERROR(tls->CheckKeys({"cert", "key", "ca"}));
    MC_ASSIGN_OR_RETURN(c.tls_cert, tls->GetString("cert"));
    MC_ASSIGN_OR_RETURN(c.tls_key, tls->GetString("key"));
    MC_ASSIGN_OR_RETURN(c.tls_ca, tls->GetString("ca"));
    for (const char* key : {"cert", "key", "ca"}) {
      MC_ASSIGN_OR_RETURN(std::string path, tls->GetString(key));
      if (::access(path.c_str(), R_OK) != 0) {
        MC_ASSIGN_OR_RETURN(ConfigNode k, tls->Child(key));
        return k.Error("cannot read " + path);
      }
    }
  }
  if (!c.tls() && c.token.empty() && !c.insecure) {
    return node.Error("configure tls or a token (token_file), or say insecure: true for plaintext");
  }
  return c;
}

Status SecurityConfig::Validate() const {
  if (!tls() && token.empty() && !insecure) {
    return InvalidArgument("security: configure tls or a token, or say insecure: true for plaintext");
  }
  if (!token.empty() && token.size() < kMinTokenChars) {
    return InvalidArgument("security: the token must be at least " + std::to_string(kMinTokenChars) + " characters");
  }
  if (tls() && (tls_key.empty() || tls_ca.empty())) {
    return InvalidArgument("security: tls needs cert, key and ca");
  }
  return Status::Ok();
}

RequestHeader MakeHeader(const SecurityConfig& security, const std::string& caller) {
  RequestHeader h;
  if (!security.token.empty()) h.__set_token(security.token);
  h.__set_caller(caller);
  return h;
}

Status CheckCaller(const SecurityConfig& security, const RequestHeader& header, const char* method) {
  if (security.token.empty()) return Status::Ok();  // mutual TLS (checked at connect) or insecure
  const std::string who = header.__isset.caller ? header.caller : "an unnamed caller";
  if (!header.__isset.token) {
    LOG(WARNING) << "refused " << method << " from " << who << ": no token";
    return PermissionDenied(std::string(method) + ": the call carries no token");
  }
  if (!ConstantTimeEquals(security.token, header.token)) {
    LOG(WARNING) << "refused " << method << " from " << who << ": wrong token";
    return PermissionDenied(std::string(method) + ": wrong token");
  }
  return Status::Ok();
}

}  // namespace modelcast::rpc
