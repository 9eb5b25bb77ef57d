#include "etcd_client.h"

#include <httplib.h>

#include <chrono>
#include <mutex>
#include <thread>

namespace modelcast::coordinator {
namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int64_t Num(const nlohmann::json& j, const char* field) {
  if (!j.contains(field)) return 0;  // proto3's JSON leaves defaults out
  const auto& v = j.at(field);
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_string()) {
    try {
      // uint64 ids (members) come as strings past int64's range: kept as their bits.
      return static_cast<int64_t>(std::stoull(v.get<std::string>()));
    } catch (const std::exception&) {
      return 0;
    }
  }
  return 0;
}

Result<EtcdKv> KvFromJson(const nlohmann::json& j) {
  EtcdKv kv;
  MC_ASSIGN_OR_RETURN(kv.key, Base64Decode(j.value("key", std::string())));
  MC_ASSIGN_OR_RETURN(kv.value, Base64Decode(j.value("value", std::string())));
  kv.create_revision = Num(j, "create_revision");
  kv.mod_revision = Num(j, "mod_revision");
  kv.version = Num(j, "version");
  kv.lease = Num(j, "lease");
  return kv;
}

Result<std::vector<EtcdKv>> KvsFromJson(const nlohmann::json& j) {
  std::vector<EtcdKv> out;
  if (!j.contains("kvs")) return out;
  for (const auto& k : j.at("kvs")) {
    MC_ASSIGN_OR_RETURN(auto kv, KvFromJson(k));
    out.push_back(std::move(kv));
  }
  return out;
}

nlohmann::json OpToJson(const EtcdOp& op) {
  switch (op.kind) {
    case EtcdOp::Kind::kPut: {
      nlohmann::json p = {{"key", Base64Encode(op.key)}, {"value", Base64Encode(op.value)}};
      if (op.lease != 0) p["lease"] = std::to_string(op.lease);
      return {{"request_put", p}};
    }
    case EtcdOp::Kind::kDeleteRange: {
      nlohmann::json d = {{"key", Base64Encode(op.key)}};
      if (!op.range_end.empty()) d["range_end"] = Base64Encode(op.range_end);
      return {{"request_delete_range", d}};
    }
    case EtcdOp::Kind::kRange: {
      nlohmann::json r = {{"key", Base64Encode(op.key)}};
      if (!op.range_end.empty()) r["range_end"] = Base64Encode(op.range_end);
      return {{"request_range", r}};
    }
  }
  return {};
}

nlohmann::json CompareToJson(const EtcdCompare& c) {
  static const char* kTargets[] = {"VERSION", "CREATE", "MOD", "VALUE", "LEASE"};
  static const char* kOps[] = {"EQUAL", "GREATER", "LESS", "NOT_EQUAL"};
  nlohmann::json j = {{"key", Base64Encode(c.key)},
                      {"target", kTargets[static_cast<int>(c.target)]},
                      {"result", kOps[static_cast<int>(c.op)]}};
  switch (c.target) {
    case EtcdCompare::Target::kVersion: j["version"] = std::to_string(c.number); break;
    case EtcdCompare::Target::kCreate: j["create_revision"] = std::to_string(c.number); break;
    case EtcdCompare::Target::kMod: j["mod_revision"] = std::to_string(c.number); break;
    case EtcdCompare::Target::kValue: j["value"] = Base64Encode(c.value); break;
    case EtcdCompare::Target::kLease: j["lease"] = std::to_string(c.number); break;
  }
  return j;
}

// etcd's gRPC codes, as its gateway sends them in an error's "code".
Status FromEtcdError(int http_status, const nlohmann::json& j, const std::string& where) {
  const std::string message = j.value("message", j.value("error", std::string("HTTP ") + std::to_string(http_status)));
  const int code = j.value("code", 0);
  const std::string what = where + ": " + message;
  switch (code) {
    case 3: return InvalidArgument(what);
    case 4: return DeadlineExceeded(what);
    case 5: return NotFound(what);
    case 6: return AlreadyExists(what);
    case 7: return PermissionDenied(what);
    case 8: return ResourceExhausted(what);
    case 9: return FailedPrecondition(what);
    case 14: return Unavailable(what);
    default: return Internal(what);
  }
}

}  // namespace

std::string Base64Encode(const std::string& bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i + 1 == bytes.size()) {
    const uint32_t v = uint8_t(bytes[i]) << 16;
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == bytes.size()) {
    const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8);
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

Result<std::string> Base64Decode(const std::string& text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '=') break;
    const int v = value(c);
    if (v < 0) return InvalidArgument("not base64: a '" + std::string(1, c) + "' at " + std::to_string(i));
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  return out;
}

std::string EtcdClient::PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    if (static_cast<uint8_t>(end.back()) < 0xff) {
      end.back() = static_cast<char>(static_cast<uint8_t>(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key
}

Result<std::unique_ptr<EtcdClient>> EtcdClient::Create(const std::vector<std::string>& endpoints, double timeout_s) {
  if (endpoints.empty()) return InvalidArgument("etcd: no endpoints");
  if (!(timeout_s > 0)) return InvalidArgument("etcd: the timeout must be more than 0 s");
  auto c = std::unique_ptr<EtcdClient>(new EtcdClient());
  c->endpoints_ = endpoints;
  c->timeout_s_ = timeout_s;
  for (const auto& e : endpoints) {
    std::string hp = e;
    if (hp.rfind("http://", 0) == 0) hp = hp.substr(7);
    if (hp.rfind("https://", 0) == 0) return InvalidArgument("etcd: endpoint '" + e + "': TLS is not supported yet");
    while (!hp.empty() && hp.back() == '/') hp.pop_back();
    auto ep = rpc::ParseEndpoints(hp);
    if (!ep.ok() || ep->size() != 1) {
      return InvalidArgument("etcd: endpoint '" + e + "' is not host:port" +
                             (ep.ok() ? std::string() : " (" + ep.status().message() + ")"));
    }
    c->parsed_.push_back((*ep)[0]);
  }
  return c;
}

Result<nlohmann::json> EtcdClient::Call(const std::string& path, const nlohmann::json& body) const {
  const std::string text = body.dump();
  std::string errors;
  const size_t n = parsed_.size();
  // Round after round over the members until one answers or the timeout passes: a member that
  // is down, or that has no leader while the others elect one, is passed over.
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
  for (size_t k = 0;; ++k) {
    if (k > 0 && k % n == 0) {
      if (std::chrono::steady_clock::now() >= until) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      errors.clear();
    }
    const size_t i = (preferred_.load() + k) % n;
    httplib::Client cli(parsed_[i].host, parsed_[i].port);
    const auto secs = static_cast<time_t>(timeout_s_);
    const auto usecs = static_cast<time_t>((timeout_s_ - static_cast<double>(secs)) * 1e6);
    cli.set_connection_timeout(secs, usecs);
    cli.set_read_timeout(secs, usecs);
    cli.set_write_timeout(secs, usecs);
    auto res = cli.Post(path, text, "application/json");
    if (!res) {
      errors += (errors.empty() ? "" : "; ") + endpoints_[i] + ": " + httplib::to_string(res.error());
      continue;
    }
    // A streaming method answers one JSON object a line; a unary call answers one.
    std::string answer = res->body;
    if (const auto nl = answer.find('\n'); nl != std::string::npos) answer.resize(nl);
    auto j = nlohmann::json::parse(answer, nullptr, false);
    if (j.is_discarded()) {
      errors += (errors.empty() ? "" : "; ") + endpoints_[i] + ": an answer that is not JSON (HTTP " +
                std::to_string(res->status) + ")";
      continue;
    }
    if (j.contains("error") && j["error"].is_object()) j = j["error"];
    if (res->status != 200 || (j.contains("code") && j.value("code", 0) != 0)) {
      Status st = FromEtcdError(res->status, j, "etcd " + endpoints_[i] + " " + path);
      // A member that lost its quorum or is stopping: another may answer.
      if (st.code() == StatusCode::kUnavailable) {
        errors += (errors.empty() ? "" : "; ") + st.message();
        continue;
      }
      return st;
    }
    preferred_ = i;
    return j;
  }
  return Unavailable("etcd: no member answered " + path + " (" + errors + ")");
}

Result<EtcdClient::MemberStatus> EtcdClient::Member() const {
  // The maintenance status is a gRPC call too (/v3/maintenance/status).
  MC_ASSIGN_OR_RETURN(auto j, Call("/v3/maintenance/status", nlohmann::json::object()));
  MemberStatus m;
  m.version = j.value("version", std::string());
  m.member_id = static_cast<uint64_t>(Num(j.value("header", nlohmann::json::object()), "member_id"));
  m.leader = static_cast<uint64_t>(Num(j, "leader"));
  return m;
}

Result<std::string> EtcdClient::Version() const {
  MC_ASSIGN_OR_RETURN(auto m, Member());
  return m.version;
}

Result<std::vector<EtcdKv>> EtcdClient::Range(const std::string& key, const std::string& range_end,
                                              int64_t* header_revision) const {
  nlohmann::json body = {{"key", Base64Encode(key)}};
  if (!range_end.empty()) body["range_end"] = Base64Encode(range_end);
  MC_ASSIGN_OR_RETURN(auto j, Call("/v3/kv/range", body));
  if (header_revision) *header_revision = Num(j.value("header", nlohmann::json::object()), "revision");
  return KvsFromJson(j);
}

Result<int64_t> EtcdClient::Put(const std::string& key, const std::string& value, int64_t lease) const {
  nlohmann::json body = {{"key", Base64Encode(key)}, {"value", Base64Encode(value)}};
  if (lease != 0) body["lease"] = std::to_string(lease);
  MC_ASSIGN_OR_RETURN(auto j, Call("/v3/kv/put", body));
  return Num(j.value("header", nlohmann::json::object()), "revision");
}

Result<int64_t> EtcdClient::Delete(const std::string& key, const std::string& range_end) const {
  nlohmann::json body = {{"key", Base64Encode(key)}};
  if (!range_end.empty()) body["range_end"] = Base64Encode(range_end);
  MC_ASSIGN_OR_RETURN(auto j, Call("/v3/kv/deleterange", body));
  return Num(j, "deleted");
}

Result<EtcdTxnResult> EtcdClient::Txn(const std::vector<EtcdCompare>& compare, const std::vector<EtcdOp>& success,
                                      const std::vector<EtcdOp>& failure) const {
  nlohmann::json body = {{"compare", nlohmann::json::array()},
                         {"success", nlohmann::json::array()},
                         {"failure", nlohmann::json::array()}};
  for (const auto& c : compare) body["compare"].push_back(CompareToJson(c));
  for (const auto& o : success) body["success"].push_back(OpToJson(o));
  for (const auto& o : failure) body["failure"].push_back(OpToJson(o));
  MC_ASSIGN_OR_RETURN(auto j, Call("/v3/kv/txn", body));
  EtcdTxnResult r;
  r.succeeded = j.value("succeeded", false);
  r.revision = Num(j.value("header", nlohmann::json::object()), "revision");
  for (const auto& resp : j.value("responses", nlohmann::json::array())) {
    if (!resp.contains("response_range")) continue;
    MC_ASSIGN_OR_RETURN(auto kvs, KvsFromJson(resp["response_range"]));
    r.reads.push_back(std::move(kvs));
  }
  return r;
}

Result<int64_t> EtcdClient::LeaseGrant(int64_t ttl_s) const {
  if (ttl_s < 1) return InvalidArgument("etcd: a lease's TTL must be at least 1 s");
  MC_ASSIGN_OR_RETURN(auto j, Call("/v3/lease/grant", {{"TTL", std::to_string(ttl_s)}}));
  if (j.contains("error") && j["error"].is_string() && !j["error"].get<std::string>().empty()) {
    return Internal("etcd: lease grant: " + j["error"].get<std::string>());
  }
  const int64_t id = Num(j, "ID");
  if (id == 0) return Internal("etcd: lease grant answered no lease id");
  return id;
}

Result<int64_t> EtcdClient::LeaseKeepAlive(int64_t lease) const {
  MC_ASSIGN_OR_RETURN(auto j, Call("/v3/lease/keepalive", {{"ID", std::to_string(lease)}}));
  const auto& r = j.contains("result") ? j["result"] : j;
  const int64_t ttl = Num(r, "TTL");
  if (ttl <= 0) return NotFound("etcd: lease " + std::to_string(lease) + " has expired");
  return ttl;
}

Status EtcdClient::LeaseRevoke(int64_t lease) const {
  auto j = Call("/v3/lease/revoke", {{"ID", std::to_string(lease)}});
  return j.ok() ? Status::Ok() : j.status();
}

EtcdWatch::~EtcdWatch() {
  stop_ = true;
  if (client_) client_->stop();  // ends a read that is waiting for the next event
  if (thread_.joinable()) thread_.join();
}

Result<std::unique_ptr<EtcdWatch>> EtcdClient::Watch(const std::string& key, const std::string& range_end,
                                                     int64_t start_revision, std::function<void(const EtcdEvent&)> on_event,
                                                     std::function<void(const Status&)> on_end) const {
  nlohmann::json create = {{"key", Base64Encode(key)}};
  if (!range_end.empty()) create["range_end"] = Base64Encode(range_end);
  if (start_revision > 0) create["start_revision"] = std::to_string(start_revision);
  const std::string body = nlohmann::json{{"create_request", create}}.dump();
  auto w = std::unique_ptr<EtcdWatch>(new EtcdWatch());
  auto* raw = w.get();
  const size_t at = preferred_.load() % parsed_.size();
  const std::string name = endpoints_[at];
  w->client_ = std::make_shared<httplib::Client>(parsed_[at].host, parsed_[at].port);
  w->client_->set_connection_timeout(static_cast<time_t>(timeout_s_), 0);
  w->client_->set_read_timeout(24 * 3600, 0);  // an idle watch waits; the destructor stops it
  w->thread_ = std::thread([raw, cli = w->client_, name, body, on_event = std::move(on_event),
                            on_end = std::move(on_end)] {
    std::string buffer;
    Status ended = Status::Ok();
    httplib::Request req;
    req.method = "POST";
    req.path = "/v3/watch";
    req.body = body;
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
      if (raw->stop_) return false;
      buffer.append(data, len);
      size_t nl;
      while ((nl = buffer.find('\n')) != std::string::npos) {
        auto j = nlohmann::json::parse(buffer.substr(0, nl), nullptr, false);
        buffer.erase(0, nl + 1);
        if (j.is_discarded()) continue;
        if (j.contains("error")) {
          ended = Unavailable("etcd " + name + " watch: " + j["error"].dump());
          return false;
        }
        const auto& r = j.contains("result") ? j["result"] : j;
        if (r.value("canceled", false) || Num(r, "compact_revision") > 0) {
          ended = FailedPrecondition("etcd " + name + " watch canceled" +
                                     (Num(r, "compact_revision") > 0
                                          ? ": compacted past the start (at " + std::to_string(Num(r, "compact_revision")) + ")"
                                          : std::string(": ") + r.value("cancel_reason", std::string())));
          return false;
        }
        for (const auto& e : r.value("events", nlohmann::json::array())) {
          EtcdEvent ev;
          ev.deleted = e.value("type", std::string()) == "DELETE";
          auto kv = KvFromJson(e.value("kv", nlohmann::json::object()));
          if (!kv.ok()) continue;
          ev.kv = std::move(*kv);
          on_event(ev);
        }
      }
      return !raw->stop_;
    };
    httplib::Response res;
    httplib::Error error = httplib::Error::Success;
    cli->send(req, res, error);
    if (ended.ok()) {
      ended = Unavailable("etcd " + name + " watch: the stream ended (" +
                          (error == httplib::Error::Success ? "HTTP " + std::to_string(res.status)
                                                            : httplib::to_string(error)) + ")");
    }
    raw->ended_ = true;
    if (!raw->stop_ && on_end) on_end(ended);
  });
  return w;
}

}  // namespace modelcast::coordinator
