#include "modelcast/common/config.h"

#include <charconv>
#include <cmath>
#include <set>

#include "modelcast/common/file_util.h"
#include "modelcast/common/units.h"

namespace modelcast {
namespace fs = std::filesystem;

namespace {

int LineOf(const YAML::Node& n, int fallback) {
  const YAML::Mark m = n.Mark();
  return m.line >= 0 ? m.line + 1 : fallback;
}

std::string Quote(std::string_view s) {
  std::string q = "'";
  q.append(s.substr(0, 60));
  if (s.size() > 60) q += "...";
  q += "'";
  return q;
}

}  // namespace

Result<ConfigNode> ConfigNode::ParseString(std::string_view text, std::string source) {
  auto src = std::make_shared<const std::string>(std::move(source));
  try {
    YAML::Node root = YAML::Load(std::string(text));
    if (!root.IsDefined() || root.IsNull()) {
      return InvalidArgument(*src + ": the file is empty");
    }
    return ConfigNode(root, src, "", LineOf(root, 1));
  } catch (const YAML::Exception& e) {
    return InvalidArgument(*src + ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1) +
                           ": invalid YAML: " + e.msg);
  }
}

Result<ConfigNode> ConfigNode::ParseFile(const fs::path& path) {
  MC_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, 16ull << 20));
  return ParseString(text, path.filename().string());
}

std::string ConfigNode::Location() const { return *source_ + (line_ > 0 ? ":" + std::to_string(line_) : ""); }

Status ConfigNode::Error(std::string_view message) const {
  std::string m = Location() + ": ";
  if (!path_.empty()) m += path_ + ": ";
  m += message;
  return InvalidArgument(std::move(m));
}

std::string ConfigNode::ChildPath(std::string_view key) const {
  return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
}

bool ConfigNode::Has(std::string_view key) const { return node_.IsMap() && node_[std::string(key)].IsDefined(); }

Status ConfigNode::CheckKeys(std::initializer_list<std::string_view> allowed) const {
  if (!node_.IsMap()) return Error("expected a mapping of keys to values");
  std::set<std::string> seen;
  for (const auto& kv : node_) {
    std::string key = kv.first.Scalar();
    ConfigNode at(kv.first, source_, ChildPath(key), LineOf(kv.first, line_));
    if (!seen.insert(key).second) return at.Error("key appears twice");
    bool ok = false;
    for (auto a : allowed) ok = ok || a == key;
    if (!ok) {
      std::string list;
      for (auto a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
      return at.Error("unknown key (expected one of: " + list + ")");
    }
  }
  return Status::Ok();
}

std::optional<ConfigNode> ConfigNode::OptionalChild(std::string_view key) const {
  if (!node_.IsMap()) return std::nullopt;
  // Look the key up by iteration so that the child's line is the key's line even when the
  // value is a null scalar (whose mark yaml-cpp does not keep).
  for (const auto& kv : node_) {
    if (kv.first.Scalar() == key) {
      return ConfigNode(kv.second, source_, ChildPath(key), LineOf(kv.second, LineOf(kv.first, line_)));
    }
  }
  return std::nullopt;
}

Result<ConfigNode> ConfigNode::Child(std::string_view key) const {
  if (!node_.IsMap()) return Error("expected a mapping with key '" + std::string(key) + "'");
  auto c = OptionalChild(key);
  if (!c) return Error("missing required key '" + std::string(key) + "'");
  return *c;
}

Result<std::vector<ConfigNode>> ConfigNode::Elements() const {
  if (!node_.IsSequence()) return Error("expected a list");
  std::vector<ConfigNode> out;
  size_t i = 0;
  for (const auto& e : node_) {
    out.push_back(ConfigNode(e, source_, path_ + "[" + std::to_string(i) + "]", LineOf(e, line_)));
    ++i;
  }
  return out;
}

Result<std::string> ConfigNode::Scalar(std::string_view what) const {
  if (!node_.IsScalar()) {
    return Error("expected " + std::string(what) + ", got " +
                 (node_.IsMap()        ? "a mapping"
                  : node_.IsSequence() ? "a list"
                                       : "nothing"));
  }
  return node_.Scalar();
}

Result<std::string> ConfigNode::AsString() const { return Scalar("a string"); }

Result<int64_t> ConfigNode::AsInt() const {
  MC_ASSIGN_OR_RETURN(std::string s, Scalar("an integer"));
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || s.empty()) {
    return Error("expected an integer, got " + Quote(s));
  }
  return v;
}

Result<double> ConfigNode::AsDouble() const {
  MC_ASSIGN_OR_RETURN(std::string s, Scalar("a number"));
  double v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || s.empty() || !std::isfinite(v)) {
    return Error("expected a number, got " + Quote(s));
  }
  return v;
}

Result<bool> ConfigNode::AsBool() const {
  MC_ASSIGN_OR_RETURN(std::string s, Scalar("true or false"));
  if (s == "true" || s == "True" || s == "yes" || s == "on") return true;
  if (s == "false" || s == "False" || s == "no" || s == "off") return false;
  return Error("expected true or false, got " + Quote(s));
}

Result<uint64_t> ConfigNode::AsBytes() const {
  MC_ASSIGN_OR_RETURN(std::string s, Scalar("a size"));
  auto r = ParseByteSize(s);
  if (!r.ok()) return Error(r.status().message());
  return *r;
}

Result<double> ConfigNode::AsBitRate() const {
  MC_ASSIGN_OR_RETURN(std::string s, Scalar("a link rate"));
  auto r = ParseBitRate(s);
  if (!r.ok()) return Error(r.status().message());
  return *r;
}

Result<double> ConfigNode::AsByteRate() const {
  MC_ASSIGN_OR_RETURN(std::string s, Scalar("a data rate"));
  auto r = ParseByteRate(s);
  if (!r.ok()) return Error(r.status().message());
  return *r;
}

Result<double> ConfigNode::AsDuration() const {
  MC_ASSIGN_OR_RETURN(std::string s, Scalar("a duration"));
  auto r = ParseDuration(s);
  if (!r.ok()) return Error(r.status().message());
  return *r;
}

#define MC_CONFIG_GETTERS(Name, Type)                                          \
  Result<Type> ConfigNode::Get##Name(std::string_view key) const {             \
    MC_ASSIGN_OR_RETURN(ConfigNode c, Child(key));                             \
    return c.As##Name();                                                       \
  }                                                                            \
  Result<Type> ConfigNode::Get##Name(std::string_view key, Type def) const {   \
    if (!node_.IsMap() && !node_.IsNull()) return Error("expected a mapping"); \
    auto c = OptionalChild(key);                                               \
    if (!c || c->node_.IsNull()) return def;                                   \
    return c->As##Name();                                                      \
  }

MC_CONFIG_GETTERS(String, std::string)
MC_CONFIG_GETTERS(Int, int64_t)
MC_CONFIG_GETTERS(Double, double)
MC_CONFIG_GETTERS(Bool, bool)
MC_CONFIG_GETTERS(Bytes, uint64_t)
MC_CONFIG_GETTERS(BitRate, double)
MC_CONFIG_GETTERS(ByteRate, double)
MC_CONFIG_GETTERS(Duration, double)
#undef MC_CONFIG_GETTERS

}  // namespace modelcast
