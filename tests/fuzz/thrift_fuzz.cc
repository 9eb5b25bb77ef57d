// Fuzzes what a modelcast server does with the bytes of a request before any credential is
// looked at: the message envelope, the service name (the coordinator multiplexes Coordinator,
// Membership and Router on one port; an agent serves Agent alone), the method and the decoding
// of its arguments, with the servers' own transport, protocol and limits (a frame gathered whole,
// rpc::ServerProtocolFactory).
// The handlers are Thrift's generated null ones: what is fuzzed is the decoding, which must end
// in a decoded request or a Thrift exception, never a crash, a hang or an allocation past the
// limits (the fuzzer's -malloc_limit_mb).
#include <cstdint>
#include <memory>
#include <vector>

#include <thrift/TApplicationException.h>
#include <thrift/TOutput.h>
#include <thrift/processor/TMultiplexedProcessor.h>
#include <thrift/transport/TBufferTransports.h>

#include "Agent.h"
#include "Coordinator.h"
#include "Membership.h"
#include "Router.h"

#include "modelcast/rpc/server.h"

namespace {

using apache::thrift::TException;
using apache::thrift::TMultiplexedProcessor;
using apache::thrift::transport::TMemoryBuffer;

struct Processors {
  std::shared_ptr<TMultiplexedProcessor> coordinator = std::make_shared<TMultiplexedProcessor>();
  std::shared_ptr<apache::thrift::TProcessor> agent;
  Processors() {
    using namespace modelcast::rpc;
    // Thrift prints a line for each malformed message; the fuzzer makes millions.
    apache::thrift::GlobalOutput.setOutputFunction([](const char*) {});
    coordinator->registerProcessor("Coordinator",
                                   std::make_shared<CoordinatorProcessor>(std::make_shared<CoordinatorNull>()));
    coordinator->registerProcessor("Membership",
                                   std::make_shared<MembershipProcessor>(std::make_shared<MembershipNull>()));
    coordinator->registerProcessor("Router", std::make_shared<RouterProcessor>(std::make_shared<RouterNull>()));
    agent = std::make_shared<AgentProcessor>(std::make_shared<AgentNull>());
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Processors processors;
  if (size < 1) return 0;
  // The first byte picks the server; the rest is a message, which arrives on its socket in a frame.
  const uint32_t length = static_cast<uint32_t>(size - 1);
  std::vector<uint8_t> frame = {static_cast<uint8_t>(length >> 24), static_cast<uint8_t>(length >> 16),
                                static_cast<uint8_t>(length >> 8), static_cast<uint8_t>(length)};
  frame.insert(frame.end(), data + 1, data + size);
  auto in = std::make_shared<TMemoryBuffer>(frame.data(), static_cast<uint32_t>(frame.size()), TMemoryBuffer::OBSERVE);
  auto out = std::make_shared<TMemoryBuffer>();
  auto factory = modelcast::rpc::ServerProtocolFactory();
  auto iprot = factory->getProtocol(modelcast::rpc::FramedTransport(in));
  auto oprot = factory->getProtocol(modelcast::rpc::FramedTransport(out));
  try {
    // A connection is served message after message until its bytes run out.
    apache::thrift::TProcessor& p =
        (data[0] & 1) ? *processors.agent : static_cast<apache::thrift::TProcessor&>(*processors.coordinator);
    for (int i = 0; i < 64 && in->available_read() > 0; ++i) {
      if (!p.process(iprot, oprot, nullptr)) break;
    }
  } catch (const TException&) {
  }
  return 0;
}
