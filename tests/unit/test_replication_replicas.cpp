#include "core/replication/feed.hpp"
#include "core/replication/replicas.hpp"
#include "tests/unit/temp_dir.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

using namespace npme;
using nlohmann::json;

namespace {

using test::TempDir;

// Catches what a deferred answer sends.
struct CaughtAnswer : http::Responder::Sink {
  std::mutex mutex;
  std::condition_variable sent;
  std::optional<http::Response> response;

  void deliver(http::Response answer) override {
    std::lock_guard lock(mutex);
    response = std::move(answer);
    sent.notify_all();
  }

  // The answer, waiting up to `timeout` for it.
  std::optional<http::Response> wait(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex);
    sent.wait_for(lock, timeout, [this] { return response.has_value(); });
    return response;
  }
};

struct ReplicasFixture {
  TempDir dir;
  std::unique_ptr<store::Store> store;
  std::shared_ptr<const settings::Settings> config;
  std::unique_ptr<replication::Replicas> replicas;

  using Values = std::map<std::string, std::string>;
  explicit ReplicasFixture(const Values& values) {
    auto opened = store::Store::open({dir.path / "couchdb", dir.path / "packages", dir.path / "data"});
    REQUIRE(opened);
    store = std::move(*opened);
    settings::Settings s(settings::Layout::from_root(dir.path), {});
    REQUIRE(s.apply(values));
    config = std::make_shared<const settings::Settings>(s);
    replicas = std::make_unique<replication::Replicas>(*store, [this] { return config; });
  }

  // A feed request of follower `id` asking for changes after `since`.
  std::string poll(const std::string& id, std::int64_t since) {
    http::Request request;
    request.method = "GET";
    request.path = "/_changes";
    request.remote_address = "127.0.0.9";
    if (!id.empty()) {
      request.headers.set(std::string(replication::k_instance_header), id);
      request.headers.set(std::string(replication::k_instance_url_header), "http://" + id + ".example:8080");
    }
    return replicas->on_request(request, since);
  }

  // A publish of document `id` through the gate; `caught` receives a deferred answer.
  http::Response publish(const std::string& id, const std::shared_ptr<CaughtAnswer>& caught, bool* committed,
                         const std::function<void()>& during_commit = {}) {
    http::Request request;
    request.method = "PUT";
    request.path = "/" + id;
    request.defer_hook = [caught] { return http::Responder(caught); };
    return replicas->write(
      request,
      [&] {
        *committed = true;
        if (during_commit) {
          during_commit();
        }
        auto written = store->apply(id, [&](const std::optional<store::Document>&) -> Expected<store::Write> {
          store::Write write;
          write.kind = store::Write::Kind::put;
          write.body = json{{"name", id}}.dump();
          return write;
        });
        REQUIRE(written);
        return http::Response::json(201, R"({"ok":true})");
      },
      [](const Error& refusal) {
        return http::Response::json(503, json{{"error", refusal.message}}.dump());
      });
  }
};

} // namespace

TEST_CASE("Replicas lists the followers that name themselves, with position and lag") {
  ReplicasFixture fixture(ReplicasFixture::Values{});
  bool committed = false;
  auto caught = std::make_shared<CaughtAnswer>();
  CHECK(fixture.publish("a", caught, &committed).status == 201); // sync_replicas=0: answered at once
  CHECK(fixture.publish("b", caught, &committed).status == 201);
  CHECK(fixture.poll("", 0).empty()); // a reader of the feed, not a follower
  const auto key = fixture.poll("replica-1", 1);
  CHECK(key == "replica-1");
  auto rows = fixture.replicas->table();
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].instance == "replica-1");
  CHECK(rows[0].url == "http://replica-1.example:8080");
  CHECK(rows[0].address == "127.0.0.9");
  CHECK(rows[0].applied_seq == 1);
  CHECK(rows[0].lag_changes == 1);
  CHECK(rows[0].state == "streaming");
  CHECK_FALSE(rows[0].synchronous); // sync_replicas=0
  fixture.replicas->on_answer(key, 2, true);
  fixture.poll("replica-1", 2);
  rows = fixture.replicas->table();
  CHECK(rows[0].lag_changes == 0);
  CHECK(rows[0].lag_seconds == 0);
  // A hostile instance header is not a follower.
  CHECK(fixture.poll(std::string(100, 'x'), 0).empty());
  CHECK(fixture.poll("bad id\"", 0).empty());
  CHECK(fixture.replicas->table().size() == 1);
  const auto metrics = fixture.replicas->metrics();
  CHECK(metrics.find("npme_replica_lag_changes{instance=\"replica-1\"} 0") != std::string::npos);
  // Connected and caught up: it would count once sync_replicas > 0.
  CHECK(metrics.find("npme_sync_replicas_connected 1") != std::string::npos);
}

TEST_CASE("Replicas: strict synchronous replication refuses a write without enough followers; relaxed degrades") {
  ReplicasFixture strict(ReplicasFixture::Values{{"replication.sync_replicas", "1"}});
  bool committed = false;
  auto caught = std::make_shared<CaughtAnswer>();
  auto refused = strict.publish("a", caught, &committed);
  CHECK(refused.status == 503);
  CHECK(refused.body.find("1 of 1 required synchronous replica missing") != std::string::npos);
  CHECK_FALSE(committed);
  CHECK(strict.store->update_seq() == 0);
  CHECK(strict.replicas->sync().refused == 1);

  ReplicasFixture relaxed(
    ReplicasFixture::Values{{"replication.sync_replicas", "2"}, {"replication.sync_mode", "relaxed"}});
  relaxed.poll("replica-1", 0);
  auto written = relaxed.publish("a", caught, &committed);
  CHECK(written.status == 201);
  CHECK(committed);
  CHECK(relaxed.replicas->sync().degraded);
  CHECK(relaxed.replicas->sync().asynchronous == 1);
  CHECK(relaxed.replicas->metrics().find("npme_sync_degraded 1") != std::string::npos);
}

TEST_CASE("Replicas: a write is answered once a follower asks for changes past it") {
  ReplicasFixture fixture(
    ReplicasFixture::Values{{"replication.sync_replicas", "1"}, {"replication.sync_timeout", "30"}});
  const auto key = fixture.poll("replica-1", 0);
  bool committed = false;
  auto caught = std::make_shared<CaughtAnswer>();
  auto response = fixture.publish("a", caught, &committed);
  CHECK(response.deferred);
  CHECK(committed);
  CHECK_FALSE(caught->wait(std::chrono::milliseconds(100)));
  CHECK(fixture.replicas->sync().waiting == 1);
  // The long poll is answered with the change, then the follower asks past it.
  fixture.replicas->on_answer(key, 1, true);
  CHECK_FALSE(caught->wait(std::chrono::milliseconds(50)));
  fixture.poll("replica-1", 1);
  auto answer = caught->wait(std::chrono::seconds(5));
  REQUIRE(answer);
  CHECK(answer->status == 201);
  CHECK_FALSE(answer->headers.get("npm-notice"));
  CHECK(fixture.replicas->sync().confirmed == 1);
  CHECK(fixture.replicas->is_synchronous(key));
}

TEST_CASE("Replicas: a follower that claims a position it was never sent confirms nothing; the timeout answers") {
  ReplicasFixture fixture(
    ReplicasFixture::Values{{"replication.sync_replicas", "1"}, {"replication.sync_timeout", "1"}});
  fixture.poll("liar", 0);
  bool committed = false;
  auto caught = std::make_shared<CaughtAnswer>();
  CHECK(fixture.publish("a", caught, &committed).deferred);
  fixture.poll("liar", 1000); // never fetched change 1
  CHECK_FALSE(caught->wait(std::chrono::milliseconds(300)));
  auto answer = caught->wait(std::chrono::seconds(5));
  REQUIRE(answer);
  CHECK(answer->status == 201);
  auto notice = answer->headers.get("npm-notice");
  REQUIRE(notice);
  CHECK(notice->find("published, but not yet confirmed by a synchronous replica") != std::string::npos);
  CHECK(fixture.replicas->sync().unconfirmed == 1);
  CHECK(fixture.store->update_seq() == 1); // committed all the same
}

TEST_CASE("Replicas::stop answers the waiting writes with the notice") {
  ReplicasFixture fixture(
    ReplicasFixture::Values{{"replication.sync_replicas", "1"}, {"replication.sync_timeout", "300"}});
  fixture.poll("replica-1", 0);
  bool committed = false;
  auto caught = std::make_shared<CaughtAnswer>();
  CHECK(fixture.publish("a", caught, &committed).deferred);
  fixture.replicas->stop();
  auto answer = caught->wait(std::chrono::seconds(1));
  REQUIRE(answer);
  CHECK(answer->headers.get("npm-notice"));
}

TEST_CASE("Replicas: a write is not acknowledged when the leader's term ends during its commit") {
  ReplicasFixture fixture(ReplicasFixture::Values{});
  std::atomic<std::int64_t> term{7};
  fixture.replicas->set_term([&term] { return term.load(); });
  bool committed = false;
  auto caught = std::make_shared<CaughtAnswer>();
  CHECK(fixture.publish("kept", caught, &committed).status == 201);

  // Frozen between the check and the commit: the lease lapsed meanwhile.
  committed = false;
  auto response = fixture.publish("late", caught, &committed, [&term] { term = 0; });
  CHECK(committed);
  CHECK(response.status == 503);
  CHECK(response.body.find("lost the lead") != std::string::npos);

  // A new term (led again) is not the one the write was checked in either.
  term = 7;
  committed = false;
  response = fixture.publish("again", caught, &committed, [&term] { term = 8; });
  CHECK(response.status == 503);
}

TEST_CASE("Replicas: a write waiting for a synchronous replica is not acknowledged once the term ended") {
  ReplicasFixture fixture(
    ReplicasFixture::Values{{"replication.sync_replicas", "1"}, {"replication.sync_timeout", "30"}});
  std::atomic<std::int64_t> term{3};
  fixture.replicas->set_term([&term] { return term.load(); });
  const auto key = fixture.poll("replica-1", 0);
  bool committed = false;
  auto caught = std::make_shared<CaughtAnswer>();
  CHECK(fixture.publish("a", caught, &committed).deferred);
  // Deposed while it waits, then leading again in another term: a
  // follower's later position is not a confirmation of this write.
  term = 0;
  term = 4;
  fixture.replicas->on_answer(key, 1, true);
  fixture.poll("replica-1", 1);
  auto answer = caught->wait(std::chrono::seconds(5));
  REQUIRE(answer);
  CHECK(answer->status == 503);
  CHECK_FALSE(answer->headers.get("npm-notice"));

  // The timeout path too: no 201 with a notice after the term ended.
  ReplicasFixture timed(ReplicasFixture::Values{{"replication.sync_replicas", "1"}, {"replication.sync_timeout", "1"}});
  std::atomic<std::int64_t> timed_term{3};
  timed.replicas->set_term([&timed_term] { return timed_term.load(); });
  timed.poll("replica-1", 0);
  auto late = std::make_shared<CaughtAnswer>();
  CHECK(timed.publish("b", late, &committed).deferred);
  timed_term = 0;
  auto timed_answer = late->wait(std::chrono::seconds(5));
  REQUIRE(timed_answer);
  CHECK(timed_answer->status == 503);
}
