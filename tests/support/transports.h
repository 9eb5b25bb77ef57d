// Real transports for tests in one process: UCX over TCP on loopback, or raw verbs on the first
// RDMA device's address. Test sources built with MODELCAST_TEST_TRANSPORT="verbs" run on verbs
// (the verbs_test binary, ctest label rdma) and skip, saying why, where there is no device.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <string_view>

#include "modelcast/fabric/transport.h"
#include "modelcast/fabric/ucx_transport.h"
#include "modelcast/fabric/transport_factory.h"
#include "modelcast/fabric/verbs_transport.h"

#ifndef MODELCAST_TEST_TRANSPORT
#define MODELCAST_TEST_TRANSPORT "ucx"
#endif

namespace modelcast::fabric::testing {

inline constexpr std::string_view kBackend = MODELCAST_TEST_TRANSPORT;

// The host part of the addresses test transports listen on; empty when the backend cannot run here.
inline std::string Host() {
  if (kBackend == "ucx") return "127.0.0.1";
  for (const auto& d : FindRdmaDevices()) {
    if (!d.addresses.empty()) return d.addresses.front();
  }
  return "";
}

inline std::string WhyNot() {
  if (!VerbsCompiled()) return "this build has no verbs backend";
  return FindRdmaDevices().empty() ? "no RDMA device on this machine (ibv_get_device_list found none)"
                                   : "no RDMA device has an IPv4 address";
}

// Skips the calling test when the backend cannot run here.
#define MODELCAST_SKIP_WITHOUT_BACKEND()                                                        \
  do {                                                                                          \
    if (::modelcast::fabric::testing::Host().empty()) GTEST_SKIP() << ::modelcast::fabric::testing::WhyNot(); \
  } while (0)

// `thread`: where the progress thread runs.
inline std::unique_ptr<Transport> Make(const std::string& name, const ThreadPlacement& thread = {}) {
  UcxOptions o;
  o.name = name;
  o.thread = thread;
  o.tls = "tcp";
  o.listen_address = Host() + ":0";
  auto t = MakeTransport(std::string(kBackend), o);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  if (!t.ok()) return nullptr;
  EXPECT_EQ((*t)->capabilities().backend, kBackend);
  EXPECT_TRUE((*t)->Start().ok());
  return std::move(*t);
}

// Runs an asynchronous operation and waits for its completion (at most `seconds`).
inline Status Wait(std::function<void(Done)> op, double seconds = 10) {
  auto p = std::make_shared<std::promise<Status>>();
  auto f = p->get_future();
  op([p](Status s) { p->set_value(s); });
  if (f.wait_for(std::chrono::duration<double>(seconds)) != std::future_status::ready)
    return DeadlineExceeded("test wait");
  return f.get();
}

}  // namespace modelcast::fabric::testing
