// The types shared by every modelcast RPC. Bulk bytes never travel through Thrift: it
// carries plans, descriptors, inventories and progress. Services are added by the issues
// that implement them (coordinator, agent, router).

namespace cpp modelcast.rpc
namespace py modelcast_rpc

// Mirrors modelcast::StatusCode so that a Status crosses the RPC edge without losing its kind.
enum ErrorCode {
  INVALID_ARGUMENT = 1,
  NOT_FOUND = 2,
  ALREADY_EXISTS = 3,
  CORRUPTION = 4,
  IO_ERROR = 5,
  OUT_OF_RANGE = 6,
  RESOURCE_EXHAUSTED = 7,
  FAILED_PRECONDITION = 8,
  UNAVAILABLE = 9,
  DEADLINE_EXCEEDED = 10,
  CANCELLED = 11,
  UNIMPLEMENTED = 12,
  PERMISSION_DENIED = 13,
  INTERNAL = 14,
}

// The caller asked for something invalid; retrying the same request will fail the same way.
exception InvalidRequest {
  1: ErrorCode code,
  2: string message,
}

// The service cannot act now (a peer is down, the coordinator is recovering); retry later.
exception Unavailable {
  1: string message,
  2: i32 retry_after_ms,
}

// What a prepared package holds, as the coordinator and agents describe a model.
struct ModelSummary {
  1: string name,
  2: string dtype,
  3: i64 num_layers,
  4: i32 num_blocks,
  5: i32 num_slices,
  6: i64 slice_bytes,
  7: i64 total_bytes,
  8: i64 parameters,
}
