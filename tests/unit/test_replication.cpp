#include "core/replication/feed.hpp"
#include "core/replication/promote.hpp"
#include "core/replication/sequence.hpp"
#include "core/util/fs.hpp"
#include "tests/unit/temp_dir.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <future>
#include <random>
#include <thread>

namespace fs = std::filesystem;
using namespace npme;
using nlohmann::json;

namespace {

using test::TempDir;

constexpr const char* k_secret = "feed-secret-0123456789";

struct FeedFixture {
  TempDir dir;
  std::unique_ptr<store::Store> store;
  std::shared_ptr<const settings::Settings> config;
  http::Router router;

  FeedFixture() {
    auto opened = store::Store::open({dir.path / "couchdb", dir.path / "packages", dir.path / "data"});
    REQUIRE(opened);
    store = std::move(*opened);
    settings::Settings s(settings::Layout::from_root(dir.path), {});
    REQUIRE(s.apply({{"secret", k_secret}}));
    config = std::make_shared<const settings::Settings>(s);
    replication::add_feed_routes(router, replication::FeedContext{
                                           *store, [this] { return config; }, "instance-1", [] { return 3; }});
  }

  void put(const std::string& id, const std::string& body) {
    REQUIRE(store->apply(id, [&](const std::optional<store::Document>&) -> Expected<store::Write> {
      store::Write write;
      write.kind = store::Write::Kind::put;
      write.body = body;
      return write;
    }));
  }

  http::Request request(const std::string& path, std::map<std::string, std::string> query,
                        bool with_secret = true) const {
    http::Request request;
    request.method = "GET";
    request.path = path;
    request.target = path;
    request.query = std::move(query);
    if (with_secret) {
      request.headers.add("Authorization", std::string("Bearer ") + k_secret);
    }
    return request;
  }

  http::Response get(const std::string& path, std::map<std::string, std::string> query, bool with_secret = true) {
    http::Request made = request(path, std::move(query), with_secret);
    return router.dispatch(made);
  }
};

// The end of a deferred answer that a test waits for.
struct AnswerSink : http::Responder::Sink {
  std::promise<http::Response> promise;
  void deliver(http::Response response) override { promise.set_value(std::move(response)); }
};

} // namespace

TEST_CASE("replication::read_sequence treats a missing or empty file as 0") {
  TempDir dir;
  CHECK(*replication::read_sequence(dir.path) == 0);
  REQUIRE(replication::write_sequence(dir.path, 42));
  CHECK(*util::read_file(dir.path / "sequence") == "42\n");
  CHECK(*replication::read_sequence(dir.path) == 42);
  // A relaxed write replaces the file just as atomically, and leaves no temp file behind.
  REQUIRE(replication::write_sequence(dir.path, 43, util::Durability::relaxed));
  CHECK(*replication::read_sequence(dir.path) == 43);
  CHECK(std::distance(std::filesystem::directory_iterator(dir.path), std::filesystem::directory_iterator()) == 1);
  REQUIRE(replication::truncate_sequence(dir.path));
  CHECK(*replication::read_sequence(dir.path) == 0);
  REQUIRE(util::write_file_atomic(dir.path / "sequence", "12abc\n"));
  auto bad = replication::read_sequence(dir.path);
  REQUIRE(!bad);
  CHECK(bad.error().code == Errc::invalid);
}

TEST_CASE("replication::write_whitelist keeps one sorted name per line") {
  TempDir dir;
  CHECK(replication::read_whitelist(dir.path)->empty());
  REQUIRE(replication::write_whitelist(dir.path, {"lodash", "@corp/ui", "lodash", "express"}));
  CHECK(*util::read_file(dir.path / "whitelist") == "@corp/ui\nexpress\nlodash\n");
  REQUIRE(util::write_file_atomic(dir.path / "whitelist", "# comment\n\n left-pad \nreact\n"));
  auto names = replication::read_whitelist(dir.path);
  REQUIRE(names);
  CHECK(*names == std::vector<std::string>{"left-pad", "react"});
}

TEST_CASE("replication::update_whitelist loses no concurrent change and refuses as told") {
  TempDir dir;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&dir, t] {
      for (int i = 0; i < 20; ++i) {
        auto written = replication::update_whitelist(dir.path, [&](std::vector<std::string>& names) -> Expected<void> {
          names.push_back("pkg-" + std::to_string(t) + "-" + std::to_string(i));
          return {};
        });
        CHECK(written);
      }
    });
  }
  for (auto& thread : threads) {
    thread.join();
  }
  auto names = replication::read_whitelist(dir.path);
  REQUIRE(names);
  CHECK(names->size() == 160);
  auto refused = replication::update_whitelist(dir.path, [](std::vector<std::string>& list) -> Expected<void> {
    list.clear();
    return make_error(Errc::not_found, "'x' is not in the white-list");
  });
  REQUIRE(!refused);
  CHECK(refused.error().code == Errc::not_found);
  CHECK(replication::read_whitelist(dir.path)->size() == 160); // nothing written
}

TEST_CASE("replication feed: the secret is required, as bearer or sharedFetchSecret") {
  FeedFixture f;
  CHECK(f.get("/", {}, false).status == 401);
  CHECK(f.get("/_changes", {}, false).status == 401);
  CHECK(f.get("/_changes", {{"sharedFetchSecret", "wrong-secret-0123456789"}}, false).status == 401);
  CHECK(f.get("/_changes", {{"sharedFetchSecret", k_secret}}, false).status == 200);
  auto root = f.get("/", {});
  REQUIRE(root.status == 200);
  auto doc = json::parse(root.body_view());
  CHECK(doc["db_name"] == "registry");
  CHECK(doc["instance"] == "instance-1");
  CHECK(doc["epoch"] == 3);
  CHECK(doc["update_seq"] == 0);
}

TEST_CASE("replication feed: one entry per document, tombstones, since and limit") {
  FeedFixture f;
  f.put("a", R"({"name":"a"})");
  f.put("b", R"({"name":"b"})");
  f.put("a", R"({"name":"a","x":1})");
  f.put("_user:alice", R"({"name":"alice"})");
  REQUIRE(f.store->apply("b", [](const std::optional<store::Document>&) -> Expected<store::Write> {
    store::Write write;
    write.kind = store::Write::Kind::remove;
    return write;
  }));
  auto all = json::parse(f.get("/_changes", {{"since", "0"}}).body_view());
  const auto& results = all["results"];
  REQUIRE(results.size() == 3);
  CHECK(results[0]["id"] == "a");
  CHECK(results[0]["seq"] == 3);
  CHECK(results[0]["changes"][0]["rev"].get<std::string>().starts_with("2-"));
  CHECK(results[1]["id"] == "_user:alice");
  CHECK(results[2]["id"] == "b");
  CHECK(results[2]["deleted"] == true);
  CHECK(all["last_seq"] == 5);

  auto page = json::parse(f.get("/_changes", {{"since", "3"}, {"limit", "1"}}).body_view());
  REQUIRE(page["results"].size() == 1);
  CHECK(page["results"][0]["id"] == "_user:alice");
  CHECK(page["last_seq"] == 4);

  CHECK(f.get("/_changes", {{"since", "-1"}}).status == 400);
  CHECK(f.get("/_changes", {{"limit", "0"}}).status == 400);
  CHECK(f.get("/_changes", {{"feed", "continuous"}}).status == 400);
}

TEST_CASE("replication feed: longpoll answers when the next change arrives") {
  FeedFixture f;
  f.put("a", R"({"name":"a"})");
  // The handler runs here, with a deferral of our own: once it returned
  // Response::later() the poll is registered with nothing to send, and only
  // then is "b" written. An answer before its 60 s timeout can only come
  // from that commit.
  auto answered = std::make_shared<AnswerSink>();
  http::Request request = f.request("/_changes", {{"since", "1"}, {"feed", "longpoll"}, {"timeout", "60000"}});
  request.defer_hook = [answered] { return http::Responder(answered); };
  const auto match = f.router.match(request);
  REQUIRE(match.handler != nullptr);
  const http::Response later = (*match.handler)(request);
  REQUIRE(later.deferred);
  auto future = answered->promise.get_future();
  CHECK(future.wait_for(std::chrono::seconds(0)) == std::future_status::timeout);
  f.put("b", R"({"name":"b"})");
  REQUIRE(future.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  const http::Response response = future.get();
  CHECK(response.status == 200);
  auto doc = json::parse(response.body_view());
  REQUIRE(doc["results"].size() == 1);
  CHECK(doc["results"][0]["id"] == "b");
  CHECK(doc["last_seq"] == 2);

  // With nothing new, it gives up after its timeout with no results.
  auto empty = json::parse(f.get("/_changes", {{"since", "2"}, {"feed", "longpoll"}, {"timeout", "50"}}).body_view());
  CHECK(empty["results"].empty());
  CHECK(empty["last_seq"] == 2);
}

TEST_CASE("replication feed: /_doc gives a document exactly as stored") {
  FeedFixture f;
  f.put("@scope/pkg", R"({"name":"@scope/pkg","versions":{}})");
  auto response = f.get("/_doc/@scope%2fpkg", {});
  REQUIRE(response.status == 200);
  auto stored = f.store->get("@scope/pkg");
  REQUIRE(stored);
  CHECK(std::string(response.body_view()) == (*stored)->body);
  CHECK(f.get("/_doc/missing", {}).status == 404);
  CHECK(f.get("/_doc/missing", {}, false).status == 401);
}

TEST_CASE("store::Write::rev keeps an upstream revision and rejects a malformed one") {
  FeedFixture f;
  REQUIRE(f.store->apply("a", [](const std::optional<store::Document>&) -> Expected<store::Write> {
    store::Write write;
    write.kind = store::Write::Kind::put;
    write.body = R"({"name":"a"})";
    write.rev = "7-0123abcd";
    return write;
  }));
  CHECK((*f.store->get("a"))->rev == "7-0123abcd");
  auto bad = f.store->apply("a", [](const std::optional<store::Document>&) -> Expected<store::Write> {
    store::Write write;
    write.kind = store::Write::Kind::put;
    write.body = R"({"name":"a"})";
    write.rev = "7-\",\"x\":\"";
    return write;
  });
  REQUIRE(!bad);
  CHECK(bad.error().code == Errc::invalid);
  CHECK((*f.store->get("a"))->rev == "7-0123abcd");
}

TEST_CASE("replication::promote refuses an instance without upstream") {
  TempDir dir;
  auto opened = store::Store::open({dir.path / "couchdb", dir.path / "packages", dir.path / "data"});
  REQUIRE(opened);
  auto layout = settings::Layout::from_root(dir.path);
  auto initial = settings::load_or_create(layout);
  REQUIRE(initial);
  settings::LiveSettings live(*initial);
  replication::Follower follower(**opened, [&live] { return live.get(); }, dir.path / "data");
  auto refused = replication::promote(**opened, live, follower, {});
  REQUIRE(!refused);
  CHECK(refused.error().code == Errc::precondition);
  CHECK(replication::read_epoch(**opened) == 1);
}

TEST_CASE("replication::promote with an unreachable old primary raises the epoch and clears the upstream") {
  TempDir dir;
  auto opened = store::Store::open({dir.path / "couchdb", dir.path / "packages", dir.path / "data"});
  REQUIRE(opened);
  auto layout = settings::Layout::from_root(dir.path);
  auto initial = settings::load_or_create(layout);
  REQUIRE(initial);
  REQUIRE(initial->apply({{"upstream.url", "http://127.0.0.1:9"}, {"publication", "read-only"}}));
  settings::LiveSettings live(*initial);
  REQUIRE((*opened)->set_meta("upstream_epoch", "4"));
  replication::Follower follower(**opened, [&live] { return live.get(); }, dir.path / "data");
  auto promoted = replication::promote(**opened, live, follower, {});
  REQUIRE(promoted);
  CHECK(promoted->epoch == 5);
  CHECK(!promoted->upstream_reachable);
  CHECK(replication::read_epoch(**opened) == 5);
  CHECK(live.get()->get("upstream.url").empty());
  CHECK(live.get()->get("publication") == "all");
  auto saved = settings::load(layout);
  REQUIRE(saved);
  CHECK(saved->get("upstream.url").empty());
}
