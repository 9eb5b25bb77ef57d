#include <gtest/gtest.h>
#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/protocol/TCompactProtocol.h>
#include <thrift/transport/TBufferTransports.h>

#include "modelcast_types.h"

namespace modelcast {
namespace {

using apache::thrift::protocol::TBinaryProtocol;
using apache::thrift::protocol::TCompactProtocol;
using apache::thrift::transport::TMemoryBuffer;

// The generated code compiles, links against Debian's libthrift, and round-trips.
template <typename Protocol>
void RoundTrip() {
  rpc::ModelSummary in;
  in.name = "llama-70b";
  in.dtype = "bf16";
  in.num_layers = 80;
  in.num_blocks = 8;
  in.num_slices = 8400;
  in.slice_bytes = 16 << 20;
  in.total_bytes = 140'000'000'000;
  in.parameters = 70'000'000'000;
  auto buf = std::make_shared<TMemoryBuffer>();
  Protocol proto(buf);
  in.write(&proto);
  rpc::ModelSummary out;
  out.read(&proto);
  EXPECT_EQ(in, out);
  EXPECT_EQ(out.total_bytes, 140'000'000'000);
}

TEST(ThriftTest, ModelSummaryRoundTrips) {
  RoundTrip<TBinaryProtocol>();
  RoundTrip<TCompactProtocol>();
}

TEST(ThriftTest, ExceptionsCarryCodeAndMessage) {
  rpc::InvalidRequest e;
  e.code = rpc::ErrorCode::NOT_FOUND;
  e.message = "unknown model 'x'";
  auto buf = std::make_shared<TMemoryBuffer>();
  TBinaryProtocol proto(buf);
  e.write(&proto);
  rpc::InvalidRequest back;
  back.read(&proto);
  EXPECT_EQ(back.code, rpc::ErrorCode::NOT_FOUND);
  EXPECT_EQ(back.message, "unknown model 'x'");
}

}  // namespace
}  // namespace modelcast
