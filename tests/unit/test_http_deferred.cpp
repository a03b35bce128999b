#include "core/http/client.hpp"
#include "core/http/fetcher.hpp"
#include "core/http/message.hpp"
#include "core/http/server.hpp"
#include "core/util/crypto.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <optional>
#include <thread>

using namespace npme;
using namespace npme::http;

namespace {

// A server with one I/O thread whose "/-/later" route answers from another
// thread after a delay, and whose routes exercise every deferred path.
struct DeferredFixture {
  std::shared_ptr<Router> router = std::make_shared<Router>();
  std::unique_ptr<Server> server;
  std::atomic<int> observed{0};
  std::mutex threads_mutex;
  std::vector<std::thread> threads;
  std::string tarball = std::string(5000, 't');

  DeferredFixture() {
    router->add("GET", "/-/later", [this](Request& request) {
      Responder responder = request.defer();
      std::lock_guard lock(threads_mutex);
      threads.emplace_back([responder] {
        std::this_thread::sleep_for(std::chrono::milliseconds(1500));
        responder.send(Response::json(200, R"({"later":true})"));
        responder.send(Response::json(500, R"({"twice":true})")); // ignored
      });
      return Response::later();
    });
    router->add("GET", "/-/dropped", [](Request& request) {
      Responder responder = request.defer();
      return Response::later(); // every copy dropped unsent: 500
    });
    router->add("GET", "/-/defer-then-throw", [](Request& request) -> Response {
      Responder responder = request.defer();
      throw std::runtime_error("boom");
    });
    router->add("GET", "/-/defer-then-answer", [](Request& request) {
      Responder responder = request.defer();
      return Response::json(201, R"({"direct":true})");
    });
    router->add(
      "GET", "/-/later-from-worker",
      [](Request& request) {
        Responder responder = request.defer();
        responder.send(Response::json(202, R"({"worker":true})"));
        return Response::later();
      },
      Blocking::yes);
    router->add("GET", "/-/tarball", [this](Request&) {
      Response response;
      response.body = tarball;
      return response;
    });
    router->add("GET", "/-/fast", [](Request&) { return Response::json(200, "{}"); });
    router->set_observer([this](const Request&, const Response&) { ++observed; });
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.io_threads = 1;
    options.worker_threads = 1;
    server = std::make_unique<Server>(options, router);
    REQUIRE(server->start());
  }

  ~DeferredFixture() {
    server->stop();
    for (auto& thread : threads) {
      thread.join();
    }
  }

  std::string url(std::string_view path) const { return "http://" + server->address() + std::string(path); }
};

} // namespace

TEST_CASE("Server answers a deferred request later without holding its only I/O thread") {
  DeferredFixture fixture;
  auto later = std::async(std::launch::async, [&] {
    Client client;
    return client.request("GET", fixture.url("/-/later"));
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  Client client;
  auto fast = client.request("GET", fixture.url("/-/fast"));
  REQUIRE(fast);
  CHECK(fast->status == 200);
  // Answered while the deferred request still waits (it answers after 1.5 s).
  CHECK(later.wait_for(std::chrono::seconds(0)) == std::future_status::timeout);
  auto answer = later.get();
  REQUIRE(answer);
  CHECK(answer->status == 200);
  CHECK(answer->body == R"({"later":true})");
  CHECK(fixture.observed.load() == 2);
}

TEST_CASE("Server answers 500 when every Responder is dropped unsent, and keeps the connection") {
  DeferredFixture fixture;
  Client client;
  auto dropped = client.request("GET", fixture.url("/-/dropped"));
  REQUIRE(dropped);
  CHECK(dropped->status == 500);
  CHECK(dropped->body.find("never answered") != std::string::npos);
  auto next = client.request("GET", fixture.url("/-/fast"));
  REQUIRE(next);
  CHECK(next->status == 200);
}

TEST_CASE("Server sends one answer when a handler defers and then throws or answers directly") {
  DeferredFixture fixture;
  Client client;
  auto thrown = client.request("GET", fixture.url("/-/defer-then-throw"));
  REQUIRE(thrown);
  CHECK(thrown->status == 500);
  auto direct = client.request("GET", fixture.url("/-/defer-then-answer"));
  REQUIRE(direct);
  CHECK(direct->status == 201);
  CHECK(direct->body == R"({"direct":true})");
  // Had a second answer been written, this response would be out of step.
  auto next = client.request("GET", fixture.url("/-/fast"));
  REQUIRE(next);
  CHECK(next->status == 200);
  CHECK(next->body == "{}");
}

TEST_CASE("Server takes a deferred answer sent from a Blocking::yes handler") {
  DeferredFixture fixture;
  Client client;
  auto answer = client.request("GET", fixture.url("/-/later-from-worker"));
  REQUIRE(answer);
  CHECK(answer->status == 202);
}

TEST_CASE("Server::stop waits for the last copy of a sent Responder, dropped on another thread") {
  // The feed's long polls send and then drop their Responders on their own
  // thread, possibly after the server stopped: the session must go while
  // its I/O thread exists (a session destroyed after it locked a freed
  // mutex and hung npme serve at exit). Under ASan a wrong order shows as
  // a use-after-free; here, stop() must not return before the drop.
  for (int round = 0; round < 20; ++round) {
    auto router = std::make_shared<Router>();
    std::atomic<bool> dropping{false};
    std::thread holder;
    std::mutex holder_mutex;
    router->add("GET", "/-/poll", [&](Request& request) {
      std::optional<Responder> responder = request.defer();
      std::lock_guard lock(holder_mutex);
      holder = std::thread([&dropping, responder = std::move(responder), round]() mutable {
        responder->send(Response::json(200, R"({"results":[]})"));
        std::this_thread::sleep_for(std::chrono::milliseconds(round % 4 == 0 ? 100 : 0));
        dropping = true;
        responder.reset();
      });
      return Response::later();
    });
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.io_threads = 1;
    options.worker_threads = 1;
    auto server = std::make_unique<Server>(options, router);
    REQUIRE(server->start());
    {
      Client client;
      auto answer = client.request("GET", "http://" + server->address() + "/-/poll");
      REQUIRE(answer);
      CHECK(answer->status == 200);
    }
    server->stop();
    CHECK(dropping.load());
    server.reset();
    std::lock_guard lock(holder_mutex);
    holder.join();
  }
}

TEST_CASE("Router::dispatch waits for a deferred answer") {
  Router router;
  router.add("GET", "/x", [](Request& request) {
    Responder responder = request.defer();
    std::thread([responder] {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      responder.send(Response::json(203, "{}"));
    }).detach();
    return Response::later();
  });
  Request request;
  request.method = "GET";
  request.path = "/x";
  CHECK(router.dispatch(request).status == 203);
}

TEST_CASE("Fetcher runs at most its connections at once and run_all waits for every job") {
  http::ClientOptions options;
  Fetcher fetcher(3, options);
  std::atomic<int> running{0};
  std::atomic<int> peak{0};
  std::atomic<int> done{0};
  std::vector<Fetcher::Job> jobs;
  for (int i = 0; i < 12; ++i) {
    jobs.push_back([&](Client&) {
      int now = ++running;
      int seen = peak.load();
      while (now > seen && !peak.compare_exchange_weak(seen, now)) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      --running;
      ++done;
    });
  }
  fetcher.run_all(std::move(jobs));
  CHECK(done.load() == 12);
  CHECK(peak.load() <= 3);
  CHECK(fetcher.pending() == 0);
}

TEST_CASE("fetch_tarball returns checked bytes and refuses a mismatch, a 404 and an abort") {
  DeferredFixture fixture;
  Client client;
  const std::string good = util::sri_sha512(fixture.tarball);
  auto bytes = fetch_tarball(client, fixture.url("/-/tarball"), TarballCheck{"t@1.0.0", good, ""});
  REQUIRE(bytes);
  CHECK(*bytes == fixture.tarball);
  // Two sha512 entries: either may match (as every checker of npme agrees).
  auto two = fetch_tarball(client, fixture.url("/-/tarball"),
                           TarballCheck{"t@1.0.0", util::sri_sha512("other") + " " + good, ""});
  CHECK(two);
  auto bad = fetch_tarball(client, fixture.url("/-/tarball"), TarballCheck{"t@1.0.0", util::sri_sha512("x"), ""});
  REQUIRE(!bad);
  CHECK(bad.error().code == Errc::verify);
  CHECK(bad.error().message.find("t@1.0.0") != std::string::npos);
  auto sha1_only = fetch_tarball(client, fixture.url("/-/tarball"),
                                 TarballCheck{"t@1.0.0", "", util::hex(util::sha1(fixture.tarball))});
  CHECK(sha1_only);
  auto missing = fetch_tarball(client, fixture.url("/-/nothing-here"), TarballCheck{"t@1.0.0", good, ""});
  REQUIRE(!missing);
  CHECK(missing.error().code == Errc::not_found);
  Client limited(ClientOptions{std::chrono::milliseconds(2000), std::chrono::milliseconds(5000), "", {}, {}, {}, 100});
  auto too_large = fetch_tarball(limited, fixture.url("/-/tarball"), TarballCheck{"t@1.0.0", good, ""});
  REQUIRE(!too_large);
  CHECK(too_large.error().code == Errc::too_large);
}
