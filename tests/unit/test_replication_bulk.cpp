#include "core/http/client.hpp"
#include "core/http/server.hpp"
#include "core/replication/bulk.hpp"
#include "core/replication/feed.hpp"
#include "core/replication/follower.hpp"
#include "core/util/crypto.hpp"
#include "core/util/fs.hpp"
#include "tests/unit/store_fixture.hpp"
#include "tests/unit/temp_dir.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <thread>

namespace fs = std::filesystem;
using namespace npme;
using nlohmann::json;

namespace {

using test::TempDir;
using Kind = replication::BulkFrame::Kind;

constexpr const char* k_secret = "bulk-secret-0123456789";

std::string frame(const json& header, std::string_view bytes = {}) {
  return header.dump() + "\n" + std::string(bytes);
}

const std::string k_end = frame({{"kind", "end"}});

// Publishes `name` with `versions` into `store` the way a publish does: each
// tarball staged and the document naming it with its dist.integrity. With
// `uplink`, the document is a copy of an uplink package (an "_uplink"
// member) and only the first version's tarball is held.
void publish(store::Store& store, const std::string& name, int versions, bool uplink = false) {
  json doc = {{"name", name}, {"versions", json::object()}};
  if (uplink) {
    doc["_uplink"] = {{"fetched", "2026-01-01T00:00:00Z"}};
  }
  std::vector<store::StagedFile> staged;
  for (int v = 0; v < versions; ++v) {
    const std::string version = "1.0." + std::to_string(v);
    const std::string path = name + "/-/" + name + "-" + version + ".tgz";
    const std::string bytes = util::random_bytes(1000 + static_cast<std::size_t>(v) * 700);
    doc["versions"][version] = {{"name", name},
                                {"version", version},
                                {"dist", {{"tarball", path}, {"integrity", util::sri_sha512(bytes)}}}};
    if (!uplink || v == 0) {
      auto file = store.stage_file(path, bytes);
      REQUIRE(file);
      staged.push_back(std::move(*file));
    }
  }
  REQUIRE(store.apply(name, [&](const std::optional<store::Document>&) -> Expected<store::Write> {
    store::Write write;
    write.kind = store::Write::Kind::put;
    write.body = doc.dump();
    write.add_files = std::move(staged);
    return write;
  }));
}

// A primary: a store, its feed (with the bulk route) and a tarball route
// like the registry's, on a real server on 127.0.0.1. Counts requests by
// kind. `bulk_override`, when set, answers "POST /_bulk" instead of the
// real route (an older npme, a hostile upstream).
struct Primary {
  TempDir dir;
  std::unique_ptr<store::Store> store;
  std::shared_ptr<const settings::Settings> config;
  replication::FeedContext feed;
  std::unique_ptr<http::Server> server;
  std::atomic<int> bulk_requests{0};
  std::atomic<int> doc_requests{0};
  std::atomic<int> tarball_requests{0};
  std::function<http::Response(const http::Request&)> bulk_override;

  Primary()
    : store(test::open_store(dir.path)), config(make_config(dir.path)),
      feed{*store, [this] { return config; }, "primary-1", [] { return 1; }} {
    // Long polls answer at once: a deferred one still held when the server
    // is destroyed can outlive the server's I/O threads (see the report of
    // this change); these tests are about fetching, not about waiting.
    feed.stopping->store(true);
  }

  static std::shared_ptr<const settings::Settings> make_config(const fs::path& root) {
    settings::Settings s(settings::Layout::from_root(root), {});
    REQUIRE(s.apply({{"secret", k_secret}}));
    return std::make_shared<const settings::Settings>(s);
  }

  void start() {
    auto router = std::make_shared<http::Router>();
    // Routes are tried in order: an override goes before the feed's own.
    if (bulk_override) {
      router->add(
        "POST", "/_bulk",
        [this](http::Request& request) {
          ++bulk_requests;
          return bulk_override(request);
        },
        http::Blocking::yes);
    }
    replication::add_feed_routes(*router, feed);
    router->add("GET", "/{path*}", [this](http::Request& request) {
      ++tarball_requests;
      auto bytes = util::read_file(store->file_path(request.param("path")));
      if (!bytes) {
        return http::Response::json(404, R"({"error":"not found"})");
      }
      http::Response response;
      response.headers.set("Content-Type", "application/octet-stream");
      response.body = std::move(*bytes);
      return response;
    });
    router->set_observer([this](const http::Request& request, const http::Response&) {
      if (request.method == "POST" && request.path == "/_bulk" && !bulk_override) {
        ++bulk_requests;
      }
      if (request.path.starts_with("/_doc/")) {
        ++doc_requests;
      }
    });
    http::ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.io_threads = 2;
    options.worker_threads = 4;
    server = std::make_unique<http::Server>(options, router);
    REQUIRE(server->start());
  }

  ~Primary() {
    if (server) {
      server->stop();
    }
  }

  std::string url() const { return "http://" + server->address(); }
};

// A replica following `primary` with the real follower.
struct Replica {
  TempDir dir;
  std::unique_ptr<store::Store> store;
  std::shared_ptr<const settings::Settings> config;
  std::unique_ptr<replication::Follower> follower;

  explicit Replica(const Primary& primary) : store(test::open_store(dir.path)) {
    settings::Settings s(settings::Layout::from_root(dir.path), {});
    REQUIRE(s.apply({{"upstream.url", primary.url()},
                     {"upstream.secret", k_secret},
                     {"upstream.policy", "mirror"},
                     {"publication", "read-only"}}));
    config = std::make_shared<const settings::Settings>(s);
    fs::create_directories(dir.path / "data");
    follower = std::make_unique<replication::Follower>(*store, [this] { return config; }, dir.path / "data",
                                                       "replica-1");
  }

  ~Replica() { follower->stop(); }

  // Waits (up to 60 s) until the follower is caught up at `seq`.
  bool caught_up_at(std::int64_t seq) const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      auto status = follower->status();
      if (status.state == "caught-up" && status.sequence >= seq) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  // Waits (up to 30 s) until the follower reports an error.
  std::string first_error() const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < deadline) {
      auto status = follower->status();
      if (!status.last_error.empty()) {
        return status.last_error;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return "";
  }
};

// Every document and tarball of `primary` is on `replica`, byte for byte.
void check_same(const store::Store& primary, const store::Store& replica) {
  auto ids = primary.list_ids();
  REQUIRE(ids);
  for (const auto& id : *ids) {
    auto theirs = primary.get(id);
    auto ours = replica.get(id);
    REQUIRE(theirs);
    REQUIRE(ours);
    REQUIRE_MESSAGE(*ours, id);
    CHECK((*ours)->rev == (*theirs)->rev);
    CHECK((*ours)->body == (*theirs)->body); // the upstream's document, byte for byte
    auto doc = json::parse((*theirs)->body);
    for (const auto& [version, manifest] : doc["versions"].items()) {
      const auto path = manifest["dist"]["tarball"].get<std::string>();
      if (!fs::exists(primary.file_path(path))) {
        CHECK_MESSAGE(!fs::exists(replica.file_path(path)), path);
        continue;
      }
      auto bytes = util::read_file(replica.file_path(path));
      REQUIRE_MESSAGE(bytes, path);
      CHECK(*bytes == *util::read_file(primary.file_path(path)));
    }
  }
  CHECK(replica.list_ids()->size() == ids->size());
}

http::Response post_bulk(http::Router& router, const std::string& body, bool with_secret = true) {
  http::Request request;
  request.method = "POST";
  request.path = "/_bulk";
  request.target = "/_bulk";
  request.body = body;
  if (with_secret) {
    request.headers.add("Authorization", std::string("Bearer ") + k_secret);
  }
  return router.dispatch(request);
}

} // namespace

TEST_CASE("replication::parse_bulk reads documents, files, missing and large items up to the end frame") {
  const std::string body = frame({{"kind", "doc"}, {"id", "a"}, {"length", 7}}, R"({"x":1})") +
                           frame({{"kind", "file"}, {"path", "a/-/a-1.0.0.tgz"}, {"length", 3}}, "a\nb") +
                           frame({{"kind", "file"}, {"path", "a/-/a-1.0.1.tgz"}, {"length", 0}}) +
                           frame({{"kind", "missing"}, {"id", "gone"}}) +
                           frame({{"kind", "large"}, {"path", "b/-/b-1.0.0.tgz"}}) + k_end;
  auto frames = replication::parse_bulk(body);
  REQUIRE(frames);
  REQUIRE(frames->size() == 5);
  CHECK((*frames)[0].kind == Kind::doc);
  CHECK(!(*frames)[0].is_file);
  CHECK((*frames)[0].name == "a");
  CHECK((*frames)[0].bytes == R"({"x":1})");
  CHECK((*frames)[1].kind == Kind::file);
  CHECK((*frames)[1].is_file);
  CHECK((*frames)[1].bytes == "a\nb");
  CHECK((*frames)[2].bytes.empty());
  CHECK((*frames)[3].kind == Kind::missing);
  CHECK((*frames)[3].name == "gone");
  CHECK((*frames)[4].kind == Kind::large);
  CHECK((*frames)[4].is_file);
  auto empty = replication::parse_bulk(k_end);
  REQUIRE(empty);
  CHECK(empty->empty());
}

TEST_CASE("replication::parse_bulk refuses truncated and hostile answers") {
  const std::string good = frame({{"kind", "file"}, {"path", "a/-/a-1.0.0.tgz"}, {"length", 5}}, "hello") + k_end;
  // Every cut of a good answer is truncated, never a shorter valid one.
  for (std::size_t cut = 0; cut < good.size(); ++cut) {
    auto parsed = replication::parse_bulk(std::string_view(good).substr(0, cut));
    REQUIRE_MESSAGE(!parsed, cut);
    CHECK(parsed.error().code == Errc::invalid);
  }
  const std::vector<std::pair<std::string, std::string>> hostile = {
    {"length past the end", frame({{"kind", "file"}, {"path", "p.tgz"}, {"length", 1000}}, "short") + k_end},
    {"huge length", frame({{"kind", "doc"}, {"id", "a"}, {"length", 18446744073709551615ull}}) + k_end},
    {"negative length", frame({{"kind", "doc"}, {"id", "a"}, {"length", -1}}) + k_end},
    {"text length", frame({{"kind", "doc"}, {"id", "a"}, {"length", "5"}}, "12345") + k_end},
    {"no length", frame({{"kind", "doc"}, {"id", "a"}}) + k_end},
    {"unknown kind", frame({{"kind", "exec"}, {"id", "a"}}) + k_end},
    {"no kind", frame({{"id", "a"}}) + k_end},
    {"id and path", frame({{"kind", "missing"}, {"id", "a"}, {"path", "a.tgz"}}) + k_end},
    {"neither id nor path", frame({{"kind", "missing"}}) + k_end},
    {"a file named by id", frame({{"kind", "file"}, {"id", "a"}, {"length", 0}}) + k_end},
    {"a document named by path", frame({{"kind", "doc"}, {"path", "a"}, {"length", 0}}) + k_end},
    {"not JSON", "hello\n" + k_end},
    {"a JSON array", "[1,2]\n" + k_end},
    {"header too long", std::string(replication::k_bulk_max_header + 10, ' ') + k_end},
    {"bytes after the end", k_end + "x"},
    {"two ends", k_end + k_end},
    {"empty", ""},
    {"binary", std::string("\0\xff\x01\n", 4)},
  };
  for (const auto& [name, body] : hostile) {
    const auto& label = name; // doctest's message lambdas cannot capture a structured binding (clang 14)
    auto parsed = replication::parse_bulk(body);
    CHECK_MESSAGE(!parsed, label);
    if (!parsed) {
      CHECK(parsed.error().code == Errc::invalid);
      CHECK(parsed.error().message.starts_with("malformed bulk answer at byte "));
    }
  }
}

TEST_CASE("replication bulk route: secret, documents as /_doc serves them, tarballs as stored, missing paths") {
  Primary p;
  publish(*p.store, "a", 2);
  publish(*p.store, "b", 1);
  http::Router router;
  replication::add_feed_routes(router, p.feed);

  CHECK(post_bulk(router, R"({"docs":["a"]})", false).status == 401);
  CHECK(post_bulk(router, "not json").status == 400);
  CHECK(post_bulk(router, R"({"docs":"a"})").status == 400);
  CHECK(post_bulk(router, R"({"docs":[1]})").status == 400);
  CHECK(post_bulk(router, R"({"files":[""]})").status == 400);
  json too_many = {{"docs", std::vector<std::string>(replication::k_bulk_max_items + 1, "a")}};
  CHECK(post_bulk(router, too_many.dump()).status == 400);

  json asked = {{"docs", {"a", "nope", "b"}},
                {"files",
                 {"a/-/a-1.0.1.tgz", "a/-/a-9.tgz", "../couchdb/registry.sqlite", "a/-/../../b/-/b-1.0.0.tgz",
                  ".staging/x.tgz", "/etc/passwd.tgz", "b/-/b-1.0.0.tgz"}}};
  auto response = post_bulk(router, asked.dump());
  REQUIRE(response.status == 200);
  CHECK(response.headers.get("Content-Type") == std::optional<std::string_view>(replication::k_bulk_content_type));
  auto frames = replication::parse_bulk(response.body_view());
  REQUIRE(frames);
  REQUIRE(frames->size() == 10);
  const auto& f = *frames;
  CHECK((f[0].kind == Kind::doc && f[0].name == "a"));
  CHECK(f[0].bytes == (*p.store->get("a"))->body);
  CHECK((f[1].kind == Kind::missing && f[1].name == "nope" && !f[1].is_file));
  CHECK((f[2].kind == Kind::doc && f[2].name == "b"));
  CHECK((f[3].kind == Kind::file && f[3].name == "a/-/a-1.0.1.tgz"));
  CHECK(f[3].bytes == *util::read_file(p.store->file_path("a/-/a-1.0.1.tgz")));
  for (int i = 4; i <= 8; ++i) {
    CHECK_MESSAGE((f[i].kind == Kind::missing && f[i].is_file), f[i].name);
  }
  CHECK((f[9].kind == Kind::file && f[9].name == "b/-/b-1.0.0.tgz"));
}

TEST_CASE("replication bulk route: an answer stops at its cap; a file above the cap is 'large'") {
  Primary p;
  http::Router router;
  replication::add_feed_routes(router, p.feed);
  const std::size_t nine_mb = 9u << 20;
  fs::create_directories(p.store->file_path("big/-"));
  REQUIRE(util::write_file_atomic(p.store->file_path("big/-/big-1.0.0.tgz"), std::string(nine_mb, 'a')));
  REQUIRE(util::write_file_atomic(p.store->file_path("big/-/big-1.0.1.tgz"), std::string(nine_mb, 'b')));
  REQUIRE(util::write_file_atomic(p.store->file_path("big/-/big-2.0.0.tgz"),
                                  std::string(replication::k_bulk_max_bytes + 1, 'c')));
  json asked = {{"files", {"big/-/big-2.0.0.tgz", "big/-/big-1.0.0.tgz", "big/-/big-1.0.1.tgz"}}};
  auto response = post_bulk(router, asked.dump());
  REQUIRE(response.status == 200);
  CHECK(response.body_view().size() < replication::k_bulk_max_bytes + 4096);
  auto frames = replication::parse_bulk(response.body_view());
  REQUIRE(frames);
  // The third file did not fit beside the second: left out, asked again later.
  REQUIRE(frames->size() == 2);
  CHECK(((*frames)[0].kind == Kind::large && (*frames)[0].name == "big/-/big-2.0.0.tgz"));
  CHECK(((*frames)[1].kind == Kind::file && (*frames)[1].bytes.size() == nine_mb));
}

TEST_CASE("replication::Follower syncs through the bulk route: no request per document or tarball") {
  Primary p;
  for (int i = 0; i < 40; ++i) {
    publish(*p.store, "pkg" + std::to_string(i), 3);
  }
  publish(*p.store, "up", 3, true); // an uplink copy holding one of its three tarballs
  p.start();
  Replica r(p);
  r.follower->start();
  REQUIRE(r.caught_up_at(p.store->update_seq()));
  check_same(*p.store, *r.store);
  CHECK(p.bulk_requests > 0);
  CHECK(p.bulk_requests <= 20);
  CHECK(p.doc_requests == 0);
  // The uplink copy's missing tarballs are neither fetched one by one nor
  // asked of an uplink: they come on demand.
  CHECK(p.tarball_requests == 0);
  CHECK(!fs::exists(r.store->file_path("up/-/up-1.0.1.tgz")));
  CHECK(fs::exists(r.store->file_path("up/-/up-1.0.0.tgz")));
  auto status = r.follower->status();
  CHECK(status.tarballs_fetched == 121);
  CHECK(status.last_error.empty());
}

TEST_CASE("replication::Follower falls back to one request per item when the upstream has no bulk route") {
  for (int status : {404, 405}) {
    CAPTURE(status);
    Primary p;
    for (int i = 0; i < 12; ++i) {
      publish(*p.store, "pkg" + std::to_string(i), 2);
    }
    publish(*p.store, "up", 3, true);
    p.bulk_override = [status](const http::Request&) -> http::Response {
      return http::Response::json(status, R"({"error":"no such route"})");
    };
    p.start();
    Replica r(p);
    r.follower->start();
    REQUIRE(r.caught_up_at(p.store->update_seq()));
    check_same(*p.store, *r.store);
    // Asked once per session, then item by item: a GET per document and per
    // tarball (the uplink copy's with "?held=1", answered 404 for two).
    CHECK(p.bulk_requests >= 1);
    CHECK(p.bulk_requests <= 4);
    CHECK(p.doc_requests == 13);
    CHECK(p.tarball_requests == 12 * 2 + 3);
    CHECK(r.follower->status().last_error.empty());
  }
}

TEST_CASE("replication::Follower applies nothing of a truncated or lying bulk answer, and retries") {
  // Each hostile answer is given once per kind of request it targets; the
  // follower must report an error, apply nothing of what it fetched that
  // way, and sync fully once the upstream answers properly.
  const std::vector<std::pair<std::string, std::function<std::string(const std::string&)>>> lies = {
    {"truncated", [](const std::string& body) { return body.substr(0, body.size() / 2); }},
    {"no end frame", [](const std::string& body) { return body.substr(0, body.size() - k_end.size()); }},
    {"a flipped byte in a tarball",
     [](const std::string& body) {
       std::string copy = body;
       const auto at = copy.find("\"kind\":\"file\"");
       if (at != std::string::npos) {
         const auto bytes = copy.find('\n', at) + 10;
         copy[bytes] = static_cast<char>(copy[bytes] ^ 0x55);
       }
       return copy;
     }},
    {"a file not asked for",
     [](const std::string& body) {
       return body.substr(0, body.size() - k_end.size()) +
              frame({{"kind", "file"}, {"path", "evil/-/evil-1.0.0.tgz"}, {"length", 4}}, "evil") + k_end;
     }},
  };
  for (const auto& [name, lie] : lies) {
    const auto& label = name; // as above
    CAPTURE(label);
    Primary p;
    for (int i = 0; i < 12; ++i) {
      publish(*p.store, "pkg" + std::to_string(i), 2);
    }
    // The real route answers; the lie is applied to answers with files
    // until the follower has seen it twice.
    http::Router real;
    replication::add_feed_routes(real, p.feed);
    auto lies_told = std::make_shared<std::atomic<int>>(0);
    p.bulk_override = [&real, lie = lie, lies_told](const http::Request& request) -> http::Response {
      http::Request copy = request.without_body();
      copy.body = request.body;
      auto response = real.dispatch(copy);
      if (request.body.find("\"files\":[\"") != std::string::npos && lies_told->load() < 2) {
        ++*lies_told;
        response.body = lie(std::string(response.body_view()));
        response.shared_body.reset();
      }
      return response;
    };
    p.start();
    Replica r(p);
    r.follower->start();
    const auto error = r.first_error();
    CHECK(!error.empty());
    REQUIRE(r.caught_up_at(p.store->update_seq()));
    CHECK(lies_told->load() == 2);
    check_same(*p.store, *r.store);
    CHECK(r.follower->status().tarballs_fetched == 24);
  }
}
