// A small command-line parser for modelcast's tools and benchmarks: --flag value,
// --flag=value, boolean --flag, positional arguments, --help. Errors name the flag.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "modelcast/common/status.h"

namespace modelcast {

class ArgParser {
 public:
  ArgParser(std::string program, std::string summary);

  void Flag(const std::string& name, std::string* out, const std::string& help);
  void Flag(const std::string& name, int64_t* out, const std::string& help);
  void Flag(const std::string& name, std::optional<int64_t>* out, const std::string& help);
  void Flag(const std::string& name, double* out, const std::string& help);
  void Flag(const std::string& name, std::optional<double>* out, const std::string& help);
  // A switch: present means true. It takes no value.
  void Flag(const std::string& name, bool* out, const std::string& help);
  void Positional(const std::string& name, std::string* out, const std::string& help, bool required = true);

  // Parses args (without the program name). --help sets help_requested() and returns OK.
  Status Parse(const std::vector<std::string>& args);
  Status Parse(int argc, char** argv, int first = 1);

  bool help_requested() const { return help_; }
  bool WasSet(const std::string& name) const;
  std::string Usage() const;

 private:
  struct Spec {
    std::string name;
    std::string help;
    std::string value_name;  // empty for switches
    std::function<Status(const std::string&)> set;
    bool seen = false;
  };
  struct PositionalSpec {
    std::string name;
    std::string help;
    std::string* out;
    bool required;
  };
  Spec* Find(const std::string& name);
  void Add(const std::string& name, const std::string& help, const std::string& value_name,
           std::function<Status(const std::string&)> set);

  std::string program_;
  std::string summary_;
  std::vector<Spec> flags_;
  std::vector<PositionalSpec> positionals_;
  bool help_ = false;
};

}  // namespace modelcast
