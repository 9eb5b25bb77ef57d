// The agent's configuration: the fabric's share of the node (fabric.nice, fabric.max_send_rate),
// its defaults, and bad values refused with the line and key that are wrong.
#include <gtest/gtest.h>

#include <string>

#include "modelcast/agent/agent.h"
#include "modelcast/common/config.h"

namespace modelcast::agent {
namespace {

Result<AgentConfig> Parse(const std::string& fabric,
                          const std::string& coordinator = "{address: 127.0.0.1, port: 7300}") {
  const std::string text = "node: n1\ncoordinator: " + coordinator + "\n" + fabric +
                           "store: {ssd_dir: /tmp/x, ssd_capacity: 1GiB, host_capacity: 64MiB}\n"
                           "security: {insecure: true}\n";
  auto root = ConfigNode::ParseString(text, "agent.yaml");
  if (!root.ok()) return root.status();
  return AgentConfig::FromConfig(*root);
}

TEST(AgentConfigTest, TheFabricYieldsToServingByDefault) {
  auto c = Parse("");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->fabric.thread.nice, kDefaultFabricNice);
  EXPECT_TRUE(c->fabric.thread.cpus.empty());  // wherever the agent runs
  EXPECT_EQ(c->max_send_rate, 0);  // no bound on the link unless asked
  EXPECT_EQ(c->pieces, 2u);  // relays forward slices in halves
}

TEST(AgentConfigTest, TheFabricsShareIsConfigured) {
  auto c = Parse("fabric: {listen: '127.0.0.1:0', nice: 0, cpus: '2-3,6', max_send_rate: 40Gbit}\n");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->fabric.thread.nice, 0);
  EXPECT_EQ(c->fabric.thread.cpus, (std::vector<int>{2, 3, 6}));
  EXPECT_DOUBLE_EQ(c->max_send_rate, 5e9);  // bytes/s
  c = Parse("fabric: {nice: 19, pieces: 8}\n");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->fabric.thread.nice, 19);
  EXPECT_EQ(c->pieces, 8u);
  c = Parse("fabric: {pieces: 1}\n");  // whole slices
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->pieces, 1u);
}

TEST(AgentConfigTest, BadSharesAreRefusedNamingTheKey) {
  auto expect_error = [](const std::string& fabric, const std::string& want) {
    auto c = Parse(fabric);
    ASSERT_FALSE(c.ok()) << fabric;
    EXPECT_NE(c.status().message().find(want), std::string::npos) << c.status().ToString();
    EXPECT_EQ(c.status().message().rfind("agent.yaml:", 0), 0u) << c.status().ToString();
  };
  expect_error("fabric: {nice: 20}\n", "fabric.nice: must be between 0 and 19");
  expect_error("fabric: {nice: -5}\n", "fabric.nice: must be between 0 and 19");
  expect_error("fabric: {nice: low}\n", "fabric.nice");
  expect_error("fabric: {cpus: '3-1'}\n", "fabric.cpus: '3-1' is not a CPU list like 0-3,8 ('3-1' is not a range low-high)");
  expect_error("fabric: {cpus: '1,1'}\n", "fabric.cpus: '1,1' is not a CPU list like 0-3,8 (CPU 1 is listed twice)");
  expect_error("fabric: {cpus: ''}\n", "fabric.cpus");
  expect_error("fabric: {max_send_rate: 0Gbit}\n", "fabric.max_send_rate: must be more than 0");
  expect_error("fabric: {max_send_rate: fast}\n", "fabric.max_send_rate");
  expect_error("fabric: {pieces: 0}\n", "fabric.pieces: must be between 1 and 1024 (1: whole slices)");
  expect_error("fabric: {pieces: many}\n", "fabric.pieces");
  expect_error("fabric: {nicee: 5}\n", "fabric.nicee: unknown key");
}

// A head of several coordinators: the agent knows every one (and talks to whichever listens).
TEST(AgentConfigTest, EveryCoordinatorOfAHeadIsListed) {
  auto c = Parse("");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->coordinators.size(), 1u);
  EXPECT_EQ(c->coordinators[0].ToString(), "127.0.0.1:7300");
  c = Parse("", "{endpoints: ['10.0.0.1:7300', 'head-2:7301', '[::1]:7302']}");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->coordinators.size(), 3u);
  EXPECT_EQ(c->coordinators[1].host, "head-2");
  EXPECT_EQ(c->coordinators[1].port, 7301);
  EXPECT_EQ(c->coordinators[2].host, "[::1]");
  auto expect_error = [](const std::string& coordinator, const std::string& want) {
    auto c = Parse("", coordinator);
    ASSERT_FALSE(c.ok()) << coordinator;
    EXPECT_NE(c.status().message().find(want), std::string::npos) << c.status().ToString();
  };
  expect_error("{endpoints: []}", "coordinator.endpoints: must name at least one coordinator");
  expect_error("{endpoints: ['10.0.0.1']}", "'10.0.0.1' is not host:port");
  expect_error("{endpoints: ['10.0.0.1:99999']}", "the port must be a number from 1 to 65535");
  expect_error("{endpoints: ['a:1,b:2']}", "must be one host:port");
  expect_error("{endpoints: 'a:1'}", "must be a list of host:port");
  expect_error("{endpoints: ['a:1'], port: 7300}", "has both endpoints and address/port");
}

TEST(AgentConfigTest, AddressListsParse) {
  auto e = rpc::ParseEndpoints("a:1, b:2,c:65535");
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  ASSERT_EQ(e->size(), 3u);
  EXPECT_EQ((*e)[1].ToString(), "b:2");
  EXPECT_EQ(rpc::ParseEndpoints("a:1,,b:2").status().message(), "empty entry in the address list 'a:1,,b:2'");
  EXPECT_EQ(rpc::ParseEndpoints(":80").status().message(), "':80' is not host:port (in ':80')");
  EXPECT_FALSE(rpc::ParseEndpoints("a:0").ok());
  EXPECT_FALSE(rpc::ParseEndpoints("a:x1").ok());
  EXPECT_FALSE(rpc::ParseEndpoints("").ok());
}

}  // namespace
}  // namespace modelcast::agent
