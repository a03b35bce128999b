// Boost 1.74's Asio needs <utility> before its own headers under GCC 12.
#include <utility>

#include "core/http/server.hpp"

#include "core/http/tls.hpp"
#include "core/util/fs.hpp"

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream_base.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/bind_handler.hpp>
#include <boost/beast/core/buffer_traits.hpp>
#include <boost/beast/core/buffers_cat.hpp>
#include <boost/beast/core/buffers_suffix.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <ctime>
#include <cerrno>
#include <list>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

namespace npme::http {

namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;

// Each I/O thread runs its own io_context; using its concrete executor type
// instead of any_io_executor avoids a type-erased call on every operation.
using Executor = net::io_context::executor_type;
using Socket = net::basic_stream_socket<tcp, Executor>;
using Acceptor = net::basic_socket_acceptor<tcp, Executor>;
using Stream = beast::basic_stream<tcp, Executor, beast::unlimited_rate_policy>;
// A connection of a server with TLS (ServerOptions::tls).
using TlsStream = beast::ssl_stream<Stream>;
using Timer = net::basic_waitable_timer<std::chrono::steady_clock, net::wait_traits<std::chrono::steady_clock>, Executor>;

constexpr std::string_view k_continue = "HTTP/1.1 100 Continue\r\n\r\n";
constexpr auto k_linger_time = std::chrono::seconds(2);
// The read buffer a connection keeps from its first request on.
constexpr std::size_t k_read_reserve = 4096;

// A file body is read in chunks of k_file_chunk as the socket drains, so
// that a large tarball costs one chunk per connection, not its size; a body
// in memory goes out with the head in one write, without a copy.
constexpr std::size_t k_file_chunk = 256u << 10;

using RequestParser = bhttp::request_parser<bhttp::string_body>;

// A request body written to an unlinked temp file as it arrives, for the
// routes that take large bodies (Body::spooled): a publish's tens of
// megabytes never sit in memory. The writes are plain page-cache writes,
// never fsynced, so they cost an I/O thread no more than a socket read.
struct SpoolBody {
  struct value_type {
    std::string dir;               // where the file is made
    util::Fd fd;
    std::uint64_t size = 0;
    std::optional<Error> failure;  // why the body could not be kept
  };

  class reader {
  public:
    template <bool is_request, class Fields>
    reader(bhttp::header<is_request, Fields>&, value_type& body) : m_body(body) {}

    void init(const boost::optional<std::uint64_t>&, error_code& ec) {
      std::string path = m_body.dir + "/request-body.XXXXXX";
      const int fd = ::mkostemp(path.data(), O_CLOEXEC);
      if (fd < 0) {
        return fail(util::io_error("create", path, errno), ec);
      }
      ::unlink(path.c_str());
      m_body.fd = util::Fd(fd);
      ec = {};
    }

    template <class ConstBufferSequence>
    std::size_t put(const ConstBufferSequence& buffers, error_code& ec) {
      std::size_t taken = 0;
      for (auto it = net::buffer_sequence_begin(buffers); it != net::buffer_sequence_end(buffers); ++it) {
        const net::const_buffer buffer = *it;
        auto written = util::write_all(m_body.fd.get(), {static_cast<const char*>(buffer.data()), buffer.size()},
                                       m_body.dir + "/(request body)");
        if (!written) {
          fail(written.error(), ec);
          return taken;
        }
        taken += buffer.size();
        m_body.size += buffer.size();
      }
      ec = {};
      return taken;
    }

    void finish(error_code& ec) { ec = {}; }

  private:
    void fail(Error error, error_code& ec) {
      m_body.failure = std::move(error);
      ec = boost::system::errc::make_error_code(boost::system::errc::io_error);
    }

    value_type& m_body;
  };
};
using SpoolParser = bhttp::request_parser<SpoolBody>;

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

std::string json_escape(std::string_view text) {
  static constexpr char k_hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size() + 2);
  for (char c : text) {
    auto byte = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (byte < 0x20) {
      out += "\\u00";
      out.push_back(k_hex[byte >> 4]);
      out.push_back(k_hex[byte & 0x0f]);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// The Date header, formatted once a second per thread; locale-independent.
std::string_view http_date() {
  static constexpr const char* k_days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static constexpr const char* k_months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                             "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  thread_local std::time_t last = -1;
  thread_local char buffer[32];
  thread_local int length = 0;
  std::time_t now = std::time(nullptr);
  if (now != last) {
    std::tm parts{};
    gmtime_r(&now, &parts);
    length = std::snprintf(buffer, sizeof(buffer), "%s, %02d %s %04d %02d:%02d:%02d GMT", k_days[parts.tm_wday % 7],
                           parts.tm_mday, k_months[parts.tm_mon % 12], parts.tm_year + 1900, parts.tm_hour,
                           parts.tm_min, parts.tm_sec);
    last = now;
  }
  return {buffer, static_cast<std::size_t>(std::max(length, 0))};
}

// Query parameters are form-encoded ('+' is a space), unlike paths.
std::map<std::string, std::string> parse_query(std::string_view query) {
  std::map<std::string, std::string> out;
  auto decode = [](std::string_view raw) {
    std::string text(raw);
    std::replace(text.begin(), text.end(), '+', ' ');
    auto decoded = percent_decode(text);
    return decoded ? std::move(*decoded) : text;
  };
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (pair.empty()) {
      continue;
    }
    auto eq = pair.find('=');
    std::string key = decode(pair.substr(0, eq));
    std::string value = eq == std::string_view::npos ? std::string() : decode(pair.substr(eq + 1));
    out.try_emplace(std::move(key), std::move(value));
  }
  return out;
}

bool is_http_error(const error_code& ec) {
  return ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category();
}

// Gives `parser` the header and body limits of `options`: every connection
// parses its requests so, and parse_request() too.
void limit_parser(RequestParser& parser, const ServerOptions& options) {
  parser.header_limit(static_cast<std::uint32_t>(std::min<std::size_t>(options.max_header_bytes, UINT32_MAX)));
  parser.body_limit(options.max_body_bytes);
}

// True when the parsed header of `parser` announces a body over the limit.
// Beast refuses a Content-Length over body_limit while parsing the header;
// checking here too keeps the rule visible: the body is never read.
bool body_too_large(const RequestParser& parser, const ServerOptions& options) {
  auto length = parser.content_length();
  return length && *length > options.max_body_bytes;
}

// What the server answers a failed read with: status and message, or
// nullopt to close the connection without an answer.
struct ErrorReply {
  int status;
  std::string message;
};
std::optional<ErrorReply> read_error_reply(const error_code& ec) {
  if (ec == bhttp::error::end_of_stream || ec == beast::error::timeout || ec == net::error::operation_aborted) {
    return std::nullopt;
  }
  if (ec == bhttp::error::header_limit) {
    return ErrorReply{431, "request header fields too large"};
  }
  if (ec == bhttp::error::body_limit) {
    return ErrorReply{413, "request body too large"};
  }
  if (is_http_error(ec)) {
    return ErrorReply{400, "bad request: " + ec.message()};
  }
  return std::nullopt;
}

// The request handlers see, from the parsed `message` (its body is moved).
// The request a handler sees, without its body.
template <class Body>
Request request_head(const bhttp::request<Body>& message) {
  Request request;
  request.method = std::string(message.method_string());
  request.target = std::string(message.target());
  std::string_view target = request.target;
  auto question = target.find('?');
  request.path = std::string(target.substr(0, question));
  if (question != std::string_view::npos) {
    request.query = parse_query(target.substr(question + 1));
  }
  for (const auto& field : message) {
    request.headers.add(std::string(field.name_string()), std::string(field.value()));
  }
  return request;
}

Request make_request(bhttp::request<bhttp::string_body>& message) {
  Request request = request_head(message);
  request.body = std::move(message.body());
  return request;
}

Request make_request(bhttp::request<SpoolBody>& message) {
  Request request = request_head(message);
  auto file = std::make_shared<FileBody>();
  file->fd = std::move(message.body().fd);
  file->size = message.body().size;
  request.body_file = std::move(file);
  return request;
}

// What the server and a Responder need of a connection, plain or TLS.
class SessionBase : public std::enable_shared_from_this<SessionBase> {
public:
  virtual ~SessionBase() = default;
  // See Session::deliver and Session::shut_down_if_idle.
  virtual void deliver(Response response, const Request& request_info,
                       std::shared_ptr<net::executor_work_guard<Executor>> work) = 0;
  virtual void shut_down_if_idle() = 0;
};

// One I/O thread: its io_context and the sessions living on it, so that
// stop() can close them. The list is touched by the thread itself and by
// session destructors, hence the mutex; it is declared before the
// io_context so that sessions destroyed with the context can still
// unregister.
struct IoThread {
  std::mutex mutex;
  std::list<std::weak_ptr<SessionBase>> sessions;
  net::io_context context{1};
  std::optional<net::executor_work_guard<Executor>> work;
  std::thread thread;
};

struct ServerCore {
  ServerOptions options;
  std::shared_ptr<const Router> router;
  std::mutex control_mutex;
  bool started = false;
  bool stopped = false;
  std::atomic<bool> stopping{false};
  // Declared before the acceptor and I/O threads: they are destroyed after
  // the sessions that point at them.
  std::unique_ptr<net::thread_pool> workers;
  std::vector<std::unique_ptr<IoThread>> threads;
  std::unique_ptr<Acceptor> acceptor;
  std::unique_ptr<Timer> accept_retry;
  std::size_t next_thread = 0;
  tcp::endpoint bound;
  // Open connections per client address (those the cap applies to), taken
  // on the accepting thread and given back by sessions ending on any I/O
  // thread, hence the mutex.
  std::mutex connections_mutex;
  std::unordered_map<std::string, std::size_t> per_address;
  std::atomic<std::uint64_t> open_connections{0};
  std::atomic<std::uint64_t> refused_connections{0};

  std::string error_body(int status, const std::string& message) const {
    if (options.error_body) {
      try {
        return options.error_body(status, message);
      } catch (...) {
        // Fall through to the built-in body: an error reply must still go out.
      }
    }
    return R"({"error":")" + json_escape(message) + R"("})";
  }

  Response error_response(int status, const std::string& message) const {
    return Response::json(status, error_body(status, message));
  }

  ServerCore() = default;
  ServerCore(const ServerCore&) = delete;
  ServerCore& operator=(const ServerCore&) = delete;
  void do_accept();
  void on_accept(IoThread& target, const error_code& ec, Socket socket);
  void refuse(Socket& socket);
  ~ServerCore();
};

// A connection's place in the counts of its server: taken at accept, given
// back when the session that holds it ends (or when a session could not be
// made at all).
class ConnectionSlot {
public:
  // Takes a place for a connection from `address` (normalized); nullopt
  // when `capped` and the address holds the cap already.
  static std::optional<ConnectionSlot> take(ServerCore& server, std::string address, bool capped) {
    if (capped) {
      std::lock_guard lock(server.connections_mutex);
      std::size_t& count = server.per_address[address];
      if (count >= server.options.max_connections_per_address) {
        return std::nullopt;
      }
      ++count;
    }
    server.open_connections.fetch_add(1, std::memory_order_relaxed);
    return ConnectionSlot(server, std::move(address), capped);
  }

  ConnectionSlot(ConnectionSlot&& other) noexcept
    : m_server(std::exchange(other.m_server, nullptr)), m_address(std::move(other.m_address)),
      m_capped(other.m_capped) {}
  ConnectionSlot& operator=(ConnectionSlot&&) = delete;
  ConnectionSlot(const ConnectionSlot&) = delete;
  ConnectionSlot& operator=(const ConnectionSlot&) = delete;

  ~ConnectionSlot() {
    if (!m_server) {
      return;
    }
    m_server->open_connections.fetch_sub(1, std::memory_order_relaxed);
    if (m_capped) {
      std::lock_guard lock(m_server->connections_mutex);
      auto it = m_server->per_address.find(m_address);
      if (it != m_server->per_address.end() && --it->second == 0) {
        m_server->per_address.erase(it); // the map holds only addresses with connections open
      }
    }
  }

  const std::string& address() const { return m_address; }

private:
  ConnectionSlot(ServerCore& server, std::string address, bool capped)
    : m_server(&server), m_address(std::move(address)), m_capped(capped) {}

  ServerCore* m_server;
  std::string m_address;
  bool m_capped;
};

// One connection. `S` is Stream (plain HTTP) or TlsStream, whose handshake
// comes first and whose context (the certificate when the connection
// started) the session keeps, so that a reload does not touch it.
template <class S>
class Session final : public SessionBase {
public:
  static constexpr bool k_tls = std::is_same_v<S, TlsStream>;

  Session(Socket&& socket, ConnectionSlot&& slot, ServerCore& server, IoThread& thread) requires(!k_tls)
      : m_stream(std::move(socket)), m_server(server), m_thread(thread), m_slot(std::move(slot)) {}

  Session(Socket&& socket, ConnectionSlot&& slot, std::shared_ptr<net::ssl::context> context, ServerCore& server,
          IoThread& thread) requires(k_tls)
      : m_context(std::move(context)), m_stream(std::move(socket), *m_context), m_server(server), m_thread(thread),
        m_slot(std::move(slot)) {}

  ~Session() {
    if (m_registered) {
      std::lock_guard lock(m_thread.mutex);
      m_thread.sessions.erase(m_registration);
    }
  }

  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Runs on the session's own thread.
  void start() {
    if (m_server.stopping.load()) {
      close();
      return;
    }
    {
      std::lock_guard lock(m_thread.mutex);
      m_registration = m_thread.sessions.insert(m_thread.sessions.end(), weak_from_this());
      m_registered = true;
    }
    if constexpr (k_tls) {
      lowest().expires_after(std::chrono::seconds(m_server.options.idle_timeout_seconds));
      m_stream.async_handshake(net::ssl::stream_base::server,
                               beast::bind_front_handler(&Session::on_handshake, self()));
    } else {
      read_header();
    }
  }

  // Answers the request being handled with `response` from any thread (a
  // deferred handler's Responder): the write happens on the session's own
  // thread. `work` keeps that thread's context running until then.
  void deliver(Response response, const Request& request_info,
               std::shared_ptr<net::executor_work_guard<Executor>> work) override {
    if (m_server.options.compress_json) {
      compress_if_accepted(request_info, response);
    }
    observe(request_info, response);
    net::post(m_thread.context, [self = self(), response = std::move(response), work]() mutable {
      self->write_response(std::move(response));
    });
  }

  // Called by stop() on the session's thread: a connection waiting for a
  // request is closed now; one whose request is being handled or answered
  // finishes that response and then closes.
  void shut_down_if_idle() override {
    if (m_phase == Phase::reading) {
      close();
    }
  }

private:
  enum class Phase { reading, handling };
  enum class AfterWrite { keep_alive, close, linger };

  std::shared_ptr<Session> self() { return std::static_pointer_cast<Session>(shared_from_this()); }
  Stream& lowest() { return beast::get_lowest_layer(m_stream); }

  void on_handshake(error_code ec) {
    if (ec) {
      // Not TLS, an old protocol, no shared cipher, or a timeout: nothing
      // to answer in HTTP.
      close();
      return;
    }
    read_header();
  }

  void close() {
    error_code ec;
    lowest().socket().shutdown(tcp::socket::shutdown_both, ec);
    lowest().close();
  }

  void read_header() {
    if (m_server.stopping.load()) {
      close();
      return;
    }
    m_phase = Phase::reading;
    // Room for a whole request head in one read (Beast's reads are sized by
    // the buffer's free capacity, 512 bytes at first, and npm's heads are
    // ~650 bytes: two reads and a poll each otherwise).
    if (m_buffer.capacity() < k_read_reserve) {
      m_buffer.reserve(k_read_reserve);
    }
    m_parser.emplace();
    limit_parser(*m_parser, m_server.options);
    lowest().expires_after(std::chrono::seconds(m_server.options.idle_timeout_seconds));
    bhttp::async_read_header(m_stream, m_buffer, *m_parser,
                             beast::bind_front_handler(&Session::on_header, self()));
  }

  void on_header(error_code ec, std::size_t) {
    if (ec) {
      on_read_error(ec);
      return;
    }
    if (body_too_large(*m_parser, m_server.options)) {
      send_error(413, "request body too large");
      return;
    }
    if (m_parser->is_done()) {
      on_request();
      return;
    }
    const auto& header = m_parser->get();
    const bool wants_continue = header.version() >= 11 && iequals(header[bhttp::field::expect], "100-continue");
    if (spools_body()) {
      m_spool_parser.emplace(std::move(*m_parser));
      m_parser.reset();
      m_spool_parser->get().body().dir = m_server.options.spool_dir;
    }
    if (wants_continue) {
      // Clients wait for this before sending a large body.
      net::async_write(m_stream, net::const_buffer(k_continue.data(), k_continue.size()),
                       beast::bind_front_handler(&Session::on_continue, self()));
      return;
    }
    read_body();
  }

  void on_continue(error_code ec, std::size_t) {
    if (ec) {
      close();
      return;
    }
    read_body();
  }

  // True when the request whose header was just read goes to a route that
  // takes its body in a file (Body::spooled) and the body is large enough.
  bool spools_body() {
    if (m_server.options.spool_dir.empty()) {
      return false;
    }
    // A chunked body's length is unknown: spooled too.
    auto length = m_parser->content_length();
    if (length && *length < m_server.options.spool_min_bytes) {
      return false;
    }
    Request head = request_head(m_parser->get());
    try {
      return m_server.router->match(head).body == Body::spooled;
    } catch (...) {
      return false;
    }
  }

  void read_body() {
    lowest().expires_after(std::chrono::seconds(m_server.options.idle_timeout_seconds));
    auto done = beast::bind_front_handler(&Session::on_body, self());
    if (m_spool_parser) {
      bhttp::async_read(m_stream, m_buffer, *m_spool_parser, std::move(done));
    } else {
      bhttp::async_read(m_stream, m_buffer, *m_parser, std::move(done));
    }
  }

  void on_body(error_code ec, std::size_t) {
    if (m_spool_parser && m_spool_parser->get().body().failure) {
      // The body could not be kept (a full disk): the client is told why;
      // the connection closes since the rest of the body was not read.
      // Its message names a server path: never sent to a client.
      const Errc code = m_spool_parser->get().body().failure->code;
      m_spool_parser.reset();
      m_keep_alive = false;
      send_error(http_status(code), code == Errc::no_space ? "out of disk space: the request body could not be stored"
                                                           : "the request body could not be stored");
      return;
    }
    if (ec) {
      on_read_error(ec);
      return;
    }
    on_request();
  }

  void on_read_error(const error_code& ec) {
    if (auto reply = read_error_reply(ec)) {
      send_error(reply->status, reply->message);
    } else {
      close();
    }
  }

  void on_request() {
    m_phase = Phase::handling;
    Request request = m_spool_parser ? take_request(*m_spool_parser) : take_request(*m_parser);
    request.remote_address = m_slot.address();
    m_parser.reset();
    m_spool_parser.reset();

    Router::Match match;
    try {
      match = m_server.router->match(request);
    } catch (...) {
      write_response(m_server.error_response(500, "internal server error"));
      return;
    }
    if (match.blocking == Blocking::yes) {
      run_on_worker(match.handler, std::move(request));
      return;
    }
    Response response = run_handler(*match.handler, request);
    if (!match.allow.empty()) {
      response.headers.set("Allow", std::move(match.allow));
    }
    if (response.run_on_worker) {
      run_on_worker(match.handler, std::move(request));
    } else if (!response.deferred) {
      write_response(std::move(response));
    }
  }

  template <class Parser>
  Request take_request(Parser& parser) {
    auto& message = parser.get();
    m_keep_alive = message.keep_alive();
    m_version = message.version();
    m_head = message.method() == bhttp::verb::head;
    return make_request(message);
  }

  // fsync, SQLite writes, hashing and renders run on the worker pool; the
  // response goes back to this session's thread. The work guard keeps the
  // I/O thread alive until then, even during stop().
  void run_on_worker(const Handler* handler, Request request) {
    request.on_worker = true;
    auto work = net::make_work_guard(m_thread.context);
    net::post(*m_server.workers, [self = self(), work = std::move(work), handler,
                                  request = std::move(request)]() mutable {
      Response response = self->run_handler(*handler, request);
      if (response.deferred) {
        return; // its Responder writes the answer
      }
      if (response.run_on_worker) {
        response = self->m_server.error_response(500, "internal server error: a handler asked for a worker twice");
      }
      net::post(self->m_thread.context, [self, response = std::move(response)]() mutable {
        self->write_response(std::move(response));
      });
    });
  }

  Response run_handler(const Handler& handler, Request& request);

  void observe(const Request& request, const Response& response) {
    const auto& observer = m_server.router->observer();
    if (observer) {
      try {
        observer(request, response);
      } catch (...) {
        // A failing metrics hook must not turn a served request into an error.
      }
    }
  }

  void write_response(Response response) {
    auto keep_alive = m_keep_alive && !m_server.stopping.load() ? AfterWrite::keep_alive : AfterWrite::close;
    write(std::move(response), keep_alive);
  }

  void send_error(int status, const std::string& message) {
    m_phase = Phase::handling;
    m_version = 11;
    m_head = false;
    m_parser.reset();
    m_spool_parser.reset();
    write(m_server.error_response(status, message), AfterWrite::linger);
  }

  void write(Response response, AfterWrite after) {
    int status = response.status;
    if (status < 100 || status > 999) {
      status = 500;
    }
    const bool bodyless_status = status < 200 || status == 204 || status == 304;
    format_head(response, status, after, bodyless_status);
    m_after_write = after;
    lowest().expires_after(std::chrono::seconds(m_server.options.idle_timeout_seconds));
    const bool sends_body = !bodyless_status && !m_head;
    if (sends_body && response.file_body) {
      m_file = std::move(response.file_body);
      m_file_offset = 0;
      net::async_write(m_stream, net::buffer(m_head_bytes),
                       beast::bind_front_handler(&Session::on_file_part_written, self()));
      return;
    }
    std::string_view body;
    if (sends_body) {
      if (response.shared_body) {
        m_shared_body = std::move(response.shared_body);
        body = *m_shared_body;
      } else {
        m_owned_body = std::move(response.body);
        body = m_owned_body;
      }
    }
    // Not a std::array of two buffers: asio's own write loop for that type
    // hands the TLS stream an empty first buffer once the head is out, and
    // Beast's ssl_stream then writes nothing and the write ends early.
    const auto buffers = beast::buffers_cat(net::buffer(m_head_bytes), net::buffer(body.data(), body.size()));
    if constexpr (!k_tls) {
      // Most answers fit in the socket's send buffer: sent here, in one
      // sendmsg, and finished at once. An asynchronous write would post
      // its completion, and asio polls epoll once more before running it.
      // What the socket does not take now goes out asynchronously.
      error_code ec;
      const std::size_t sent = send_now(buffers, ec);
      if (ec) {
        on_write(ec, sent);
        return;
      }
      if (sent == beast::buffer_bytes(buffers)) {
        on_write({}, sent);
        return;
      }
      beast::buffers_suffix<std::decay_t<decltype(buffers)>> rest(buffers);
      rest.consume(sent);
      net::async_write(m_stream, rest, beast::bind_front_handler(&Session::on_write, self()));
      return;
    }
    net::async_write(m_stream, buffers, beast::bind_front_handler(&Session::on_write, self()));
  }

  // Sends what the socket takes of `buffers` now, without waiting; returns
  // the bytes sent. A full send buffer is not an error (0 or a part is
  // sent); a broken connection is, in `ec`.
  template <class Buffers>
  std::size_t send_now(const Buffers& buffers, error_code& ec) requires(!k_tls) {
    auto& socket = lowest().socket();
    if (!socket.non_blocking()) {
      socket.non_blocking(true, ec);
      if (ec) {
        return 0;
      }
    }
    const std::size_t sent = socket.write_some(buffers, ec);
    if (ec == net::error::would_block || ec == net::error::try_again) {
      ec = {};
    }
    return sent;
  }

  // The status line and header fields of `response` into m_head_bytes
  // (whose capacity a connection keeps): no allocation per field.
  void format_head(const Response& response, int status, AfterWrite after, bool bodyless_status) {
    std::string& head = m_head_bytes;
    head.clear();
    const auto field = [&head](std::string_view name, std::string_view value) {
      head.append(name).append(": ").append(value).append("\r\n");
    };
    head += m_version >= 11 ? "HTTP/1.1 " : "HTTP/1.0 ";
    head += std::to_string(status);
    head += ' ';
    head += bhttp::obsolete_reason(static_cast<bhttp::status>(status));
    head += "\r\n";
    bool has_server = false;
    for (const auto& [name, value] : response.headers.fields()) {
      // The server owns framing, Date and nosniff; and a CR or LF from a
      // handler would let a value split the response.
      if (iequals(name, "content-length") || iequals(name, "transfer-encoding") || iequals(name, "connection") ||
          iequals(name, "date") || iequals(name, "x-content-type-options") || name.empty() ||
          name.find_first_of("\r\n: ") != std::string::npos || value.find_first_of("\r\n") != std::string::npos) {
        continue;
      }
      has_server = has_server || iequals(name, "server");
      field(name, value);
    }
    if (!has_server) {
      field("Server", "npme");
    }
    // No answer of ours is meant to be sniffed into HTML or script.
    field("X-Content-Type-Options", "nosniff");
    field("Date", http_date());
    if (!bodyless_status) {
      // For HEAD this is the length of the body that GET would send.
      field("Content-Length", std::to_string(response.body_size()));
    }
    if (after == AfterWrite::keep_alive) {
      if (m_version < 11) {
        field("Connection", "keep-alive");
      }
    } else if (m_version >= 11) {
      field("Connection", "close");
    }
    head += "\r\n";
  }

  // The next chunk of the file body, read as the socket drains; each chunk
  // gets the idle timeout, so a client that keeps reading is not cut off.
  void write_file_chunk() {
    const std::uint64_t left = m_file->size - m_file_offset;
    if (left == 0) {
      on_write({}, 0);
      return;
    }
    if (!m_chunk) {
      m_chunk = std::make_unique<char[]>(k_file_chunk);
    }
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(left, k_file_chunk));
    ssize_t got = 0;
    do {
      got = ::pread(m_file->fd.get(), m_chunk.get(), want, static_cast<off_t>(m_file_offset));
    } while (got < 0 && errno == EINTR);
    if (got <= 0) {
      // Shorter than when the response started, or unreadable: the
      // connection closes; Content-Length tells the client it is short.
      on_write(got < 0 ? error_code(errno, boost::system::generic_category()) : error_code(bhttp::error::short_read),
               0);
      return;
    }
    m_file_offset += static_cast<std::uint64_t>(got);
    lowest().expires_after(std::chrono::seconds(m_server.options.idle_timeout_seconds));
    net::async_write(m_stream, net::buffer(m_chunk.get(), static_cast<std::size_t>(got)),
                     beast::bind_front_handler(&Session::on_file_part_written, self()));
  }

  // The head or a chunk of a file body is out: the next chunk, or the end.
  void on_file_part_written(error_code ec, std::size_t n) {
    if (ec) {
      on_write(ec, n);
      return;
    }
    write_file_chunk();
  }

  void on_write(error_code ec, std::size_t) {
    m_shared_body.reset();
    m_owned_body = std::string();
    m_file.reset();
    m_chunk.reset();
    if (ec) {
      close();
      return;
    }
    switch (m_after_write) {
    case AfterWrite::keep_alive:
      read_header();
      return;
    case AfterWrite::close:
      if constexpr (k_tls) {
        // close_notify, then the peer's (or the linger time), then close.
        lowest().expires_after(k_linger_time);
        m_stream.async_shutdown([self = self()](error_code) { self->close(); });
      } else {
        error_code ignored;
        lowest().socket().shutdown(tcp::socket::shutdown_send, ignored);
      }
      return;
    case AfterWrite::linger:
      linger();
      return;
    }
  }

  // After an error reply the client may still be sending (a body we refused,
  // the rest of a huge header). Closing with unread data makes the kernel
  // send a reset that can destroy the reply before the client reads it, so
  // half-close and discard input for a short while first.
  // Over TLS the connection cannot be half-closed below the TLS layer, so
  // it only reads and discards (the answer said Connection: close).
  void linger() {
    m_phase = Phase::reading;
    if constexpr (!k_tls) {
      error_code ec;
      lowest().socket().shutdown(tcp::socket::shutdown_send, ec);
      if (ec) {
        close();
        return;
      }
    }
    m_buffer.clear();
    lowest().expires_after(k_linger_time);
    discard();
  }

  void discard() {
    m_stream.async_read_some(m_buffer.prepare(16384), [self = self()](error_code ec, std::size_t) {
      if (ec) {
        self->close();
        return;
      }
      self->discard();
    });
  }

  std::shared_ptr<net::ssl::context> m_context; // TLS: before the stream, which uses it
  S m_stream;
  beast::flat_buffer m_buffer;
  std::optional<RequestParser> m_parser;
  std::optional<SpoolParser> m_spool_parser; // instead of m_parser once a spooled body is read
  // The response being written: its head, and its body in memory or file.
  std::string m_head_bytes;
  std::shared_ptr<const std::string> m_shared_body;
  std::string m_owned_body;
  std::shared_ptr<const FileBody> m_file;
  std::uint64_t m_file_offset = 0;
  std::unique_ptr<char[]> m_chunk;
  ServerCore& m_server;
  IoThread& m_thread;
  std::list<std::weak_ptr<SessionBase>>::iterator m_registration;
  bool m_registered = false;
  ConnectionSlot m_slot; // the client's address, counted while the session lives
  Phase m_phase = Phase::reading;
  AfterWrite m_after_write = AfterWrite::close;
  bool m_keep_alive = false;
  bool m_head = false;
  unsigned m_version = 11;
};

// The Responder's end inside the server: hands the answer to the session,
// and keeps the session and its I/O thread alive until then.
class SessionSink : public Responder::Sink {
public:
  SessionSink(std::shared_ptr<SessionBase> session, Request request_info,
              std::shared_ptr<net::executor_work_guard<Executor>> work)
      : m_work(std::move(work)), m_session(std::move(session)), m_request(std::move(request_info)) {}

  void deliver(Response response) override { m_session->deliver(std::move(response), m_request, m_work); }

private:
  // First, so destroyed last: the I/O thread (and with it the server) may
  // end as soon as this guard goes, and the session, destroyed on whatever
  // thread dropped the Responder, still unregisters from that I/O thread.
  std::shared_ptr<net::executor_work_guard<Executor>> m_work;
  std::shared_ptr<SessionBase> m_session;
  Request m_request; // method, target, path, headers: what the observer sees
};

template <class S>
Response Session<S>::run_handler(const Handler& handler, Request& request) {
  Responder issued;
  request.defer_hook = [self = self(), &request, &issued]() {
    Request info = request.without_body();
    auto work = std::make_shared<net::executor_work_guard<Executor>>(net::make_work_guard(self->m_thread.context));
    issued = Responder(std::make_shared<SessionSink>(self, std::move(info), std::move(work)));
    return issued;
  };
  Response response;
  try {
    response = handler(request);
  } catch (...) {
    // Handlers report errors as responses; one that throws anyway must
    // not take the connection, let alone the server, down with it.
    response = m_server.error_response(500, "internal server error");
  }
  request.defer_hook = nullptr;
  if (response.run_on_worker && !request.on_worker) {
    issued.cancel();
    return response; // called again on a worker; observed there
  }
  if (!response.deferred) {
    issued.cancel(); // answered here after all: the Responder must not write too
    if (m_server.options.compress_json) {
      compress_if_accepted(request, response);
    }
    observe(request, response);
  } else if (!issued) {
    response = m_server.error_response(500, "internal server error: a deferred answer without a Responder");
    observe(request, response);
  }
  return response;
}

struct ListenAddress {
  std::string host;
  std::string port;
};

std::optional<ListenAddress> split_listen(std::string_view listen) {
  auto colon = listen.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == listen.size()) {
    return std::nullopt;
  }
  ListenAddress out{std::string(listen.substr(0, colon)), std::string(listen.substr(colon + 1))};
  if (!std::all_of(out.port.begin(), out.port.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      out.port.size() > 5 || std::stoul(out.port) > 65535) {
    return std::nullopt;
  }
  if (out.host.size() >= 2 && out.host.front() == '[' && out.host.back() == ']') {
    out.host = out.host.substr(1, out.host.size() - 2);
  }
  return out;
}

void ServerCore::do_accept() {
  IoThread& target = *threads[next_thread];
  next_thread = (next_thread + 1) % threads.size();
  acceptor->async_accept(target.context, [this, &target](const error_code& ec, Socket socket) {
    on_accept(target, ec, std::move(socket));
  });
}

void ServerCore::on_accept(IoThread& target, const error_code& ec, Socket socket) {
  if (ec == net::error::operation_aborted || stopping.load()) {
    return;
  }
  if (ec) {
    // Out of descriptors and similar: wait a little instead of spinning.
    accept_retry->expires_after(std::chrono::milliseconds(50));
    accept_retry->async_wait([this](const error_code& wait_ec) {
      if (!wait_ec && !stopping.load()) {
        do_accept();
      }
    });
    return;
  }
  error_code endpoint_ec;
  auto endpoint = socket.remote_endpoint(endpoint_ec);
  if (endpoint_ec) {
    // The client is gone already (reset before we got to it).
    do_accept();
    return;
  }
  auto address = endpoint.address();
  if (address.is_v6() && address.to_v6().is_v4_mapped()) {
    address = net::ip::make_address_v4(net::ip::v4_mapped, address.to_v6());
  }
  std::string remote = address.to_string();
  bool capped = options.max_connections_per_address > 0;
  if (capped && options.uncapped_address) {
    try {
      capped = !options.uncapped_address(remote);
    } catch (...) {
      // Keep the cap: a failing check must not open the server to a flood.
    }
  }
  auto slot = ConnectionSlot::take(*this, std::move(remote), capped);
  if (!slot) {
    refuse(socket);
    do_accept();
    return;
  }
  error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  if (options.tls) {
    auto session =
      std::make_shared<Session<TlsStream>>(std::move(socket), std::move(*slot), options.tls->context(), *this, target);
    net::dispatch(target.context, [session] { session->start(); });
  } else {
    auto session = std::make_shared<Session<Stream>>(std::move(socket), std::move(*slot), *this, target);
    net::dispatch(target.context, [session] { session->start(); });
  }
  do_accept();
}

// Closes a connection over the cap at once. Refusing must cost next to
// nothing, since the client refused is one holding many connections
// already: no session, no read, no timer, no waiting for the client. Plain
// HTTP gets a best-effort 503 first, one non-blocking send into the empty
// socket buffer, so that a legitimate client behind a shared address learns
// why (a client that sent its request already may see a reset instead,
// since unread input makes close() reset); over TLS there is no handshake
// to answer in, so the client sees the connection close.
void ServerCore::refuse(Socket& socket) {
  refused_connections.fetch_add(1, std::memory_order_relaxed);
  if (!options.tls) {
    const std::string body =
      error_body(503, "too many connections from this address (at most " +
                        std::to_string(options.max_connections_per_address) + ")");
    const std::string reply = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: " +
                              std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
    [[maybe_unused]] const ssize_t sent =
      ::send(socket.native_handle(), reply.data(), reply.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  }
  error_code ignored;
  socket.close(ignored);
}

ServerCore::~ServerCore() {
  // Destroy in dependency order; nothing runs any more (stop() joined the
  // threads). Abandoned handlers own sessions, which unregister from their
  // IoThread, so each context goes before its own bookkeeping (see
  // IoThread), and the first context, which may hold accepted sockets of
  // the others, goes first. The router goes before all of them when this
  // is its last owner: its handlers may hold responders, and with them
  // sessions (the feed's long polls, answered from their own thread until
  // it is joined), and a session must unregister while its IoThread exists.
  router.reset();
  workers.reset();
  accept_retry.reset();
  acceptor.reset();
  for (auto& thread : threads) {
    thread->work.reset();
  }
  for (auto& thread : threads) {
    thread.reset();
  }
}

} // namespace

struct Server::Impl : ServerCore {};

Expected<Request> parse_request(std::string_view bytes, const ServerOptions& options) {
  RequestParser parser;
  limit_parser(parser, options);
  const auto fail = [](const error_code& ec) -> Expected<Request> {
    if (auto reply = read_error_reply(ec)) {
      return make_error(reply->status == 400 ? Errc::invalid : Errc::too_large,
                        std::to_string(reply->status) + " " + reply->message);
    }
    return make_error(Errc::failed, "the connection ends before the request: " + ec.message());
  };
  // Feeds the parser as a connection's reads do (bhttp::read_header, then
  // bhttp::read for the body): all that has arrived, and the end of the
  // stream once nothing more comes.
  std::string_view rest = bytes;
  const auto read_until = [&](auto done) -> error_code {
    error_code ec;
    while (!done()) {
      if (rest.empty()) {
        if (!parser.got_some()) {
          return bhttp::error::end_of_stream;
        }
        parser.put_eof(ec);
        return ec ? ec : error_code(bhttp::error::partial_message);
      }
      const std::size_t used = parser.put(net::const_buffer(rest.data(), rest.size()), ec);
      rest.remove_prefix(used);
      if (ec && ec != bhttp::error::need_more) {
        return ec;
      }
      if (used == 0) {
        // The parser needs more than what is left: nothing more comes.
        parser.put_eof(ec);
        return ec ? ec : error_code(bhttp::error::partial_message);
      }
      ec = {};
    }
    return ec;
  };
  parser.eager(false);
  if (auto ec = read_until([&] { return parser.is_header_done(); })) {
    return fail(ec);
  }
  if (body_too_large(parser, options)) {
    return fail(bhttp::error::body_limit);
  }
  parser.eager(true);
  if (auto ec = read_until([&] { return parser.is_done(); })) {
    return fail(ec);
  }
  return make_request(parser.get());
}

namespace {
// Stops a started server; `impl.control_mutex` is held by the caller.
void stop_locked(ServerCore& impl);
} // namespace

Server::Server(ServerOptions options, std::shared_ptr<const Router> router) : m_impl(std::make_unique<Impl>()) {
  m_impl->options = std::move(options);
  m_impl->router = router ? std::move(router) : std::make_shared<const Router>();
}

Server::~Server() {
  stop();
}

Expected<void> Server::start() {
  Impl& impl = *m_impl;
  std::lock_guard lock(impl.control_mutex);
  const std::string& listen = impl.options.listen;
  if (impl.started || impl.stopped) {
    return make_error(Errc::failed,
                      "cannot listen on '" + listen + "': " + (impl.stopped ? "server was stopped" : "server already started"));
  }
  auto parts = split_listen(listen);
  if (!parts) {
    return make_error(Errc::io, "cannot listen on '" + listen + "': expected host:port");
  }
  try {
    unsigned io_count = impl.options.io_threads;
    if (io_count == 0) {
      io_count = std::max(1u, std::thread::hardware_concurrency());
    }
    // Built aside and moved into the server only once listening works, so
    // that a failed start() leaves nothing behind.
    std::vector<std::unique_ptr<IoThread>> threads;
    for (unsigned i = 0; i < io_count; ++i) {
      threads.push_back(std::make_unique<IoThread>());
    }
    net::io_context& main_context = threads.front()->context;

    error_code ec;
    tcp::endpoint endpoint;
    auto address = net::ip::make_address(parts->host.empty() ? "0.0.0.0" : parts->host, ec);
    if (!ec) {
      endpoint = tcp::endpoint(address, static_cast<std::uint16_t>(std::stoul(parts->port)));
    } else {
      net::ip::basic_resolver<tcp, Executor> resolver(main_context);
      auto results = resolver.resolve(parts->host, parts->port, net::ip::resolver_base::numeric_service, ec);
      if (ec || results.empty()) {
        return make_error(Errc::io, "cannot listen on '" + listen + "': " +
                                        (ec ? ec.message() : std::string("host not found")));
      }
      endpoint = results.begin()->endpoint();
    }

    auto acceptor = std::make_unique<Acceptor>(main_context);
    auto fail = [&](const error_code& error) {
      return make_error(Errc::io, "cannot listen on '" + listen + "': " + error.message());
    };
    if (acceptor->open(endpoint.protocol(), ec); ec) {
      return fail(ec);
    }
    // Lets a restarted instance bind while old connections sit in
    // TIME_WAIT; on Linux it does not allow two listeners on one port.
    if (acceptor->set_option(net::socket_base::reuse_address(true), ec); ec) {
      return fail(ec);
    }
    if (acceptor->bind(endpoint, ec); ec) {
      return fail(ec);
    }
    if (acceptor->listen(net::socket_base::max_listen_connections, ec); ec) {
      return fail(ec);
    }
    impl.bound = acceptor->local_endpoint(ec);
    if (ec) {
      return fail(ec);
    }
    impl.threads = std::move(threads);
    impl.acceptor = std::move(acceptor);
    impl.accept_retry = std::make_unique<Timer>(main_context);
    impl.workers = std::make_unique<net::thread_pool>(std::max(1u, impl.options.worker_threads));
    net::post(main_context, [&impl] { impl.do_accept(); });
    for (auto& thread : impl.threads) {
      thread->work.emplace(thread->context.get_executor());
    }
    // From here on stop() can undo what is running, even if launching a
    // later thread fails.
    impl.started = true;
    for (auto& thread : impl.threads) {
      IoThread* raw = thread.get();
      raw->thread = std::thread([raw] {
        // A throwing handler ends run(); keep the thread serving.
        for (;;) {
          try {
            raw->context.run();
            return;
          } catch (...) {
          }
        }
      });
    }
    return {};
  } catch (const std::exception& e) {
    Error error{Errc::io, "cannot listen on '" + listen + "': " + e.what()};
    if (impl.started) {
      stop_locked(impl);
    }
    return make_error(error.code, std::move(error.message));
  }
}

std::uint16_t Server::port() const {
  return m_impl->bound.port();
}

Server::ConnectionCounts Server::connections() const {
  return {m_impl->open_connections.load(std::memory_order_relaxed),
          m_impl->refused_connections.load(std::memory_order_relaxed)};
}

std::string Server::address() const {
  const auto& address = m_impl->bound.address();
  std::string host = address.to_string();
  if (address.is_v6()) {
    host = "[" + host + "]";
  }
  return host + ":" + std::to_string(m_impl->bound.port());
}

void Server::stop() {
  if (!m_impl) {
    return;
  }
  Impl& impl = *m_impl;
  std::lock_guard lock(impl.control_mutex);
  if (!impl.started || impl.stopped) {
    return;
  }
  stop_locked(impl);
}

namespace {

void stop_locked(ServerCore& impl) {
  impl.stopped = true;
  impl.stopping.store(true);
  net::post(impl.threads.front()->context, [&impl] {
    error_code ignored;
    impl.acceptor->close(ignored);
    impl.accept_retry->cancel();
  });
  for (auto& thread : impl.threads) {
    IoThread* raw = thread.get();
    net::post(raw->context, [raw] {
      std::vector<std::shared_ptr<SessionBase>> sessions;
      {
        std::lock_guard sessions_lock(raw->mutex);
        for (const auto& weak : raw->sessions) {
          if (auto session = weak.lock()) {
            sessions.push_back(std::move(session));
          }
        }
      }
      for (const auto& session : sessions) {
        session->shut_down_if_idle();
      }
    });
    raw->work.reset();
  }
  // In-flight blocking handlers finish and post their responses back; the
  // I/O threads return once their last connection is gone.
  impl.workers->join();
  for (auto& thread : impl.threads) {
    if (thread->thread.joinable()) {
      thread->thread.join();
    }
  }
}

} // namespace

} // namespace npme::http
