#include "core/http/client.hpp"
#include "core/http/message.hpp"
#include "core/http/server.hpp"
#include "core/util/gzip.hpp"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

using namespace npme;
using namespace npme::http;

namespace {

constexpr std::size_t k_max_body = 64 * 1024;
constexpr std::size_t k_max_header = 4096;

// A connected TCP socket for sending bytes no well-behaved client would.
class RawSocket {
public:
  explicit RawSocket(std::uint16_t port) {
    m_fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    m_connected = ::connect(m_fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~RawSocket() {
    if (m_fd >= 0) {
      ::close(m_fd);
    }
  }
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;

  bool connected() const { return m_connected; }

  bool send_all(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(m_fd, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) {
        return false;
      }
      data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  // Reads until the peer closes (or 5 s pass); `reset` tells whether the
  // connection ended with a reset instead of an orderly close.
  std::string read_to_eof(bool* reset = nullptr) {
    std::string out;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      pollfd entry{m_fd, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&entry, 1, static_cast<int>(left.count())) <= 0) {
        break;
      }
      char buffer[4096];
      ssize_t n = ::recv(m_fd, buffer, sizeof(buffer), 0);
      if (n < 0 && reset != nullptr) {
        *reset = true;
      }
      if (n <= 0) {
        break;
      }
      out.append(buffer, static_cast<std::size_t>(n));
    }
    return out;
  }

  // Reads until `out` holds a complete header and `body_bytes` after it.
  std::string read_response(std::size_t body_bytes) {
    std::string out;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (;;) {
      auto end = out.find("\r\n\r\n");
      if (end != std::string::npos && out.size() >= end + 4 + body_bytes) {
        return out;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      pollfd entry{m_fd, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&entry, 1, static_cast<int>(left.count())) <= 0) {
        return out;
      }
      char buffer[4096];
      ssize_t n = ::recv(m_fd, buffer, sizeof(buffer), 0);
      if (n <= 0) {
        return out;
      }
      out.append(buffer, static_cast<std::size_t>(n));
    }
  }

private:
  int m_fd = -1;
  bool m_connected = false;
};

std::size_t count_of(std::string_view text, std::string_view needle) {
  std::size_t count = 0;
  for (auto at = text.find(needle); at != std::string_view::npos; at = text.find(needle, at + 1)) {
    ++count;
  }
  return count;
}

// A gate that handlers wait at until the test opens it, counting who arrived:
// the test orders "a handler is running" and "it may finish" explicitly.
class Gate {
public:
  // Counts the caller in, then waits until open() (at most 60 s, so that a
  // failed test cannot hang its server's shutdown for ever).
  void pass() {
    std::unique_lock lock(m_mutex);
    ++m_arrived;
    m_cv.notify_all();
    m_cv.wait_for(lock, std::chrono::seconds(60), [this] { return m_open; });
  }
  // Waits (at most 30 s) until `count` callers arrived; false otherwise.
  bool wait_arrived(int count) {
    std::unique_lock lock(m_mutex);
    return m_cv.wait_for(lock, std::chrono::seconds(30), [&] { return m_arrived >= count; });
  }
  void open() {
    std::lock_guard lock(m_mutex);
    m_open = true;
    m_cv.notify_all();
  }

private:
  std::mutex m_mutex;
  std::condition_variable m_cv;
  int m_arrived = 0;
  bool m_open = false;
};

struct Fixture {
  std::shared_ptr<Router> router = std::make_shared<Router>();
  // "/-/slow" answers only once this opens (the destructor opens it).
  std::shared_ptr<Gate> slow_gate = std::make_shared<Gate>();
  std::unique_ptr<Server> server;
  std::atomic<int> observed{0};
  std::atomic<int> upload_calls{0};
  std::shared_ptr<const std::string> tarball = std::make_shared<const std::string>(2400, 'x');

  explicit Fixture(unsigned io_threads = 2, std::function<std::string(int, const std::string&)> error_body = {}) {
    router->add("GET", "/-/tarball/{path*}", [this](Request& request) {
      Response response;
      response.headers.add("Content-Type", "application/octet-stream");
      response.headers.add("X-Path", request.param("path"));
      response.shared_body = tarball;
      return response;
    });
    router->add("GET", "/-/query", [](Request& request) {
      std::string out;
      for (const auto& [key, value] : request.query) {
        out += key + "=" + value + ";";
      }
      Response response;
      response.body = out + "|" + request.path + "|" + request.target + "|" + request.remote_address;
      return response;
    });
    router->add("PUT", "/-/echo", [this](Request& request) {
      ++upload_calls;
      Response response;
      response.headers.add("X-Method", request.method);
      response.headers.add("X-Auth", std::string(request.headers.get("authorization").value_or("")));
      response.body = request.body;
      return response;
    });
    router->add("DELETE", "/-/echo", [](Request& request) {
      Response response;
      response.body = "deleted " + std::to_string(request.body.size());
      return response;
    });
    router->add("GET", "/-/throw", [](Request&) -> Response { throw std::runtime_error("boom"); });
    router->add(
      "GET", "/-/slow",
      [gate = slow_gate](Request&) {
        gate->pass();
        return Response::json(200, "{}");
      },
      Blocking::yes);
    // Added last: routes are tried in order and these match any one or two segments.
    router->add("GET", "/{name}", [](Request& request) {
      return Response::json(200, R"({"name":")" + request.param("name") + R"("})");
    });
    router->add("GET", "/{scope}/{name}", [](Request& request) {
      return Response::json(200, R"({"scope":")" + request.param("scope") + R"(","name":")" + request.param("name") +
                                     R"("})");
    });
    router->set_observer([this](const Request&, const Response&) { ++observed; });

    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.max_body_bytes = k_max_body;
    options.max_header_bytes = k_max_header;
    options.io_threads = io_threads;
    options.worker_threads = 2;
    options.idle_timeout_seconds = 5;
    options.error_body = std::move(error_body);
    server = std::make_unique<Server>(options, router);
    auto started = server->start();
    REQUIRE(started);
  }

  // Handlers still at the gate must finish before the server can stop.
  ~Fixture() { slow_gate->open(); }

  std::string url(std::string_view path) const { return "http://" + server->address() + std::string(path); }
};

} // namespace

TEST_CASE("percent_decode decodes escapes and rejects malformed ones") {
  CHECK(percent_decode("@scope%2fname") == std::optional<std::string>("@scope/name"));
  CHECK(percent_decode("%40scope%2Fname") == std::optional<std::string>("@scope/name"));
  CHECK(percent_decode("a+b") == std::optional<std::string>("a+b"));
  CHECK(percent_decode("") == std::optional<std::string>(""));
  CHECK(percent_decode("%00") == std::optional<std::string>(std::string(1, '\0')));
  CHECK_FALSE(percent_decode("%zz"));
  CHECK_FALSE(percent_decode("%4"));
  CHECK_FALSE(percent_decode("abc%"));
  CHECK_FALSE(percent_decode("%g1"));
}

TEST_CASE("percent_encode escapes everything outside the unreserved set and `keep`") {
  CHECK(percent_encode("@scope/name") == "%40scope%2Fname");
  CHECK(percent_encode("@scope/name", "@") == "@scope%2Fname");
  CHECK(percent_encode("a b+c~d_e.f-g") == "a%20b%2Bc~d_e.f-g");
  CHECK(percent_encode(std::string("\xff\x00", 2)) == "%FF%00");
  CHECK(percent_decode(percent_encode("ünï/cødé %")) == std::optional<std::string>("ünï/cødé %"));
}

TEST_CASE("Headers look fields up case-insensitively and set replaces every field") {
  Headers headers;
  headers.add("Accept", "a");
  headers.add("accept", "b");
  headers.add("X-Other", "c");
  CHECK(headers.get("ACCEPT") == std::optional<std::string_view>("a"));
  CHECK_FALSE(headers.get("missing"));
  headers.set("ACCEPT", "z");
  CHECK(headers.fields().size() == 2);
  CHECK(headers.get("accept") == std::optional<std::string_view>("z"));
  CHECK(headers.get("x-other") == std::optional<std::string_view>("c"));
}

TEST_CASE("Response::json sets the content type and Request::param defaults to empty") {
  auto response = Response::json(201, R"({"ok":true})");
  CHECK(response.status == 201);
  CHECK(response.headers.get("content-type") == std::optional<std::string_view>("application/json"));
  CHECK(response.body_view() == R"({"ok":true})");
  auto shared = Response::json(200, std::make_shared<const std::string>("[1]"));
  CHECK(shared.body.empty());
  CHECK(shared.body_view() == "[1]");
  Request request;
  request.params["a"] = "b";
  CHECK(request.param("a") == "b");
  CHECK(request.param("missing").empty());
}

TEST_CASE("Router::dispatch matches encoded paths, decodes captures and answers 404 and 405") {
  Router router;
  auto echo = [](std::string tag) {
    return [tag](Request& request) {
      std::string body = tag;
      for (const auto& [key, value] : request.params) {
        body += " " + key + "=" + value;
      }
      Response response;
      response.body = body;
      return response;
    };
  };
  router.add("GET", "/{name}", echo("package"));
  router.add("GET", "/{scope}/{name}", echo("scoped"));
  router.add("GET", "/-/package/{name}/dist-tags/{tag}", echo("tags"));
  router.add("PUT", "/-/package/{name}/dist-tags/{tag}", echo("put-tags"));
  router.add("GET", "/files/{rest*}", echo("files"));
  router.add("GET", "/-/v1/search", echo("search"));
  int observed = 0;
  router.set_observer([&](const Request&, const Response&) { ++observed; });

  auto run = [&](std::string method, std::string path) {
    Request request;
    request.method = std::move(method);
    request.path = std::move(path);
    return router.dispatch(request);
  };

  CHECK(run("GET", "/@scope%2fname").body == "package name=@scope/name");
  CHECK(run("GET", "/@scope/name").body == "scoped name=name scope=@scope");
  CHECK(run("GET", "/lodash").body == "package name=lodash");
  CHECK(run("GET", "/-/package/@a%2Fb/dist-tags/latest").body == "tags name=@a/b tag=latest");
  CHECK(run("PUT", "/-/package/x/dist-tags/next").body == "put-tags name=x tag=next");
  CHECK(run("GET", "/files/a/b%20c/d.tgz").body == "files rest=a/b c/d.tgz");
  CHECK(run("GET", "/%2d/v1/search").body == "search");
  CHECK(run("HEAD", "/lodash").body == "package name=lodash");

  auto not_allowed = run("DELETE", "/-/package/x/dist-tags/next");
  CHECK(not_allowed.status == 405);
  CHECK(not_allowed.body == R"({"error":"method not allowed"})");
  CHECK(not_allowed.headers.get("Allow").value_or("") == "GET, HEAD, PUT");
  auto missing = run("GET", "/a/b/c");
  CHECK(missing.status == 404);
  CHECK(missing.body == R"({"error":"not found"})");
  CHECK(run("GET", "/files/").status == 404);
  CHECK(run("GET", "/bad%zz").status == 404);
  CHECK(observed == 12);

  router.set_fallback([](Request&) { return Response::json(410, R"({"error":"gone"})"); });
  CHECK(run("GET", "/a/b/c").status == 410);
}

TEST_CASE("Router::dispatch turns a throwing handler into a 500") {
  Router router;
  router.add("GET", "/x", [](Request&) -> Response { throw std::runtime_error("boom"); });
  Request request;
  request.method = "GET";
  request.path = "/x";
  auto response = router.dispatch(request);
  CHECK(response.status == 500);
  CHECK(response.body == R"({"error":"internal server error"})");
}

TEST_CASE("Server routes encoded names, decodes the query and serves shared bodies") {
  Fixture fixture;
  Client client;

  auto scoped = client.request("GET", fixture.url("/@scope%2fname"));
  REQUIRE(scoped);
  CHECK(scoped->status == 200);
  CHECK(scoped->body == R"({"name":"@scope/name"})");
  CHECK(scoped->headers.get("content-type") == std::optional<std::string_view>("application/json"));
  CHECK(scoped->headers.get("server") == std::optional<std::string_view>("npme"));
  CHECK(scoped->headers.get("date"));

  auto split = client.request("GET", fixture.url("/@scope/name"));
  REQUIRE(split);
  CHECK(split->body == R"({"scope":"@scope","name":"name"})");

  auto query = client.request("GET", fixture.url("/-/query?text=a+b%20c&size=20&flag&size=99&bad=%zz"));
  REQUIRE(query);
  CHECK(query->status == 200);
  CHECK(query->body ==
        "bad=%zz;flag=;size=20;text=a b c;|/-/query|/-/query?text=a+b%20c&size=20&flag&size=99&bad=%zz|127.0.0.1");

  auto tarball = client.request("GET", fixture.url("/-/tarball/@s/n/-/n-1.0.0.tgz"));
  REQUIRE(tarball);
  CHECK(tarball->status == 200);
  CHECK(tarball->body == *fixture.tarball);
  CHECK(tarball->headers.get("content-length") == std::optional<std::string_view>("2400"));
  CHECK(tarball->headers.get("x-path") == std::optional<std::string_view>("@s/n/-/n-1.0.0.tgz"));
  CHECK(fixture.observed.load() == 4);
}

TEST_CASE("Server answers 404 and 405 as JSON") {
  Fixture fixture;
  Client client;
  auto missing = client.request("GET", fixture.url("/a/b/c"));
  REQUIRE(missing);
  CHECK(missing->status == 404);
  CHECK(missing->body == R"({"error":"not found"})");
  auto not_allowed = client.request("POST", fixture.url("/-/echo"), "x");
  REQUIRE(not_allowed);
  CHECK(not_allowed->status == 405);
  CHECK(not_allowed->body == R"({"error":"method not allowed"})");
  CHECK(not_allowed->headers.get("Allow").value_or("") == "DELETE, GET, HEAD, PUT");
  CHECK(not_allowed->headers.get("X-Content-Type-Options").value_or("") == "nosniff");
  CHECK(missing->headers.get("X-Content-Type-Options").value_or("") == "nosniff");
}

TEST_CASE("Server and Client carry methods, bodies and the bearer token") {
  Fixture fixture;
  ClientOptions options;
  options.bearer_token = "secret-token";
  Client client(options);

  // Over 1 KB, so curl sends "Expect: 100-continue" and waits for the server.
  std::string body(20000, 'b');
  body[5] = '\0';
  auto put = client.request("PUT", fixture.url("/-/echo"), body);
  REQUIRE(put);
  CHECK(put->status == 200);
  CHECK(put->body == body);
  CHECK(put->headers.get("x-method") == std::optional<std::string_view>("PUT"));
  CHECK(put->headers.get("x-auth") == std::optional<std::string_view>("Bearer secret-token"));

  auto empty_put = client.request("PUT", fixture.url("/-/echo"));
  REQUIRE(empty_put);
  CHECK(empty_put->status == 200);
  CHECK(empty_put->body.empty());

  auto deleted = client.request("DELETE", fixture.url("/-/echo"), "abc");
  REQUIRE(deleted);
  CHECK(deleted->body == "deleted 3");

  Headers headers;
  headers.add("Authorization", "Bearer other");
  auto overridden = client.request("PUT", fixture.url("/-/echo"), "", headers);
  REQUIRE(overridden);
  CHECK(overridden->headers.get("x-auth") == std::optional<std::string_view>("Bearer other"));
}

TEST_CASE("Client::download streams the body into the sink and can abort") {
  Fixture fixture;
  Client client;
  std::string received;
  auto done = client.download(fixture.url("/-/tarball/a.tgz"), [&](std::string_view chunk) {
    received.append(chunk);
    return true;
  });
  REQUIRE(done);
  CHECK(done->status == 200);
  CHECK(done->body.empty());
  CHECK(received == *fixture.tarball);

  auto aborted = client.download(fixture.url("/-/tarball/a.tgz"), [](std::string_view) { return false; });
  REQUIRE_FALSE(aborted);
  CHECK(aborted.error().code == Errc::failed);
}

TEST_CASE("Server runs Blocking::yes routes off the I/O thread") {
  // One I/O thread: if the blocked handler held it, the fast request could
  // not be answered until the gate opens, which happens only after it was.
  Fixture fixture(1);
  auto slow = std::async(std::launch::async, [&] {
    Client client;
    return client.request("GET", fixture.url("/-/slow"));
  });
  REQUIRE(fixture.slow_gate->wait_arrived(1));
  ClientOptions options;
  options.timeout = std::chrono::seconds(20);
  Client client(options);
  auto fast = client.request("GET", fixture.url("/lodash"));
  REQUIRE(fast);
  CHECK(fast->status == 200);
  CHECK(slow.wait_for(std::chrono::seconds(0)) == std::future_status::timeout); // still at the gate
  fixture.slow_gate->open();
  auto slow_result = slow.get();
  REQUIRE(slow_result);
  CHECK(slow_result->status == 200);
  CHECK(slow_result->body == "{}");
}

TEST_CASE("Client reports an operation timeout as Errc::timeout") {
  // "/-/slow" answers only when the fixture ends: every request to it times out.
  Fixture fixture;
  ClientOptions options;
  options.timeout = std::chrono::milliseconds(150);
  Client client(options);
  auto result = client.request("GET", fixture.url("/-/slow"));
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::timeout);
  // Also on a reused connection, where curl does not connect again.
  auto warm = client.request("GET", fixture.url("/lodash"));
  REQUIRE(warm);
  auto reused = client.request("GET", fixture.url("/-/slow"));
  REQUIRE_FALSE(reused);
  CHECK(reused.error().code == Errc::timeout);
  CHECK(reused.error().message.starts_with("request to '" + fixture.url("/-/slow") + "' timed out: "));
}

TEST_CASE("Server refuses a Content-Length over the limit with 413 before reading the body") {
  Fixture fixture;
  RawSocket socket(fixture.server->port());
  REQUIRE(socket.connected());
  REQUIRE(socket.send_all("PUT /-/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"));
  // No body follows: the reply must come from the header alone.
  std::string reply = socket.read_to_eof();
  CHECK(reply.starts_with("HTTP/1.1 413 "));
  CHECK(reply.find("Connection: close") != std::string::npos);
  CHECK(reply.ends_with(R"({"error":"request body too large"})"));
  CHECK(fixture.upload_calls.load() == 0);

  Client client;
  auto via_client = client.request("PUT", fixture.url("/-/echo"), std::string(k_max_body + 1, 'x'));
  REQUIRE(via_client);
  CHECK(via_client->status == 413);
  CHECK(fixture.upload_calls.load() == 0);
}

TEST_CASE("Server refuses a chunked body over the limit with 413") {
  Fixture fixture;
  RawSocket socket(fixture.server->port());
  REQUIRE(socket.connected());
  std::string chunk(k_max_body + 100, 'c');
  char size[32];
  std::snprintf(size, sizeof(size), "%zx\r\n", chunk.size());
  socket.send_all("PUT /-/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + std::string(size) + chunk +
                  "\r\n0\r\n\r\n");
  bool reset = false;
  std::string reply = socket.read_to_eof(&reset);
  CHECK(reply.starts_with("HTTP/1.1 413 "));
  CHECK_FALSE(reset);
  CHECK(fixture.upload_calls.load() == 0);
}

TEST_CASE("Server answers an oversized header with 431") {
  Fixture fixture;
  RawSocket socket(fixture.server->port());
  REQUIRE(socket.connected());
  socket.send_all("GET /lodash HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(k_max_header * 2, 'h') + "\r\n\r\n");
  bool reset = false;
  std::string reply = socket.read_to_eof(&reset);
  CHECK(reply.starts_with("HTTP/1.1 431 "));
  CHECK(reply.ends_with(R"({"error":"request header fields too large"})"));
  CHECK_FALSE(reset);
}

TEST_CASE("Server answers garbage with 400 and a JSON body, never a bare reset") {
  Fixture fixture;
  {
    RawSocket socket(fixture.server->port());
    REQUIRE(socket.connected());
    socket.send_all(std::string("\x01\x02 garbage \xff\r\n\r\n", 15));
    bool reset = false;
    std::string reply = socket.read_to_eof(&reset);
    CHECK(reply.starts_with("HTTP/1.1 400 "));
    CHECK(reply.find("Content-Type: application/json") != std::string::npos);
    CHECK(reply.find(R"({"error":"bad request: )") != std::string::npos);
    CHECK_FALSE(reset);
  }
  {
    RawSocket socket(fixture.server->port());
    REQUIRE(socket.connected());
    socket.send_all("GET /lodash HTTP/1.1\r\nContent-Length: nope\r\n\r\n");
    CHECK(socket.read_to_eof().starts_with("HTTP/1.1 400 "));
  }
  // The server still serves afterwards.
  Client client;
  auto after = client.request("GET", fixture.url("/lodash"));
  REQUIRE(after);
  CHECK(after->status == 200);
}

TEST_CASE("Server uses ServerOptions::error_body for its own errors") {
  Fixture fixture(2, [](int status, const std::string& message) {
    return R"({"error":{"code":)" + std::to_string(status) + R"(,"message":")" + message + R"("}})";
  });
  RawSocket socket(fixture.server->port());
  REQUIRE(socket.connected());
  socket.send_all("PUT /-/echo HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n");
  CHECK(socket.read_to_eof().ends_with(R"({"error":{"code":413,"message":"request body too large"}})"));
}

TEST_CASE("Server keeps a connection alive across requests, pipelined or not") {
  Fixture fixture;
  RawSocket socket(fixture.server->port());
  REQUIRE(socket.connected());
  REQUIRE(socket.send_all("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::string first = socket.read_response(std::string(R"({"name":"a"})").size());
  CHECK(first.starts_with("HTTP/1.1 200 "));
  CHECK(first.find("Connection: close") == std::string::npos);
  CHECK(first.ends_with(R"({"name":"a"})"));

  REQUIRE(socket.send_all("GET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  std::string rest = socket.read_to_eof();
  CHECK(count_of(rest, "HTTP/1.1 200 ") == 2);
  auto b = rest.find(R"({"name":"b"})");
  auto c = rest.find(R"({"name":"c"})");
  CHECK(b != std::string::npos);
  CHECK(c != std::string::npos);
  CHECK(b < c);
  CHECK(rest.find("Connection: close") != std::string::npos);
}

TEST_CASE("Server answers HTTP/1.0 without keep-alive by closing") {
  Fixture fixture;
  RawSocket socket(fixture.server->port());
  REQUIRE(socket.connected());
  socket.send_all("GET /a HTTP/1.0\r\n\r\n");
  std::string reply = socket.read_to_eof();
  CHECK(reply.starts_with("HTTP/1.0 200 "));
  CHECK(reply.ends_with(R"({"name":"a"})"));
}

TEST_CASE("Server writes the head: its own fields once, a handler's line breaks dropped, 1.0 keep-alive said") {
  auto router = std::make_shared<Router>();
  router->add("GET", "/-/fields", [](Request&) {
    Response response = Response::json(200, R"({"ok":true})");
    response.headers.add("Date", "Thu, 01 Jan 1970 00:00:00 GMT");
    response.headers.add("X-Content-Type-Options", "sniff-away");
    response.headers.add("Content-Length", "1");
    response.headers.add("X-Split", "a\r\nSet-Cookie: evil=1");
    response.headers.add("X-Kept", "yes");
    return response;
  });
  router->add("GET", "/-/unchanged", [](Request&) {
    Response response;
    response.status = 304;
    response.headers.add("ETag", "\"v1\"");
    return response;
  });
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  Server server(options, router);
  REQUIRE(server.start());
  RawSocket socket(server.port());
  REQUIRE(socket.connected());
  // HTTP/1.0 asking for keep-alive: told so, and the connection stays.
  REQUIRE(socket.send_all("GET /-/fields HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  std::string first = socket.read_response(std::string(R"({"ok":true})").size());
  CHECK(first.starts_with("HTTP/1.0 200 OK\r\n"));
  CHECK(first.find("\r\nConnection: keep-alive\r\n") != std::string::npos);
  CHECK(count_of(first, "\r\nDate: ") == 1);
  CHECK(first.find("1970") == std::string::npos);
  CHECK(count_of(first, "X-Content-Type-Options") == 1);
  CHECK(first.find("X-Content-Type-Options: nosniff\r\n") != std::string::npos);
  CHECK(count_of(first, "Content-Length") == 1);
  CHECK(first.find("Content-Length: 11\r\n") != std::string::npos);
  CHECK(first.find("X-Split") == std::string::npos);
  CHECK(first.find("Set-Cookie") == std::string::npos);
  CHECK(first.find("X-Kept: yes\r\n") != std::string::npos);
  CHECK(first.find("Server: npme\r\n") != std::string::npos);
  CHECK(first.ends_with("\r\n\r\n" R"({"ok":true})"));

  // A 304 has no body and no length; the last request closes.
  REQUIRE(socket.send_all("GET /-/unchanged HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  std::string second = socket.read_to_eof();
  CHECK(second.starts_with("HTTP/1.1 304 Not Modified\r\n"));
  CHECK(second.find("Content-Length") == std::string::npos);
  CHECK(second.find("\r\nConnection: close\r\n") != std::string::npos);
  CHECK(second.find("ETag: \"v1\"\r\n") != std::string::npos);
  CHECK(second.ends_with("\r\n\r\n"));
  server.stop();
}

TEST_CASE("Server answers HEAD through the GET route without a body") {
  Fixture fixture;
  Client client;
  auto head = client.request("HEAD", fixture.url("/-/tarball/x.tgz"));
  REQUIRE(head);
  CHECK(head->status == 200);
  CHECK(head->body.empty());
  CHECK(head->headers.get("content-length") == std::optional<std::string_view>("2400"));

  RawSocket socket(fixture.server->port());
  REQUIRE(socket.connected());
  socket.send_all("HEAD /-/tarball/x.tgz HTTP/1.1\r\nConnection: close\r\n\r\n");
  std::string reply = socket.read_to_eof();
  CHECK(reply.starts_with("HTTP/1.1 200 "));
  CHECK(reply.find("Content-Length: 2400\r\n") != std::string::npos);
  CHECK(reply.ends_with("\r\n\r\n"));
}

TEST_CASE("Server turns a throwing handler into a 500 and keeps serving") {
  Fixture fixture;
  Client client;
  auto thrown = client.request("GET", fixture.url("/-/throw"));
  REQUIRE(thrown);
  CHECK(thrown->status == 500);
  CHECK(thrown->body == R"({"error":"internal server error"})");
  auto after = client.request("GET", fixture.url("/lodash"));
  REQUIRE(after);
  CHECK(after->status == 200);
  CHECK(fixture.observed.load() == 2);
}

TEST_CASE("Server::stop is idempotent and a stopped server refuses connections") {
  Fixture fixture;
  Client client;
  auto before = client.request("GET", fixture.url("/lodash"));
  REQUIRE(before);
  std::string url = fixture.url("/lodash");
  fixture.server->stop();
  fixture.server->stop();
  auto after = client.request("GET", url);
  REQUIRE_FALSE(after);
  CHECK(after.error().code == Errc::unreachable);
  CHECK(after.error().message == "cannot reach '" + url + "': Couldn't connect to server");
  CHECK_FALSE(fixture.server->start());
}

TEST_CASE("Server::start reports a taken address as Errc::io") {
  Fixture fixture;
  ServerOptions options;
  options.listen = fixture.server->address();
  Server second(options, fixture.router);
  auto started = second.start();
  REQUIRE_FALSE(started);
  CHECK(started.error().code == Errc::io);
  CHECK(started.error().message == "cannot listen on '" + options.listen + "': Address already in use");

  options.listen = "127.0.0.1";
  Server bad(options, fixture.router);
  auto bad_started = bad.start();
  REQUIRE_FALSE(bad_started);
  CHECK(bad_started.error().code == Errc::io);
}

TEST_CASE("Server stops promptly with idle keep-alive connections open") {
  Fixture fixture;
  RawSocket socket(fixture.server->port());
  REQUIRE(socket.connected());
  socket.send_all("GET /a HTTP/1.1\r\n\r\n");
  CHECK(socket.read_response(12).ends_with(R"({"name":"a"})"));
  auto started = std::chrono::steady_clock::now();
  fixture.server->stop();
  CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(2));
  CHECK(socket.read_to_eof().empty());
}

TEST_CASE("Server with compress_json gzips large JSON answers for clients that accept gzip, and only those") {
  auto router = std::make_shared<Router>();
  const std::string big = "{\"items\":[" + std::string(4000, '1') + "]}";
  router->add("GET", "/-/big", [&big](Request&) {
    Response response = Response::json(200, big);
    response.headers.add("ETag", "\"v1\"");
    return response;
  });
  router->add("GET", "/-/small", [](Request&) { return Response::json(200, "{\"ok\":true}"); });
  router->add("GET", "/-/binary", [&big](Request&) {
    Response response;
    response.headers.add("Content-Type", "application/octet-stream");
    response.body = big;
    return response;
  });
  router->add("GET", "/-/missing", [&big](Request&) { return Response::json(404, big); });
  router->add("GET", "/-/deferred", [&big](Request& request) {
    Responder responder = request.defer();
    std::thread([responder, &big] { responder.send(Response::json(200, big)); }).detach();
    return Response::later();
  });
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.io_threads = 1;
  options.compress_json = true;
  Server server(options, router);
  REQUIRE(server.start());
  const std::string base = "http://" + server.address();
  Client client;
  Headers gzip;
  gzip.add("Accept-Encoding", "gzip");

  // The client decodes what it asked compressed; the wire had the gzip form.
  for (const std::string path : {"/-/big", "/-/deferred"}) {
    CAPTURE(path);
    auto decoded = client.request("GET", base + path, "", gzip);
    REQUIRE(decoded);
    CHECK(decoded->body == big);
    CHECK(decoded->headers.get("content-encoding") == std::optional<std::string_view>("gzip"));
    CHECK(decoded->headers.get("vary") == std::optional<std::string_view>("Accept-Encoding"));
  }
  auto tagged = client.request("GET", base + "/-/big", "", gzip);
  REQUIRE(tagged);
  CHECK(tagged->headers.get("etag") == std::optional<std::string_view>("\"v1-gzip\""));

  auto plain = client.request("GET", base + "/-/big");
  REQUIRE(plain);
  CHECK(plain->body == big);
  CHECK_FALSE(plain->headers.get("content-encoding"));
  CHECK(plain->headers.get("etag") == std::optional<std::string_view>("\"v1\""));
  for (const std::string path : {"/-/small", "/-/binary", "/-/missing"}) {
    CAPTURE(path);
    auto sent = client.request("GET", base + path, "", gzip);
    REQUIRE(sent);
    CHECK_FALSE(sent->headers.get("content-encoding"));
  }
  server.stop();
}

TEST_CASE("compress_if_accepted leaves answers alone unless they are large JSON and gzip is accepted") {
  Request request;
  request.headers.add("Accept-Encoding", "br;q=1.0, gzip;q=0.8");
  Response response = Response::json(200, std::string(2000, ' ') + "{}");
  compress_if_accepted(request, response);
  CHECK(response.headers.get("Content-Encoding") == std::optional<std::string_view>("gzip"));
  CHECK(*util::gunzip(response.body_view(), 1 << 20) == std::string(2000, ' ') + "{}");

  Request refusing;
  refusing.headers.add("Accept-Encoding", "gzip;q=0");
  Response kept = Response::json(200, std::string(2000, ' ') + "{}");
  compress_if_accepted(refusing, kept);
  CHECK_FALSE(kept.headers.get("Content-Encoding"));

  Response encoded = Response::json(200, std::string(2000, 'x'));
  encoded.headers.add("Content-Encoding", "br");
  compress_if_accepted(request, encoded);
  CHECK(encoded.body == std::string(2000, 'x'));
}

TEST_CASE("Server streams a file body in chunks, and closes short when the file ends early") {
  const auto path = std::filesystem::temp_directory_path() / ("npme-file-body-" + std::to_string(::getpid()));
  std::string content(3u << 20, '\0');
  for (std::size_t i = 0; i < content.size(); ++i) {
    content[i] = static_cast<char>((i * 131) % 251);
  }
  {
    std::ofstream out(path, std::ios::binary);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
  }
  auto open_body = [&](std::uint64_t claimed) {
    auto body = std::make_shared<FileBody>();
    body->fd = util::Fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    body->size = claimed;
    return body;
  };
  auto whole = open_body(content.size());
  REQUIRE(whole->fd);
  auto router = std::make_shared<Router>();
  router->add("GET", "/-/file", [&whole](Request&) {
    Response response;
    response.headers.add("Content-Type", "application/octet-stream");
    response.file_body = whole; // one open file shared by every response
    return response;
  });
  router->add("GET", "/-/short", [&](Request&) {
    Response response;
    response.headers.add("Content-Type", "application/octet-stream");
    response.file_body = open_body(content.size() + 4096); // the file is shorter than announced
    return response;
  });
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.io_threads = 1;
  Server server(options, router);
  REQUIRE(server.start());
  const std::string base = "http://" + server.address();

  std::vector<std::future<Expected<ClientResponse>>> fetches;
  for (int i = 0; i < 4; ++i) {
    fetches.push_back(std::async(std::launch::async, [&] {
      Client client;
      return client.request("GET", base + "/-/file");
    }));
  }
  for (auto& fetch : fetches) {
    auto got = fetch.get();
    REQUIRE(got);
    CHECK(got->status == 200);
    CHECK(got->body.size() == content.size());
    CHECK(got->body == content);
  }
  Client client;
  auto head = client.request("HEAD", base + "/-/file");
  REQUIRE(head);
  CHECK(head->headers.get("content-length") == std::optional<std::string_view>(std::to_string(content.size())));
  CHECK(head->body.empty());

  auto short_read = client.request("GET", base + "/-/short");
  CHECK_FALSE(short_read); // the connection closed before Content-Length bytes
  // The server goes on serving.
  auto after = client.request("GET", base + "/-/file");
  REQUIRE(after);
  CHECK(after->body == content);
  server.stop();
  std::filesystem::remove(path);
}

TEST_CASE("Server runs a Blocking::no handler again on a worker when it returns Response::on_worker()") {
  auto router = std::make_shared<Router>();
  std::mutex mutex;
  std::vector<std::pair<std::thread::id, bool>> calls;
  std::atomic<int> observed{0};
  router->add("GET", "/-/miss", [&](Request& request) {
    {
      std::lock_guard lock(mutex);
      calls.emplace_back(std::this_thread::get_id(), request.on_worker);
    }
    if (!request.on_worker) {
      return Response::on_worker();
    }
    return Response::json(200, R"({"rendered":true})");
  });
  router->add("GET", "/-/twice", [](Request&) { return Response::on_worker(); });
  router->set_observer([&](const Request&, const Response&) { ++observed; });
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.io_threads = 1;
  options.worker_threads = 1;
  Server server(options, router);
  REQUIRE(server.start());
  Client client;
  auto answer = client.request("GET", "http://" + server.address() + "/-/miss");
  REQUIRE(answer);
  CHECK(answer->status == 200);
  CHECK(answer->body == R"({"rendered":true})");
  {
    std::lock_guard lock(mutex);
    REQUIRE(calls.size() == 2);
    CHECK_FALSE(calls[0].second);
    CHECK(calls[1].second);
    CHECK(calls[0].first != calls[1].first); // the I/O thread, then a worker
  }
  CHECK(observed.load() == 1); // the final answer only
  auto twice = client.request("GET", "http://" + server.address() + "/-/twice");
  REQUIRE(twice);
  CHECK(twice->status == 500);
  server.stop();

  // Router::dispatch (no server) runs it again on the caller's thread.
  Request request;
  request.method = "GET";
  request.path = request.target = "/-/miss";
  auto dispatched = router->dispatch(request);
  CHECK(dispatched.status == 200);
  CHECK(dispatched.body_view() == R"({"rendered":true})");
}
