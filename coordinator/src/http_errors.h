// The HTTP API's error answers, shaped as OpenAI's ({"error": {message, type, code}}) (api.cc).
#pragma once

#include <httplib.h>

#include <nlohmann/json.hpp>

#include "modelcast/common/status.h"

namespace modelcast::coordinator {

inline void HttpError(httplib::Response& res, int http, const Status& s) {
  res.status = http;
  const char* type = http == 401 ? "authentication_error" : http >= 500 ? "server_error" : "invalid_request_error";
  nlohmann::json j = {{"error", {{"message", s.message()}, {"type", type}, {"code", std::string(StatusCodeName(s.code()))}}}};
  res.set_content(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "application/json");
}

}  // namespace modelcast::coordinator
