#pragma once
// The one error type of npme: a code that decides the exit status and the HTTP
// status, and a message (lowercase, subject then reason).

#include "core/util/expected.hpp"

#include <string>
#include <string_view>

namespace npme {

enum class Errc {
  failed,       // the operation failed (exit 1, HTTP 500)
  usage,        // bad flags or arguments (exit 2, HTTP 400)
  invalid,      // invalid input: a bad name, value or body (exit 2, HTTP 400)
  not_found,    // no such package, user, token, file (exit 1, HTTP 404)
  conflict,     // stale revision, already exists (exit 1, HTTP 409)
  forbidden,    // authenticated but not allowed (exit 4, HTTP 403)
  unauthorized, // missing or wrong credentials (exit 4, HTTP 401)
  too_large,    // body over the limit (exit 1, HTTP 413)
  unreachable,  // the instance cannot be reached (exit 3, HTTP 502)
  verify,       // checksum or integrity mismatch (exit 5, HTTP 400)
  precondition, // refused by a precondition (exit 6, HTTP 409)
  timeout,      // timed out waiting (exit 7, HTTP 504)
  interrupted,  // interrupted by a signal (exit 130)
  io,           // a file system or database failure (exit 1, HTTP 500)
  unavailable,  // refused for now, nothing done: too few synchronous replicas (exit 6, HTTP 503)
  no_space,     // the device is full; nothing was stored (exit 1, HTTP 507)
};

struct Error {
  Errc code = Errc::failed;
  std::string message;
};

template <class T>
using Expected = util::BasicExpected<T, Error>;

inline util::Unexpected<Error> make_error(Errc code, std::string message) {
  return {Error{code, std::move(message)}};
}

// Returns the stable machine-readable name of `code`, used in JSON errors.
std::string_view errc_name(Errc code);

// Parses a name made by errc_name(); unknown names give Errc::failed.
Errc errc_from_name(std::string_view name);

// Returns the process exit status for `code` (DESIGN.md §4).
int exit_code(Errc code);

// Returns the HTTP status that reports `code`.
int http_status(Errc code);

} // namespace npme

// Evaluates `expr` (an Expected); on error returns the error from the caller.
#define NPME_TRY(expr)                                                                                                 \
  do {                                                                                                                 \
    auto&& npme_try_result_ = (expr);                                                                                  \
    if (!npme_try_result_) {                                                                                           \
      return ::npme::util::Unexpected<::npme::Error>{std::move(npme_try_result_).error()};                             \
    }                                                                                                                  \
  } while (false)

// Declares `var` from the value of `expr` (an Expected) or returns its error.
#define NPME_TRY_ASSIGN(var, expr)                                                                                     \
  auto npme_concat_(npme_tmp_, __LINE__) = (expr);                                                                     \
  if (!npme_concat_(npme_tmp_, __LINE__)) {                                                                            \
    return ::npme::util::Unexpected<::npme::Error>{std::move(npme_concat_(npme_tmp_, __LINE__)).error()};              \
  }                                                                                                                    \
  var = std::move(*npme_concat_(npme_tmp_, __LINE__))
#define npme_concat_inner_(a, b) a##b
#define npme_concat_(a, b) npme_concat_inner_(a, b)
