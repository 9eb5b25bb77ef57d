// The Python bindings (what a Python autoscaler uses) and the C++ ones agree on the wire: a
// request written by C++ is read by Debian's python3-thrift, which answers with a status C++
// reads back. Runs a real python3 process.
#include <gtest/gtest.h>
#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/transport/TBufferTransports.h>

#include "modelcast_types.h"
#include "support/process.h"
#include "support/temp_dir.h"

namespace modelcast {
namespace {

using apache::thrift::protocol::TBinaryProtocol;
using apache::thrift::transport::TMemoryBuffer;

constexpr const char* kPython = "/usr/bin/python3";  // Debian's, where python3-thrift installs

TEST(ThriftPythonTest, PythonReadsWhatCppWritesAndAnswers) {
  auto probe = testing::RunProcess({kPython, "-c", "import thrift"}, std::chrono::seconds(30));
  if (probe.exit_code != 0) GTEST_SKIP() << "Debian's python3-thrift is not installed: " << probe.err;
  testing::TempDir dir;
  rpc::ScaleOutRequest req;
  req.header.__set_token("s3cret");
  req.header.__set_caller("autoscaler");
  req.header.__set_request_id("op-42");
  req.model = "llama-2-13b";
  req.replicas = 3;
  req.options.__set_algorithm("lambdapipe");
  req.options.__set_targets({"node1", "node2", "node3"});
  req.options.__set_deadline_s(90.5);
  req.options.__set_dry_run(false);
  req.__isset.options = true;
  auto buf = std::make_shared<TMemoryBuffer>();
  TBinaryProtocol proto(buf);
  req.write(&proto);
  testing::WriteAll(dir / "req.bin", buf->getBufferAsString());

  setenv("PYTHONPATH", MODELCAST_TEST_GEN_PY, 1);
  auto r = testing::RunProcess({kPython, testing::SourcePath("tests/support/thrift_roundtrip.py"),
                                (dir / "req.bin").string(), (dir / "status.bin").string()},
                               std::chrono::seconds(60));
  unsetenv("PYTHONPATH");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "{\"model\": \"llama-2-13b\", \"replicas\": 3, \"token\": \"s3cret\", \"caller\": \"autoscaler\", "
            "\"request_id\": \"op-42\", \"algorithm\": \"lambdapipe\", \"targets\": [\"node1\", \"node2\", \"node3\"], "
            "\"deadline_s\": 90.5, \"dry_run\": false}\n");

  auto in = std::make_shared<TMemoryBuffer>();
  const std::string bytes = testing::ReadAll(dir / "status.bin");
  in->write(reinterpret_cast<const uint8_t*>(bytes.data()), static_cast<uint32_t>(bytes.size()));
  TBinaryProtocol reader(in);
  rpc::OperationStatus status;
  status.read(&reader);
  EXPECT_EQ(status.id, "op-42");
  EXPECT_EQ(status.kind, rpc::OperationKind::SCALE_OUT);
  EXPECT_EQ(status.state, rpc::OperationState::RUNNING);
  EXPECT_EQ(status.model, "llama-2-13b");
  ASSERT_EQ(status.nodes.size(), 3u);
  EXPECT_EQ(status.nodes[2].node, "node3");
  EXPECT_EQ(status.nodes[2].bytes_received, 2ll << 30);
  EXPECT_DOUBLE_EQ(status.nodes[2].rate_bytes_per_s, 2.5e9);
  EXPECT_EQ(status.nodes[2].role, rpc::NodeRole::TARGET);
  EXPECT_EQ(status.nodes[2].state, rpc::NodeState::RECEIVING);
  EXPECT_FALSE(status.__isset.finished_unix);
}

}  // namespace
}  // namespace modelcast
