// Status and Result<T>: how every fallible modelcast function reports failure.
//
// A Status is a code plus a message that names the thing that failed (file, model, slice,
// peer). Exceptions never cross a module boundary; Thrift exceptions exist only at the RPC
// edge and are translated from Status there.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace modelcast {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument,     // the caller's input is wrong (bad flag, malformed file, bad request)
  kNotFound,            // a named thing does not exist
  kAlreadyExists,       // a thing that must not exist does
  kCorruption,          // stored or received bytes fail a checksum or a structural check
  kIOError,             // the operating system refused a read, write, open, ...
  kOutOfRange,          // an offset or index past a bound
  kResourceExhausted,   // a capacity would be exceeded
  kFailedPrecondition,  // the system is not in a state where the call makes sense
  kUnavailable,         // a peer or service cannot be reached
  kDeadlineExceeded,    // a wait ran past its deadline
  kCancelled,
  kUnimplemented,
  kPermissionDenied,
  kInternal,  // a broken invariant: a bug in modelcast
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "InvalidArgument: <message>", or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "<context>: <message>". OK stays OK.
  Status WithContext(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline bool operator==(const Status& a, const Status& b) { return a.code() == b.code() && a.message() == b.message(); }

Status InvalidArgument(std::string message);
Status NotFound(std::string message);
Status AlreadyExists(std::string message);
Status Corruption(std::string message);
Status OutOfRange(std::string message);
Status ResourceExhausted(std::string message);
Status FailedPrecondition(std::string message);
Status Unavailable(std::string message);
Status DeadlineExceeded(std::string message);
Status Cancelled(std::string message);
Status Unimplemented(std::string message);
Status PermissionDenied(std::string message);
Status Internal(std::string message);
// An IOError whose message ends with strerror(err): "<what>: <strerror>".
Status IOError(std::string what, int err);
Status IOError(std::string message);

// Either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    assert(!std::get<Status>(v_).ok() && "Result constructed from an OK status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }

  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace modelcast

#define MC_CONCAT_INNER_(a, b) a##b
#define MC_CONCAT_(a, b) MC_CONCAT_INNER_(a, b)

// Returns the Status of `expr` from the enclosing function when it is not OK.
#define MC_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::modelcast::Status mc_status_ = (expr); \
    if (!mc_status_.ok()) return mc_status_; \
  } while (0)

// `lhs = value of expr`, or returns its Status from the enclosing function.
#define MC_ASSIGN_OR_RETURN(lhs, expr) MC_ASSIGN_OR_RETURN_IMPL_(MC_CONCAT_(mc_result_, __LINE__), lhs, expr)
#define MC_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
