#pragma once
// The HTTP request and response that handlers are written against. Beast and
// Asio stay inside core/http/server.cpp; curl inside core/http/client.cpp.

#include "core/util/fs.hpp"

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace npme::http {

// Header fields with case-insensitive lookup, in arrival order.
class Headers {
public:
  void add(std::string name, std::string value);
  void set(std::string name, std::string value); // replaces every field `name`
  // Returns the first value of field `name` (case-insensitive), if any.
  std::optional<std::string_view> get(std::string_view name) const;
  // Every value of field `name`, in arrival order, joined with ", " (the
  // one list several fields of a list-valued header make, RFC 9110 5.3);
  // "" when absent.
  std::string get_all(std::string_view name) const;
  const std::vector<std::pair<std::string, std::string>>& fields() const { return m_fields; }

private:
  std::vector<std::pair<std::string, std::string>> m_fields;
};

struct Response;

// The answer of a request that its handler deferred (Request::defer()):
// whoever holds it sends the response later, from any thread. Copies share
// one answer; the first send() wins and later ones are ignored. A request
// whose every Responder is dropped unsent is answered 500, so a forgotten
// path can never leave a client hanging.
class Responder {
public:
  // What the server (or Router::dispatch) does with the answer.
  struct Sink {
    virtual ~Sink() = default;
    virtual void deliver(Response response) = 0;
  };

  Responder() = default;
  explicit Responder(std::shared_ptr<Sink> sink);

  // Sends `response`. Thread-safe, never blocks; a no-op after the first call.
  void send(Response response) const;
  // Marks the answer as given without sending anything: the server answered
  // the request otherwise (its handler threw or returned a response anyway).
  void cancel() const;
  // True once send() was called on this answer.
  bool sent() const;
  explicit operator bool() const { return m_state != nullptr; }

private:
  struct State;
  std::shared_ptr<State> m_state;
};

// A regular file: sent as a response body, read in chunks as the connection
// drains (a tarball too large to hold in memory once per request), or a
// request body kept in a file. Shared by every response that sends it;
// reads use pread(), so they never interfere.
struct FileBody {
  util::Fd fd;
  std::uint64_t size = 0;
};

struct Request {
  std::string method;                        // "GET", "PUT", ...
  std::string target;                        // raw request target, "/a%2fb?x=1"
  std::string path;                          // target without the query, still percent-encoded
  std::map<std::string, std::string> query;  // decoded query parameters
  Headers headers;
  std::string body;
  // The body in an unlinked temp file instead, for a route that takes large
  // bodies so (Body::spooled) when it is at least
  // ServerOptions::spool_min_bytes long; `body` is empty then.
  std::shared_ptr<const FileBody> body_file;
  std::string remote_address;                // peer IP, "127.0.0.1"
  // Values the router captured for `{name}` segments, percent-decoded.
  std::map<std::string, std::string> params;

  // Returns the decoded path parameter `name`, or "" when absent.
  const std::string& param(const std::string& name) const;

  // Turns this request into one answered later: the handler keeps the
  // returned Responder (it may copy what it needs of the request; the
  // request itself is gone once the handler returns) and returns
  // Response::later(). Without a server behind it (a Request made by hand),
  // returns an empty Responder.
  Responder defer() const { return defer_hook ? defer_hook() : Responder(); }
  // Set by the server and Router::dispatch.
  std::function<Responder()> defer_hook;

  // True when the handler runs on a worker: a Blocking::yes route, or a
  // Blocking::no handler that returned Response::on_worker() on its I/O
  // thread and now runs again.
  bool on_worker = false;

  // A copy of everything but the body and defer_hook: what a deferred
  // answer still needs once the handler has returned.
  Request without_body() const;
};

struct Response {
  int status = 200;
  Headers headers;              // Content-Type etc.; Content-Length is set by the server
  std::string body;             // used when `shared_body` and `file_body` are null
  // A body shared with a cache (a tarball, a serialized packument), sent
  // without copying. Takes precedence over `body`.
  std::shared_ptr<const std::string> shared_body;
  // A file streamed from disk. Takes precedence over both. A file that ends
  // early while it is sent closes the connection (the client sees a short
  // body, never a wrong one).
  std::shared_ptr<const FileBody> file_body;

  // A JSON response with `body` already serialized.
  static Response json(int status, std::string body);
  // A JSON response sharing `body`.
  static Response json(int status, std::shared_ptr<const std::string> body);

  // The handler deferred its answer (Request::defer()): nothing is written now.
  bool deferred = false;
  static Response later() {
    Response response;
    response.deferred = true;
    return response;
  }

  // A Blocking::no handler that finds it must do slow work (a cache miss
  // to render, a file to read) returns this on its I/O thread; it is then
  // called again on a worker, with Request::on_worker set. Fast answers
  // stay on the I/O thread.
  bool run_on_worker = false;
  static Response on_worker() {
    Response response;
    response.run_on_worker = true;
    return response;
  }

  // The body in memory (empty for a file body).
  std::string_view body_view() const { return shared_body ? std::string_view(*shared_body) : std::string_view(body); }
  // The length of the body, a file body's included.
  std::uint64_t body_size() const { return file_body ? file_body->size : body_view().size(); }
};

// JSON answers at least this long are gzip-compressed for clients that
// accept it (a smaller body gains less than its gzip header costs).
inline constexpr std::size_t k_compress_min_bytes = 1024;

// The ETag of the gzip-compressed form of the representation tagged `etag`
// ("\"abc\"" → "\"abc-gzip\""), so that each form is told apart by caches.
std::string gzip_etag(std::string_view etag);

// Compresses `response` for `request` when the client accepts gzip and it
// is a successful JSON answer of at least k_compress_min_bytes that is not
// encoded already: the body, Content-Encoding, Vary and the ETag change.
void compress_if_accepted(const Request& request, Response& response);

// Percent-decodes `text`; '+' is kept as is. Returns nullopt on a malformed
// escape ("%zz", "%4").
std::optional<std::string> percent_decode(std::string_view text);

// Percent-encodes every byte of `text` outside [A-Za-z0-9-._~] and outside `keep`.
std::string percent_encode(std::string_view text, std::string_view keep = "");

} // namespace npme::http
