// modelcast's RPC security on real Thrift servers over loopback: tokens checked on every call,
// mutual TLS with certificates made by openssl for the test, plaintext refused unless the
// config says insecure, and a refused call changes nothing.
#include <gtest/gtest.h>
#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/transport/TBufferTransports.h>
#include <thrift/transport/TSocket.h>
#include <thrift/transport/TTransportException.h>

#include <atomic>

#include "Membership.h"
#include "modelcast/rpc/server.h"
#include "support/process.h"
#include "support/temp_dir.h"

namespace modelcast::rpc {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr const char* kToken = "0123456789abcdef-test-token";

// The layer under test is the server and CheckCaller; this handler only counts what got through.
class CountingMembership : public MembershipIf {
 public:
  explicit CountingMembership(SecurityConfig security) : security_(std::move(security)) {}
  void join(JoinResponse& out, const JoinRequest& req) override {
    Check(req.header, "join");
    joins++;
    out.cluster = "test";
    out.epoch = 7;
  }
  void heartbeat(HeartbeatResponse& out, const HeartbeatRequest& req) override {
    Check(req.header, "heartbeat");
    out.rejoin = false;
  }
  void reportProgress(const ProgressReport& report) override { Check(report.header, "reportProgress"); }
  std::atomic<int> joins{0};

 private:
  void Check(const RequestHeader& h, const char* method) {
    Status st = CheckCaller(security_, h, method);
    if (!st.ok()) {
      NotAuthorized e;
      e.message = st.message();
      throw e;
    }
  }
  SecurityConfig security_;
};

struct Served {
  std::shared_ptr<CountingMembership> handler;
  std::unique_ptr<RpcServer> server;
};

Served Serve(const SecurityConfig& security, const std::string& address = "127.0.0.1") {
  Served s;
  s.handler = std::make_shared<CountingMembership>(security);
  auto server = RpcServer::Start(std::make_shared<MembershipProcessor>(s.handler), address, 0, security);
  EXPECT_TRUE(server.ok()) << server.status().ToString();
  if (server.ok()) s.server = std::move(*server);
  return s;
}

JoinRequest Join(const SecurityConfig& client) {
  JoinRequest req;
  req.header = MakeHeader(client, "node-1");
  req.node = "node-1";
  return req;
}

TEST(RpcSecurityTest, TokenIsCheckedOnEveryCall) {
  SecurityConfig server_side;
  server_side.token = kToken;
  auto s = Serve(server_side);
  ASSERT_TRUE(s.server);
  auto c = Connect("127.0.0.1", s.server->port(), server_side);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  MembershipClient client((*c)->protocol);
  JoinResponse resp;
  client.join(resp, Join(server_side));
  EXPECT_EQ(resp.epoch, 7);
  EXPECT_EQ(s.handler->joins.load(), 1);

  SecurityConfig none;  // no token in the header
  none.insecure = true;
  EXPECT_THROW(client.join(resp, Join(none)), NotAuthorized);
  SecurityConfig wrong;
  wrong.token = "0123456789abcdef-test-tokeN";
  try {
    client.join(resp, Join(wrong));
    FAIL() << "a wrong token was accepted";
  } catch (const NotAuthorized& e) {
    EXPECT_EQ(e.message, "join: wrong token");
  }
  HeartbeatResponse hb;
  HeartbeatRequest h;
  h.header = MakeHeader(wrong, "node-1");
  EXPECT_THROW(client.heartbeat(hb, h), NotAuthorized);
  EXPECT_EQ(s.handler->joins.load(), 1);  // the refused calls changed nothing
}

// A request that claims more than it may is refused while it is decoded, before any credential
// is looked at and before the server waits for (or allocates) what it claims: a frame past the
// frame limit, a string past the string limit, a list past the container limit, and a list
// within the limits that its frame is too short to hold (Thrift's generated code would size the
// list before reading it). The server closes the connection at once, and goes on serving others.
TEST(RpcSecurityTest, OversizedClaimsAreRefusedWhileDecoding) {
  using namespace apache::thrift;
  SecurityConfig server_side;
  server_side.token = kToken;
  auto s = Serve(server_side);
  ASSERT_TRUE(s.server);
  enum Claim { kFrame, kString, kList };
  for (const auto& [what, claim, count] :
       {std::tuple{"a frame", kFrame, int64_t{kMaxFrameBytes} + 1},
        std::tuple{"a string", kString, int64_t{kMaxStringBytes} + (16 << 20)},
        std::tuple{"a list", kList, int64_t{kMaxContainerElements} + 1},
        std::tuple{"a list within the limits", kList, int64_t{kMaxContainerElements}}}) {
    SCOPED_TRACE(what);
    auto socket = std::make_shared<transport::TSocket>("127.0.0.1", s.server->port());
    socket->setRecvTimeout(5000);
    auto trans = std::make_shared<transport::TFramedTransport>(socket);
    protocol::TBinaryProtocol out(trans);
    trans->open();
    if (claim == kFrame) {
      const uint32_t n = static_cast<uint32_t>(count);
      const uint8_t length[4] = {static_cast<uint8_t>(n >> 24), static_cast<uint8_t>(n >> 16),
                                 static_cast<uint8_t>(n >> 8), static_cast<uint8_t>(n)};
      socket->write(length, 4);  // a frame's length, and then nothing of it
    } else {
      out.writeMessageBegin("join", protocol::T_CALL, 1);
      out.writeStructBegin("join_args");
      out.writeFieldBegin("req", protocol::T_STRUCT, 1);
      out.writeStructBegin("JoinRequest");
      if (claim == kString) {
        out.writeFieldBegin("node", protocol::T_STRING, 2);
        out.writeI32(static_cast<int32_t>(count));  // a string's length, and then nothing of it
      } else {
        // NodeInventory.tiers (field 1 of the inventory, field 5 of the request): a list claim.
        out.writeFieldBegin("inventory", protocol::T_STRUCT, 5);
        out.writeStructBegin("NodeInventory");
        out.writeFieldBegin("tiers", protocol::T_LIST, 1);
        out.writeListBegin(protocol::T_STRUCT, static_cast<uint32_t>(count));
      }
      trans->flush();  // the frame: the claim, and then nothing of what it claims
    }
    const auto t0 = std::chrono::steady_clock::now();
    uint8_t byte;
    bool closed = false;
    try {
      closed = socket->read(&byte, 1) == 0;
    } catch (const transport::TTransportException& e) {
      closed = e.getType() == transport::TTransportException::END_OF_FILE;
      EXPECT_NE(e.getType(), transport::TTransportException::TIMED_OUT) << "the server waited for the claimed bytes";
    }
    EXPECT_TRUE(closed);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 4s);
  }
  auto c = Connect("127.0.0.1", s.server->port(), server_side);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  MembershipClient client((*c)->protocol);
  JoinResponse resp;
  client.join(resp, Join(server_side));
  EXPECT_EQ(s.handler->joins.load(), 1);
}

TEST(RpcSecurityTest, PlaintextWithoutCredentialsOnlyWhenSaid) {
  SecurityConfig nothing;
  auto server = RpcServer::Start(std::make_shared<MembershipProcessor>(std::make_shared<CountingMembership>(nothing)),
                                 "127.0.0.1", 0, nothing);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().message(), "security: configure tls or a token, or say insecure: true for plaintext");

  auto cfg = ConfigNode::ParseString("security: {}\n", "agent.yaml");
  ASSERT_TRUE(cfg.ok());
  EXPECT_EQ(SecurityConfig::FromConfig(*cfg->Child("security")).status().message(),
            "agent.yaml:1: security: configure tls or a token (token_file), or say insecure: true for plaintext");
  cfg = ConfigNode::ParseString("security:\n  token: short\n", "agent.yaml");
  EXPECT_EQ(SecurityConfig::FromConfig(*cfg->Child("security")).status().message(),
            "agent.yaml:2: security.token: must be at least 16 characters");
  cfg = ConfigNode::ParseString("security:\n  insecure: true\n", "agent.yaml");
  auto ok = SecurityConfig::FromConfig(*cfg->Child("security"));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_TRUE(ok->insecure);
}

TEST(RpcSecurityTest, ServerBindsOnlyToItsAddress) {
  SecurityConfig security;
  security.token = kToken;
  auto s = Serve(security, "127.0.0.1");
  ASSERT_TRUE(s.server);
  EXPECT_TRUE(Connect("127.0.0.1", s.server->port(), security).ok());
  auto other = Connect("127.0.0.2", s.server->port(), security, 1000);
  EXPECT_FALSE(other.ok());
}

// A CA, and certificates it signs (or a stranger's), made with openssl for the test.
class Certificates {
 public:
  explicit Certificates(const fs::path& dir) : dir_(dir) {}
  bool MakeCa(const std::string& name) {
    return Run({"/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", Path(name + ".key"), "-out", Path(name + ".pem"), "-days", "1", "-subj",
                "/CN=" + name});
  }
  bool Issue(const std::string& ca, const std::string& name) {
    testing::WriteAll(dir_ / (name + ".ext"), "subjectAltName=IP:127.0.0.1\n");
    return Run({"/usr/bin/openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", Path(name + ".key"), "-out", Path(name + ".csr"), "-subj", "/CN=" + name}) &&
           Run({"/usr/bin/openssl", "x509", "-req", "-in", Path(name + ".csr"), "-CA", Path(ca + ".pem"), "-CAkey",
                Path(ca + ".key"), "-CAcreateserial", "-out", Path(name + ".pem"), "-days", "1", "-extfile",
                Path(name + ".ext")});
  }
  SecurityConfig Tls(const std::string& ca, const std::string& name) {
    SecurityConfig s;
    s.tls_cert = Path(name + ".pem");
    s.tls_key = Path(name + ".key");
    s.tls_ca = Path(ca + ".pem");
    return s;
  }

 private:
  std::string Path(const std::string& f) const { return (dir_ / f).string(); }
  bool Run(const std::vector<std::string>& argv) {
    auto r = testing::RunProcess(argv, 60s);
    if (r.exit_code != 0) ADD_FAILURE() << argv[1] << ": " << r.err;
    return r.exit_code == 0;
  }
  fs::path dir_;
};

TEST(RpcSecurityTest, MutualTlsAdmitsOnlyClientsWithCertificatesFromTheCa) {
  if (testing::RunProcess({"/usr/bin/openssl", "version"}, 10s).exit_code != 0) GTEST_SKIP() << "no openssl command";
  testing::TempDir dir;
  Certificates certs(dir.path());
  ASSERT_TRUE(certs.MakeCa("ca") && certs.MakeCa("stranger-ca"));
  ASSERT_TRUE(certs.Issue("ca", "server") && certs.Issue("ca", "client") && certs.Issue("stranger-ca", "intruder"));
  auto s = Serve(certs.Tls("ca", "server"));
  ASSERT_TRUE(s.server);

  auto c = Connect("127.0.0.1", s.server->port(), certs.Tls("ca", "client"));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  MembershipClient client((*c)->protocol);
  JoinResponse resp;
  client.join(resp, Join(certs.Tls("ca", "client")));
  EXPECT_EQ(s.handler->joins.load(), 1);

  // A certificate from another CA, and no TLS at all: no call gets through.
  auto intruder = Connect("127.0.0.1", s.server->port(), certs.Tls("ca", "intruder"));
  if (intruder.ok()) {
    MembershipClient bad((*intruder)->protocol);
    EXPECT_ANY_THROW(bad.join(resp, Join(certs.Tls("ca", "intruder"))));
  }
  SecurityConfig plain;
  plain.insecure = true;
  auto plaintext = Connect("127.0.0.1", s.server->port(), plain, 2000);
  if (plaintext.ok()) {
    MembershipClient bad((*plaintext)->protocol);
    EXPECT_ANY_THROW(bad.join(resp, Join(plain)));
  }
  EXPECT_EQ(s.handler->joins.load(), 1);
}

}  // namespace
}  // namespace modelcast::rpc
