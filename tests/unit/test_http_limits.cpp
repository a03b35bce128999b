#include "core/http/message.hpp"
#include "core/http/server.hpp"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

using namespace npme;
using namespace npme::http;

namespace {

// A TCP connection to 127.0.0.1:`port` from `local` (any address of 127/8,
// all loopback on Linux), so that one test can be several clients.
class Client {
public:
  Client(std::uint16_t port, const char* local = "127.0.0.1") {
    m_fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in from{};
    from.sin_family = AF_INET;
    ::inet_pton(AF_INET, local, &from.sin_addr);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    m_connected = ::bind(m_fd, reinterpret_cast<sockaddr*>(&from), sizeof(from)) == 0 &&
                  ::connect(m_fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) == 0;
  }
  ~Client() { close(); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return m_connected; }

  void close() {
    if (m_fd >= 0) {
      ::close(m_fd);
      m_fd = -1;
    }
  }

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

  // What arrives within `wait` (or until the peer closes); `closed` tells
  // whether the peer closed (or reset) the connection meanwhile.
  std::string read_for(std::chrono::milliseconds wait, bool* closed = nullptr) {
    std::string out;
    auto deadline = std::chrono::steady_clock::now() + wait;
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      pollfd entry{m_fd, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&entry, 1, static_cast<int>(left.count())) <= 0) {
        return out;
      }
      char buffer[4096];
      ssize_t n = ::recv(m_fd, buffer, sizeof(buffer), 0);
      if (n <= 0) {
        if (closed != nullptr) {
          *closed = true;
        }
        return out;
      }
      out.append(buffer, static_cast<std::size_t>(n));
    }
  }

  // Sends a GET of "/" and returns the answer's status line ("" when none
  // came within 5 s); the connection stays open (keep-alive).
  std::string get() {
    if (!send_all("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) {
      return "";
    }
    std::string reply;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (reply.find("\r\n\r\n") == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      bool closed = false;
      reply += read_for(std::chrono::milliseconds(100), &closed);
      if (closed) {
        break;
      }
    }
    return reply.substr(0, reply.find("\r\n"));
  }

private:
  int m_fd = -1;
  bool m_connected = false;
};

struct LimitsFixture {
  std::shared_ptr<Router> router = std::make_shared<Router>();
  std::unique_ptr<Server> server;
  std::mutex asked_mutex;
  std::set<std::string> asked; // addresses uncapped_address was asked about

  explicit LimitsFixture(std::size_t cap, unsigned idle_timeout = 5, std::string uncapped = "") {
    router->add("GET", "/", [](Request&) { return Response::json(200, R"({"ok":true})"); });
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.io_threads = 2;
    options.worker_threads = 1;
    options.idle_timeout_seconds = idle_timeout;
    options.max_connections_per_address = cap;
    if (!uncapped.empty()) {
      options.uncapped_address = [this, uncapped](const std::string& address) {
        std::lock_guard lock(asked_mutex);
        asked.insert(address);
        return address == uncapped;
      };
    }
    server = std::make_unique<Server>(options, router);
    REQUIRE(server->start());
  }

  // Waits (at most 10 s) until the server counts `open` connections: a
  // closed client's session ends on the server's own time.
  bool wait_open(std::uint64_t open) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (server->connections().open != open) {
      if (std::chrono::steady_clock::now() > deadline) {
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
  }
};

// Sends `head` and then one byte of `trickle` every 200 ms, each well within
// the idle timeout, until the server closes the connection or 30 s pass.
// Returns whether the server closed it, and what it answered.
std::pair<bool, std::string> trickle(std::uint16_t port, std::string_view head, char trickle_byte) {
  Client client(port);
  REQUIRE(client.connected());
  REQUIRE(client.send_all(head));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  std::string reply;
  while (std::chrono::steady_clock::now() < deadline) {
    bool closed = false;
    reply += client.read_for(std::chrono::milliseconds(200), &closed);
    if (closed || !client.send_all(std::string_view(&trickle_byte, 1))) {
      return {true, reply};
    }
  }
  return {false, reply};
}

} // namespace

TEST_CASE("Server refuses connections over max_connections_per_address, and only from that address") {
  LimitsFixture fixture(3);
  const auto port = fixture.server->port();
  std::vector<std::unique_ptr<Client>> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(std::make_unique<Client>(port));
    REQUIRE(held.back()->connected());
    // Answered: the server has accepted and counted it.
    CHECK(held.back()->get() == "HTTP/1.1 200 OK");
  }

  // The fourth from the same address: the kernel completes the handshake,
  // the server closes it at once, with a 503 that says why.
  Client over(port);
  REQUIRE(over.connected());
  bool closed = false;
  const std::string reply = over.read_for(std::chrono::seconds(5), &closed);
  CHECK(closed);
  CHECK(reply.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
  CHECK(reply.find("Connection: close\r\n") != std::string::npos);
  CHECK(reply.ends_with(R"x({"error":"too many connections from this address (at most 3)"})x"));
  CHECK(fixture.server->connections().refused == 1);

  // Another client address is served meanwhile.
  Client other(port, "127.0.0.2");
  REQUIRE(other.connected());
  CHECK(other.get() == "HTTP/1.1 200 OK");
  CHECK(fixture.server->connections().open == 4);

  // Closing one of the three frees its place.
  held.front()->close();
  REQUIRE(fixture.wait_open(3));
  Client again(port);
  REQUIRE(again.connected());
  CHECK(again.get() == "HTTP/1.1 200 OK");
  // The held connections were never disturbed.
  CHECK(held[1]->get() == "HTTP/1.1 200 OK");
  CHECK(fixture.server->connections().refused == 1);
}

TEST_CASE("Server does not cap the addresses uncapped_address names, nor anyone when the cap is 0") {
  SUBCASE("uncapped_address") {
    LimitsFixture fixture(1, 5, "127.0.0.2");
    const auto port = fixture.server->port();
    std::vector<std::unique_ptr<Client>> proxy;
    for (int i = 0; i < 4; ++i) {
      proxy.push_back(std::make_unique<Client>(port, "127.0.0.2"));
      REQUIRE(proxy.back()->connected());
      CHECK(proxy.back()->get() == "HTTP/1.1 200 OK");
    }
    Client first(port);
    CHECK(first.get() == "HTTP/1.1 200 OK");
    Client second(port);
    bool closed = false;
    CHECK(second.read_for(std::chrono::seconds(5), &closed).starts_with("HTTP/1.1 503 "));
    CHECK(closed);
    CHECK(fixture.server->connections().open == 5);
    std::lock_guard lock(fixture.asked_mutex);
    CHECK(fixture.asked == std::set<std::string>{"127.0.0.1", "127.0.0.2"});
  }
  SUBCASE("0: no cap") {
    LimitsFixture fixture(0);
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < 20; ++i) {
      clients.push_back(std::make_unique<Client>(fixture.server->port()));
      REQUIRE(clients.back()->connected());
      CHECK(clients.back()->get() == "HTTP/1.1 200 OK");
    }
    CHECK(fixture.server->connections().open == 20);
    CHECK(fixture.server->connections().refused == 0);
  }
}

TEST_CASE("Server closes a connection that trickles its header or body past the idle timeout") {
  // One byte every 200 ms restarts no per-read timer: the header (or the
  // body) as a whole must arrive within idle_timeout_seconds.
  LimitsFixture fixture(0, 2);
  SUBCASE("header") {
    auto [closed, reply] = trickle(fixture.server->port(), "GET / HTTP/1.1\r\nX-Slow: ", 'a');
    CHECK(closed);
    CHECK(reply.empty()); // a timeout is not answered
  }
  SUBCASE("body") {
    auto [closed, reply] =
      trickle(fixture.server->port(), "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", 'b');
    CHECK(closed);
    CHECK(reply.empty());
  }
  CHECK(fixture.wait_open(0));
}
