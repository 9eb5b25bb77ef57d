#include "modelcast/common/units.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace modelcast {
namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Splits "1.5 GiB" into 1.5 and "gib" (lower-cased, spaces dropped).
bool SplitNumberUnit(std::string_view text, double* number, std::string* unit) {
  size_t i = 0;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  size_t start = i;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  if (i == start) return false;
  auto [ptr, ec] = std::from_chars(text.data() + start, text.data() + i, *number);
  if (ec != std::errc() || ptr != text.data() + i || !std::isfinite(*number)) return false;
  std::string u;
  for (; i < text.size(); ++i) {
    if (!std::isspace(static_cast<unsigned char>(text[i]))) u += text[i];
  }
  *unit = Lower(u);
  return true;
}

}  // namespace

std::string FormatBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 5) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), v < 10 ? "%.2f %s" : (v < 100 ? "%.1f %s" : "%.0f %s"), v, kUnits[u]);
  return buf;
}

std::string FormatRate(double bps) {
  static constexpr const char* kUnits[] = {"B/s", "kB/s", "MB/s", "GB/s", "TB/s"};
  int u = 0;
  while (bps >= 1000.0 && u < 4) {
    bps /= 1000.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f %s", bps, kUnits[u]);
  return buf;
}

Result<uint64_t> ParseByteSize(std::string_view text) {
  double n;
  std::string unit;
  if (!SplitNumberUnit(text, &n, &unit)) {
    return InvalidArgument("'" + std::string(text) + "' is not a byte size (e.g. 4096, 16MiB, 1.5GiB)");
  }
  double mult;
  if (unit.empty() || unit == "b")
    mult = 1;
  else if (unit == "k" || unit == "kib")
    mult = 1024.0;
  else if (unit == "m" || unit == "mib")
    mult = 1024.0 * 1024;
  else if (unit == "g" || unit == "gib")
    mult = 1024.0 * 1024 * 1024;
  else if (unit == "t" || unit == "tib")
    mult = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "kb")
    mult = 1e3;
  else if (unit == "mb")
    mult = 1e6;
  else if (unit == "gb")
    mult = 1e9;
  else if (unit == "tb")
    mult = 1e12;
  else
    return InvalidArgument("'" + std::string(text) + "': unknown size unit '" + unit + "'");
  double bytes = n * mult;
  if (bytes >= 1.8e19) return InvalidArgument("'" + std::string(text) + "' is too large");
  if (bytes != std::floor(bytes)) {
    return InvalidArgument("'" + std::string(text) + "' is not a whole number of bytes");
  }
  return static_cast<uint64_t>(bytes);
}

Result<double> ParseBitRate(std::string_view text) {
  double n;
  std::string unit;
  if (!SplitNumberUnit(text, &n, &unit)) {
    return InvalidArgument("'" + std::string(text) + "' is not a link rate (e.g. 400Gbit, 1gbit)");
  }
  // Accept "gbit", "gbps", "gb/s", "g", "gbit/s".
  for (const char* suffix : {"bit/s", "bits/s", "bit", "bps", "b/s"}) {
    std::string_view u(unit), sfx(suffix);
    if (u.size() >= sfx.size() && u.substr(u.size() - sfx.size()) == sfx) {
      unit.resize(unit.size() - sfx.size());
      break;
    }
  }
  double mult;
  if (unit.empty())
    mult = 1;
  else if (unit == "k")
    mult = 1e3;
  else if (unit == "m")
    mult = 1e6;
  else if (unit == "g")
    mult = 1e9;
  else if (unit == "t")
    mult = 1e12;
  else
    return InvalidArgument("'" + std::string(text) + "': unknown rate unit (use bit, kbit, Mbit, Gbit, Tbit)");
  return n * mult;
}

Result<double> ParseByteRate(std::string_view text) {
  double n;
  std::string unit;
  if (!SplitNumberUnit(text, &n, &unit)) {
    return InvalidArgument("'" + std::string(text) + "' is not a data rate (e.g. 32GB/s, 25GiB/s)");
  }
  const std::string_view u(unit);
  if (u.size() < 2 || u.substr(u.size() - 2) != "/s") {
    return InvalidArgument("'" + std::string(text) + "': a data rate needs a per-second unit (e.g. GB/s)");
  }
  auto bytes = ParseByteSize("1" + std::string(u.substr(0, u.size() - 2)));
  if (!bytes.ok()) return InvalidArgument("'" + std::string(text) + "': unknown data-rate unit '" + unit + "'");
  return n * static_cast<double>(*bytes);
}

Result<double> ParseDuration(std::string_view text) {
  double n;
  std::string unit;
  if (!SplitNumberUnit(text, &n, &unit)) {
    return InvalidArgument("'" + std::string(text) + "' is not a duration (e.g. 5us, 1.5ms, 2s)");
  }
  if (unit == "s" || (unit.empty() && n == 0)) return n;
  if (unit == "ms") return n * 1e-3;
  if (unit == "us") return n * 1e-6;
  if (unit == "ns") return n * 1e-9;
  return InvalidArgument("'" + std::string(text) + "': unknown duration unit '" + unit + "' (use s, ms, us, ns)");
}

std::string FormatSeconds(double s) {
  char buf[32];
  if (s >= 1)
    std::snprintf(buf, sizeof(buf), "%.3f s", s);
  else if (s >= 1e-3)
    std::snprintf(buf, sizeof(buf), "%.2f ms", s * 1e3);
  else
    std::snprintf(buf, sizeof(buf), "%.1f us", s * 1e6);
  return buf;
}

}  // namespace modelcast
