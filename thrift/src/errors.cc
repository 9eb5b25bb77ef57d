#include "modelcast/rpc/errors.h"

#include <thrift/Thrift.h>

namespace modelcast::rpc {
namespace {

ErrorCode::type ToErrorCode(StatusCode c) {
  switch (c) {
    case StatusCode::kNotFound:
      return ErrorCode::NOT_FOUND;
    case StatusCode::kAlreadyExists:
      return ErrorCode::ALREADY_EXISTS;
    case StatusCode::kCorruption:
      return ErrorCode::CORRUPTION;
    case StatusCode::kIOError:
      return ErrorCode::IO_ERROR;
    case StatusCode::kOutOfRange:
      return ErrorCode::OUT_OF_RANGE;
    case StatusCode::kResourceExhausted:
      return ErrorCode::RESOURCE_EXHAUSTED;
    case StatusCode::kFailedPrecondition:
      return ErrorCode::FAILED_PRECONDITION;
    case StatusCode::kDeadlineExceeded:
      return ErrorCode::DEADLINE_EXCEEDED;
    case StatusCode::kCancelled:
      return ErrorCode::CANCELLED;
    case StatusCode::kUnimplemented:
      return ErrorCode::UNIMPLEMENTED;
    case StatusCode::kInternal:
      return ErrorCode::INTERNAL;
    default:
      return ErrorCode::INVALID_ARGUMENT;
  }
}

Status FromErrorCode(ErrorCode::type code, const std::string& message) {
  switch (code) {
    case ErrorCode::NOT_FOUND:
      return NotFound(message);
    case ErrorCode::ALREADY_EXISTS:
      return AlreadyExists(message);
    case ErrorCode::CORRUPTION:
      return Corruption(message);
    case ErrorCode::OUT_OF_RANGE:
      return OutOfRange(message);
    case ErrorCode::RESOURCE_EXHAUSTED:
      return ResourceExhausted(message);
    case ErrorCode::FAILED_PRECONDITION:
      return FailedPrecondition(message);
    case ErrorCode::DEADLINE_EXCEEDED:
      return DeadlineExceeded(message);
    case ErrorCode::CANCELLED:
      return Cancelled(message);
    case ErrorCode::UNIMPLEMENTED:
      return Unimplemented(message);
    case ErrorCode::INTERNAL:
      return Internal(message);
    default:
      return InvalidArgument(message);
  }
}

}  // namespace

void ThrowStatus(const Status& st) {
  if (st.code() == StatusCode::kPermissionDenied) {
    NotAuthorized e;
    e.message = st.message();
    throw e;
  }
  if (st.code() == StatusCode::kUnavailable) {
    Unavailable e;
    e.message = st.message();
    e.retry_after_ms = 1000;
    throw e;
  }
  InvalidRequest e;
  e.code = ToErrorCode(st.code());
  e.message = st.message();
  throw e;
}

Status CallStatus(const std::function<void()>& call) {
  try {
    call();
    return Status::Ok();
  } catch (const InvalidRequest& e) {
    return FromErrorCode(e.code, e.message);
  } catch (const NotAuthorized& e) {
    return PermissionDenied(e.message);
  } catch (const Unavailable& e) {
    return ::modelcast::Unavailable(e.message);
  } catch (const apache::thrift::TException& e) {
    return ::modelcast::Unavailable(e.what());
  }
}

}  // namespace modelcast::rpc
