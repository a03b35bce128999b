#pragma once
// An HTTP/1.1 server on Boost.Beast: keep-alive, timeouts, a header size
// limit (431) and a body size limit decided from Content-Length before the
// body is read (413).
//
// Threads, and what may block where:
// - I/O threads (`io_threads`, one io_context each): accept, parse, write,
//   and run the handlers of `Blocking::no` routes. These handlers must
//   answer from memory: no disk writes, no SQLite writes, no hashing of
//   large bodies, no network calls, no waiting on a lock held across any of
//   those. (SQLite reads of one row are tolerated: WAL readers never wait
//   for the writer.)
// - Workers (`worker_threads`, one pool): the handlers of `Blocking::yes`
//   routes (publishes, logins, anything that fsyncs, writes SQLite or hashes).
//   A worker may block on the disk, never on the network or on another
//   instance. A `Blocking::no` handler that finds it has slow work after
//   all (a cache miss) returns Response::on_worker() and runs again on a
//   worker, with Request::on_worker set.
// - Deferred answers: a handler of either kind that must wait for something
//   slow or remote (an uplink fetch, a replica's acknowledgement) calls
//   Request::defer(), hands the Responder to whoever will finish the work,
//   and returns Response::later(). No thread of this server waits meanwhile;
//   Responder::send() from any thread posts the write to the connection's
//   I/O thread. A connection stays open (and stop() waits) until its
//   Responder is sent or dropped (dropped unsent: 500), so a service that
//   holds Responders must answer them when it stops, before Server::stop().

#include "core/http/message.hpp"
#include "core/http/tls.hpp"
#include "core/util/error.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace npme::http {

using Handler = std::function<Response(Request&)>;

enum class Blocking { no, yes };

// Where a route's request bodies go: into Request::body, or, from
// ServerOptions::spool_min_bytes on, into a file (Request::body_file) written
// as the body arrives, so that a large upload never sits in memory. Only on
// a server with a ServerOptions::spool_dir.
enum class Body { memory, spooled };

// Maps method + path pattern to handlers. Patterns are literal segments and
// `{name}` captures of one segment ("/-/package/{name}/dist-tags/{tag}");
// a trailing `{name*}` captures the rest of the path, slashes included.
// Captures are percent-decoded into Request::params. Routes are tried in the
// order they were added; the first match wins.
class Router {
public:
  void add(std::string method, std::string pattern, Handler handler, Blocking blocking = Blocking::no,
           Body body = Body::memory);
  // A handler for requests no route matched (default: 404 JSON).
  void set_fallback(Handler handler);
  // The handler for a path that has routes, none for the request's method
  // (default: 405 JSON); the server adds the `Allow` header.
  void set_method_not_allowed(Handler handler);
  // A hook that sees every request and response after the handler (metrics, logs).
  void set_observer(std::function<void(const Request&, const Response&)> observer);

  struct Match {
    const Handler* handler = nullptr;
    Blocking blocking = Blocking::no;
    Body body = Body::memory;
    std::string allow; // for the 405 handler: the path's methods, "GET, HEAD, PUT"
  };
  // Finds the route for `request`, filling request.params. A path that
  // matches a pattern under another method gives the 405 handler.
  Match match(Request& request) const;
  Response dispatch(Request& request) const; // match + call, never throws
  const std::function<void(const Request&, const Response&)>& observer() const { return m_observer; }

private:
  struct Route;
  std::vector<std::shared_ptr<Route>> m_routes;
  Handler m_fallback;
  Handler m_method_not_allowed;
  std::function<void(const Request&, const Response&)> m_observer;
};

struct ServerOptions {
  std::string listen = "127.0.0.1:8080";     // "host:port"; port 0 picks a free port
  std::size_t max_body_bytes = 64u << 20;    // larger Content-Length → 413
  std::size_t max_header_bytes = 16u << 10;  // larger header → 431
  // Bodies of Body::spooled routes of at least spool_min_bytes go to an
  // unlinked file in `spool_dir` (none when empty). A body that cannot be
  // written there is answered 507 (a full disk) or 500, naming no path.
  std::string spool_dir;
  std::size_t spool_min_bytes = 1u << 20;
  unsigned io_threads = 0;                   // 0: one per core
  unsigned worker_threads = 4;               // for Blocking::yes routes
  // Time allowed for each read and write: a whole request header, a whole
  // body, a whole response. A client that trickles its header a byte at a
  // time is closed when the header is not complete within it.
  unsigned idle_timeout_seconds = 60;
  // Open connections one client address may hold (0: no limit), so that one
  // client cannot take every connection (or descriptor) the server has. A
  // connection over the cap is closed as soon as it is accepted (plain
  // HTTP: after a best-effort 503). IPv4-mapped IPv6 peers count as their
  // IPv4 address. Loopback is not exempt.
  std::size_t max_connections_per_address = 0;
  // Addresses the cap does not apply to: proxies that carry many clients
  // (registry.trusted_proxies). Called on the accepting I/O thread for each
  // new connection while there is a cap; must answer from memory.
  std::function<bool(const std::string& address)> uncapped_address;
  // gzip successful JSON answers for clients that accept it (see
  // compress_if_accepted()); compressed on the handler's thread (or the
  // thread that sends a deferred answer), never on an I/O thread.
  bool compress_json = false;
  // TLS on every connection when set (see TlsIdentity); a reload of the
  // identity applies to connections accepted afterwards.
  std::shared_ptr<TlsIdentity> tls;
  // Error bodies of the server itself (413, 431, 400 for unparsable requests).
  // Returns the body for `status` and `message`; default {"error":"message"}.
  std::function<std::string(int status, const std::string& message)> error_body;
};

// Parses `bytes`, what a client sent on a new connection, into the request
// a handler would see (without remote_address and params), exactly as a
// connection of a server with `options` parses it: Beast's request parser
// with the header and body limits of `options`. Errc::too_large for what
// the server answers 431 or 413, Errc::invalid for what it answers 400
// (the status leads the message), Errc::failed when `bytes` end before a
// whole request (the server would close the connection). Bytes after the
// request are ignored. For tests and the fuzz target of the request head.
Expected<Request> parse_request(std::string_view bytes, const ServerOptions& options);

class Server {
public:
  Server(ServerOptions options, std::shared_ptr<const Router> router);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and listens; fails with Errc::io when the address is taken or bad.
  Expected<void> start();
  // The bound port (after start()).
  std::uint16_t port() const;
  // "host:port" as bound.
  std::string address() const;

  struct ConnectionCounts {
    std::uint64_t open = 0;    // connections open now
    std::uint64_t refused = 0; // closed at accept for ServerOptions::max_connections_per_address, ever
  };
  // For metrics; from any thread.
  ConnectionCounts connections() const;
  // Stops accepting, closes connections, joins the threads. Idempotent.
  void stop();

private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

} // namespace npme::http
