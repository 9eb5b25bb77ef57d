// Small helpers the benchmarks share: comma lists, running a shell command, and the iperf3
// baseline every network benchmark measures in the same run.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "modelcast/common/status.h"
#include "modelcast/model/synth.h"

namespace modelcast::bench {

// The benchmark's name for its error lines; main sets it first.
inline std::string& ProgramName() {
  static std::string name = "bench";
  return name;
}

// Prints "<program>: <message>" and exits with status 1.
[[noreturn]] inline void Die(const Status& s) {
  std::fprintf(stderr, "%s: %s\n", ProgramName().c_str(), s.message().c_str());
  std::exit(1);
}

inline void Check(const Status& s) {
  if (!s.ok()) Die(s);
}

// The synthetic model `preset` in `work`/synth-<preset>, synthesized on first use and kept for
// later runs (it is the same bytes every time).
inline std::filesystem::path SynthesizedModel(const std::filesystem::path& work, const std::string& preset) {
  const auto src = std::filesystem::absolute(work) / ("synth-" + preset);
  if (!std::filesystem::exists(src / "config.json")) {
    model::SynthOptions o;
    o.preset = preset;
    std::printf("synthesizing the %s model into %s ...\n", preset.c_str(), src.c_str());
    Check(model::Synthesize(o, src));
  }
  return src;
}

// Seconds on the steady clock.
inline double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

inline std::vector<std::string> SplitCommas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');) out.push_back(x);
  return out;
}

// Runs `cmd` with the shell and returns what it wrote to stdout.
inline Result<std::string> Shell(const std::string& cmd) {
  FILE* f = ::popen(cmd.c_str(), "r");
  if (f == nullptr) return Unavailable("cannot run " + cmd);
  std::string out;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof(buf), f)) out.append(buf, n);
  ::pclose(f);
  return out;
}

// One iperf3 measurement: a one-shot server (`iperf3 -s -1`, exits after its client) started
// behind `server_prefix` (e.g. "ip netns exec ns2"), then 4 s of one TCP stream from a client
// behind `client_prefix` to host:port with `client_flags`. Returns the goodput in bytes/s.
inline Result<double> Iperf3(const std::string& server_prefix, const std::string& client_prefix,
                             const std::string& host, int port, const std::string& client_flags) {
  const std::string p = std::to_string(port);
  const std::string server = server_prefix + " iperf3 -s -1 -p " + p + " >/dev/null 2>&1 &";
  if (std::system(server.c_str()) != 0) return Unavailable("cannot start iperf3 -s");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // let the server listen
  MC_ASSIGN_OR_RETURN(std::string out, Shell(client_prefix + " iperf3 -c " + host + " -p " + p + " " + client_flags +
                                             " -t 4 -J 2>/dev/null"));
  auto j = nlohmann::json::parse(out, nullptr, false);
  if (j.is_discarded() || !j.contains("end")) return Unavailable("iperf3 gave no result (is it installed?)");
  return j["end"]["sum_received"]["bits_per_second"].get<double>() / 8;
}

}  // namespace modelcast::bench
