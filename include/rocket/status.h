// Status and Result<T>: errors as values across the whole public API.
//
// Every fallible call returns a Status (no value) or a Result<T> (a value or a
// Status). No exception crosses the public API. Codes follow abseil's meaning so
// the caller can tell whether to retry:
//
//   kUnavailable        transient: a full ring, a busy peer, a peer that went
//                       away. Retry (after reconnecting, for a lost peer).
//   kResourceExhausted  a pool or quota is used up now; retry after freeing.
//   kInvalidArgument    the request itself is wrong; retrying cannot help.
//   kPermissionDenied   the caller is not allowed; retrying cannot help.
//   kDeadlineExceeded   the operation did not finish in time.
//   kFailedPrecondition the system is not in a state for this (version
//                       mismatch, closed session).
//   kNotFound           the named thing (op, job) does not exist here.
//   kDataLoss           a peer sent something corrupt or violated the protocol.
//   kInternal           an invariant broke or the OS failed unexpectedly.
//
//   rocket::Result<int> parse(std::string_view s);
//   auto r = parse("42");
//   if (!r.ok()) return r.status();
//   use(*r);
//
// Not for programming errors: those abort through ROCKET_CHECK.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace rocket {

enum class StatusCode : int32_t {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
};

// Largest valid code; values from a peer above it are rejected.
inline constexpr int32_t kMaxStatusCode = 15;

std::string_view status_code_name(StatusCode code) noexcept;

// Thread safety: a Status is a value; distinct objects may be used from
// distinct threads freely.
class [[nodiscard]] Status {
 public:
  Status() noexcept = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}


  bool ok() const noexcept { return code_ == StatusCode::kOk; }
  StatusCode code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }
  // "RESOURCE_EXHAUSTED: client pool has 12 bytes free, 64 needed".
  std::string to_string() const;

  // Marks a status as deliberately dropped.
  void ignore_error() const noexcept {}

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status ok_status() noexcept { return Status(); }
inline Status invalid_argument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status resource_exhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status permission_denied(std::string m) { return {StatusCode::kPermissionDenied, std::move(m)}; }
inline Status deadline_exceeded(std::string m) { return {StatusCode::kDeadlineExceeded, std::move(m)}; }
inline Status failed_precondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
inline Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status data_loss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status internal_error(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
inline Status unimplemented(std::string m) { return {StatusCode::kUnimplemented, std::move(m)}; }
inline Status cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }
// An OS call failed: the message carries the call's name and strerror(err).
Status errno_status(std::string_view what, int err);

namespace detail {
[[noreturn]] void check_failed(const char* file, int line, const char* expr, const char* msg) noexcept;
}  // namespace detail

// Always-on check for internal invariants (never for peer input): aborts with
// the location and message.
#define ROCKET_CHECK(cond, msg)                                               \
  do {                                                                        \
    if (!(cond)) ::rocket::detail::check_failed(__FILE__, __LINE__, #cond, msg); \
  } while (0)

// A value of type T, or the Status that explains why there is none.
// Thread safety: as for T.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {  // NOLINT: implicit by design
    ROCKET_CHECK(!status_.ok(), "Result constructed from an OK status without a value");
  }

  bool ok() const noexcept { return value_.has_value(); }
  const Status& status() const noexcept { return status_; }

  T& value() & {
    ROCKET_CHECK(ok(), status_.message().c_str());
    return *value_;
  }
  const T& value() const& {
    ROCKET_CHECK(ok(), status_.message().c_str());
    return *value_;
  }
  T&& value() && {
    ROCKET_CHECK(ok(), status_.message().c_str());
    return std::move(*value_);
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace rocket

// Returns the status of `expr` from the enclosing function if it is not OK.
#define ROCKET_RETURN_IF_ERROR(expr)            \
  do {                                          \
    ::rocket::Status rocket_status_ = (expr);   \
    if (!rocket_status_.ok()) return rocket_status_; \
  } while (0)

#define ROCKET_CONCAT_INNER_(a, b) a##b
#define ROCKET_CONCAT_(a, b) ROCKET_CONCAT_INNER_(a, b)
// `ROCKET_ASSIGN_OR_RETURN(auto x, MakeX());`
#define ROCKET_ASSIGN_OR_RETURN(lhs, expr) \
  ROCKET_ASSIGN_OR_RETURN_IMPL_(ROCKET_CONCAT_(rocket_result_, __LINE__), lhs, expr)
#define ROCKET_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()
