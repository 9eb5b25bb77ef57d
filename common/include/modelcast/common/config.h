// YAML configuration with errors that name the file, the line and the key.
//
// Every daemon role reads one YAML file. A ConfigNode is a position in that file: lookups
// return Result<T>, and every error reads like
//   cluster.yaml:12: nodes[3].gpus: expected an integer, got 'two'
// Unknown keys are errors too (CheckKeys), so a typo never silently becomes a default.
#pragma once

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "modelcast/common/status.h"

namespace modelcast {

class ConfigNode {
 public:
  static Result<ConfigNode> ParseFile(const std::filesystem::path& path);
  static Result<ConfigNode> ParseString(std::string_view text, std::string source = "<config>");

  // "cluster.yaml:12" (1-based line; the line of the nearest node that has one).
  std::string Location() const;
  // Dotted path of this node from the root: "nodes[3].gpus" ("" for the root).
  const std::string& path() const { return path_; }
  // An InvalidArgument error located at this node: "<file>:<line>: <path>: <message>".
  Status Error(std::string_view message) const;

  bool IsMap() const { return node_.IsMap(); }
  bool IsSequence() const { return node_.IsSequence(); }
  bool IsScalar() const { return node_.IsScalar(); }
  bool Has(std::string_view key) const;

  // Fails if this node is not a mapping, has a duplicated key, or has a key outside `allowed`.
  Status CheckKeys(std::initializer_list<std::string_view> allowed) const;

  // A required child; missing is an error naming the key.
  Result<ConfigNode> Child(std::string_view key) const;
  std::optional<ConfigNode> OptionalChild(std::string_view key) const;
  // The elements of this node, which must be a sequence.
  Result<std::vector<ConfigNode>> Elements() const;

  // This node's scalar, converted.
  Result<std::string> AsString() const;
  Result<int64_t> AsInt() const;
  Result<double> AsDouble() const;
  Result<bool> AsBool() const;
  Result<uint64_t> AsBytes() const;   // "80GiB", "4096"
  Result<double> AsBitRate() const;   // "400Gbit" -> bits per second
  Result<double> AsByteRate() const;  // "32GB/s" -> bytes per second
  Result<double> AsDuration() const;  // "5us" -> seconds

  // Required and defaulted lookups of a child scalar.
  Result<std::string> GetString(std::string_view key) const;
  Result<std::string> GetString(std::string_view key, std::string def) const;
  Result<int64_t> GetInt(std::string_view key) const;
  Result<int64_t> GetInt(std::string_view key, int64_t def) const;
  Result<double> GetDouble(std::string_view key) const;
  Result<double> GetDouble(std::string_view key, double def) const;
  Result<bool> GetBool(std::string_view key) const;
  Result<bool> GetBool(std::string_view key, bool def) const;
  Result<uint64_t> GetBytes(std::string_view key) const;
  Result<uint64_t> GetBytes(std::string_view key, uint64_t def) const;
  Result<double> GetBitRate(std::string_view key) const;
  Result<double> GetBitRate(std::string_view key, double def) const;
  Result<double> GetByteRate(std::string_view key) const;
  Result<double> GetByteRate(std::string_view key, double def) const;
  Result<double> GetDuration(std::string_view key) const;
  Result<double> GetDuration(std::string_view key, double def) const;

 private:
  ConfigNode(YAML::Node node, std::shared_ptr<const std::string> source, std::string path, int line)
      : node_(std::move(node)), source_(std::move(source)), path_(std::move(path)), line_(line) {}
  std::string ChildPath(std::string_view key) const;
  Result<std::string> Scalar(std::string_view what) const;

  YAML::Node node_;
  std::shared_ptr<const std::string> source_;
  std::string path_;
  int line_ = 0;  // 1-based; 0 when unknown
};

}  // namespace modelcast
