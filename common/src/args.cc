#include "modelcast/common/args.h"

#include <cctype>
#include <charconv>
#include <cmath>

namespace modelcast {
namespace {

Status ParseInt(const std::string& flag, const std::string& v, int64_t* out) {
  auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), *out);
  if (v.empty() || ec != std::errc() || ptr != v.data() + v.size()) {
    return InvalidArgument("--" + flag + " expects an integer, got '" + v + "'");
  }
  return Status::Ok();
}

Status ParseDouble(const std::string& flag, const std::string& v, double* out) {
  auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), *out);
  if (v.empty() || ec != std::errc() || ptr != v.data() + v.size() || !std::isfinite(*out)) {
    return InvalidArgument("--" + flag + " expects a number, got '" + v + "'");
  }
  return Status::Ok();
}

}  // namespace

ArgParser::ArgParser(std::string program, std::string summary)
    : program_(std::move(program)), summary_(std::move(summary)) {}

void ArgParser::Add(const std::string& name, const std::string& help, const std::string& value_name,
                    std::function<Status(const std::string&)> set) {
  flags_.push_back(Spec{name, help, value_name, std::move(set)});
}

void ArgParser::Flag(const std::string& name, std::string* out, const std::string& help) {
  Add(name, help, "STR", [out](const std::string& v) {
    *out = v;
    return Status::Ok();
  });
}

void ArgParser::Flag(const std::string& name, int64_t* out, const std::string& help) {
  Add(name, help, "N", [name, out](const std::string& v) { return ParseInt(name, v, out); });
}

void ArgParser::Flag(const std::string& name, std::optional<int64_t>* out, const std::string& help) {
  Add(name, help, "N", [name, out](const std::string& v) {
    int64_t x;
    MC_RETURN_IF_ERROR(ParseInt(name, v, &x));
    *out = x;
    return Status::Ok();
  });
}

void ArgParser::Flag(const std::string& name, double* out, const std::string& help) {
  Add(name, help, "X", [name, out](const std::string& v) { return ParseDouble(name, v, out); });
}

void ArgParser::Flag(const std::string& name, std::optional<double>* out, const std::string& help) {
  Add(name, help, "X", [name, out](const std::string& v) {
    double x;
    MC_RETURN_IF_ERROR(ParseDouble(name, v, &x));
    *out = x;
    return Status::Ok();
  });
}

void ArgParser::Flag(const std::string& name, bool* out, const std::string& help) {
  Add(name, help, "", [out](const std::string&) {
    *out = true;
    return Status::Ok();
  });
}

void ArgParser::Positional(const std::string& name, std::string* out, const std::string& help, bool required) {
  positionals_.push_back({name, help, out, required});
}

ArgParser::Spec* ArgParser::Find(const std::string& name) {
  for (auto& f : flags_) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

bool ArgParser::WasSet(const std::string& name) const {
  for (const auto& f : flags_) {
    if (f.name == name) return f.seen;
  }
  return false;
}

Status ArgParser::Parse(int argc, char** argv, int first) {
  std::vector<std::string> args;
  for (int i = first; i < argc; ++i) args.emplace_back(argv[i]);
  return Parse(args);
}

Status ArgParser::Parse(const std::vector<std::string>& args) {
  size_t next_positional = 0;
  bool only_positional = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (!only_positional && a == "--") {
      only_positional = true;
      continue;
    }
    if (!only_positional && (a == "-h" || a == "--help")) {
      help_ = true;
      return Status::Ok();
    }
    if (!only_positional && a.size() > 2 && a.rfind("--", 0) == 0) {
      std::string name = a.substr(2);
      std::optional<std::string> value;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name.resize(eq);
      }
      Spec* f = Find(name);
      if (f == nullptr) return InvalidArgument("unknown flag --" + name + " (see --help)");
      if (f->seen) return InvalidArgument("--" + name + " given twice");
      f->seen = true;
      if (f->value_name.empty()) {
        if (value) return InvalidArgument("--" + name + " takes no value");
        MC_RETURN_IF_ERROR(f->set(""));
        continue;
      }
      if (!value) {
        if (i + 1 >= args.size()) return InvalidArgument("--" + name + " needs a value");
        value = args[++i];
      }
      MC_RETURN_IF_ERROR(f->set(*value));
      continue;
    }
    if (!only_positional && a.size() > 1 && a[0] == '-' && !std::isdigit(static_cast<unsigned char>(a[1]))) {
      return InvalidArgument("unknown option " + a + " (flags are spelled --name)");
    }
    if (next_positional >= positionals_.size()) {
      return InvalidArgument("unexpected argument '" + a + "'");
    }
    *positionals_[next_positional++].out = a;
  }
  for (size_t i = next_positional; i < positionals_.size(); ++i) {
    if (positionals_[i].required) return InvalidArgument("missing argument " + positionals_[i].name);
  }
  return Status::Ok();
}

std::string ArgParser::Usage() const {
  std::string u = "usage: " + program_;
  for (const auto& p : positionals_) u += p.required ? " " + p.name : " [" + p.name + "]";
  if (!flags_.empty()) u += " [flags]";
  u += "\n\n" + summary_ + "\n";
  if (!positionals_.empty() || !flags_.empty()) u += "\n";
  for (const auto& p : positionals_)
    u += "  " + p.name + std::string(p.name.size() < 22 ? 22 - p.name.size() : 1, ' ') + p.help + "\n";
  for (const auto& f : flags_) {
    std::string left = "--" + f.name + (f.value_name.empty() ? "" : " " + f.value_name);
    u += "  " + left + std::string(left.size() < 22 ? 22 - left.size() : 1, ' ') + f.help + "\n";
  }
  return u;
}

}  // namespace modelcast
