// The follower's state machine through its public interface: a real
// upstream (a store, its feed and a tarball route on a real server on
// 127.0.0.1) and a real replica store. The tests order themselves on the
// requests the upstream receives: a follower asks for a long poll only
// after it committed everything before it and said it is caught up, and it
// asks again after a failure only once the failure is in its status.

#include "core/http/server.hpp"
#include "core/replication/feed.hpp"
#include "core/replication/follower.hpp"
#include "core/replication/sequence.hpp"
#include "core/util/crypto.hpp"
#include "core/util/fs.hpp"
#include "tests/unit/store_fixture.hpp"
#include "tests/unit/temp_dir.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace npme;
using nlohmann::json;

namespace {

using test::TempDir;

constexpr const char* k_secret = "follower-secret-0123456789";
constexpr auto k_patience = std::chrono::seconds(60);

std::string tarball_path(const std::string& name, const std::string& version) {
  return name + "/-/" + name + "-" + version + ".tgz";
}

// A request the upstream received.
struct Seen {
  std::string method;
  std::string path;
  std::map<std::string, std::string> query;

  bool long_poll_after(std::int64_t since) const {
    return path == "/_changes" && query.count("feed") && query.at("feed") == "longpoll" && query.count("since") &&
           query.at("since") == std::to_string(since);
  }
  bool feed_after(std::int64_t since) const {
    return path == "/_changes" && query.count("since") && query.at("since") == std::to_string(since);
  }
};

// An upstream instance: its store, its feed and tarballs on 127.0.0.1, and
// a log of every request, in arrival order.
struct Upstream {
  TempDir dir;
  std::unique_ptr<store::Store> store = test::open_store(dir.path);
  std::shared_ptr<const settings::Settings> config = make_config(dir.path);
  std::int64_t epoch = 1;
  replication::FeedContext feed{*store, [this] { return config; }, "upstream-1", [this] { return epoch; }};
  std::unique_ptr<http::Server> server;

  std::mutex mutex;
  std::condition_variable arrived;
  std::vector<Seen> seen;

  Upstream() {
    auto feed_router = std::make_shared<http::Router>();
    replication::add_feed_routes(*feed_router, feed);
    auto router = std::make_shared<http::Router>();
    // "/_changes" is logged when it arrives (a long poll is answered much
    // later), then handled by the feed's own route.
    router->add(
      "GET", "/_changes",
      [this, feed_router](http::Request& request) {
        record(request);
        const auto match = feed_router->match(request);
        return (*match.handler)(request);
      },
      http::Blocking::yes);
    replication::add_feed_routes(*router, feed);
    router->add("GET", "/{path*}", [this](http::Request& request) {
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
      if (request.path != "/_changes") {
        record(request);
      }
    });
    http::ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.io_threads = 2;
    options.worker_threads = 4;
    server = std::make_unique<http::Server>(options, router);
    REQUIRE(server->start());
  }

  // Long polls still waiting answer at once, so that the server can stop.
  ~Upstream() {
    feed.stopping->store(true);
    server->stop();
  }

  static std::shared_ptr<const settings::Settings> make_config(const fs::path& root) {
    settings::Settings s(settings::Layout::from_root(root), {});
    REQUIRE(s.apply({{"secret", k_secret}}));
    return std::make_shared<const settings::Settings>(s);
  }

  std::string url() const { return "http://" + server->address(); }

  void record(const http::Request& request) {
    {
      std::lock_guard lock(mutex);
      seen.push_back(Seen{request.method, request.path, request.query});
    }
    arrived.notify_all();
  }

  // How many requests arrived so far: a mark for wait_for().
  std::size_t mark() {
    std::lock_guard lock(mutex);
    return seen.size();
  }

  // Waits until a request from index `from` on matches `wanted`; returns
  // its index (fails the test after k_patience).
  std::size_t wait_for(const std::function<bool(const Seen&)>& wanted, std::size_t from = 0) {
    std::unique_lock lock(mutex);
    std::size_t found = 0;
    const bool ok = arrived.wait_for(lock, k_patience, [&] {
      for (std::size_t i = from; i < seen.size(); ++i) {
        if (wanted(seen[i])) {
          found = i;
          return true;
        }
      }
      return false;
    });
    REQUIRE_MESSAGE(ok, "the follower never sent the expected request");
    return found;
  }

  // Requests from index `from` on that match `wanted`.
  std::size_t count(const std::function<bool(const Seen&)>& wanted, std::size_t from = 0) {
    std::lock_guard lock(mutex);
    std::size_t n = 0;
    for (std::size_t i = from; i < seen.size(); ++i) {
      n += wanted(seen[i]) ? 1 : 0;
    }
    return n;
  }

  // Publishes version `version` of `name` with `bytes` as its tarball, the
  // way a publish does (the tarball staged, the document names its integrity).
  void publish(const std::string& name, const std::string& version, const std::string& bytes) {
    const std::string path = tarball_path(name, version);
    auto staged = store->stage_file(path, bytes);
    REQUIRE(staged);
    auto file = std::make_shared<store::StagedFile>(std::move(*staged));
    REQUIRE(store->apply(name, [&](const std::optional<store::Document>& current) -> Expected<store::Write> {
      json doc = current ? json::parse(current->body) : json{{"name", name}, {"versions", json::object()}};
      doc.erase("_id");
      doc.erase("_rev");
      doc["versions"][version] = {
        {"name", name}, {"version", version}, {"dist", {{"tarball", path}, {"integrity", util::sri_sha512(bytes)}}}};
      doc["dist-tags"]["latest"] = version;
      store::Write write;
      write.kind = store::Write::Kind::put;
      write.body = doc.dump();
      write.add_files.push_back(std::move(*file));
      return write;
    }));
  }

  void put(const std::string& id, const json& body) {
    REQUIRE(store->apply(id, [&](const std::optional<store::Document>&) -> Expected<store::Write> {
      store::Write write;
      write.kind = store::Write::Kind::put;
      write.body = body.dump();
      return write;
    }));
  }
};

// A replica: its own store and data directory, and the real follower.
struct Replica {
  TempDir dir;
  std::unique_ptr<store::Store> store = test::open_store(dir.path);
  std::shared_ptr<const settings::Settings> config;
  std::unique_ptr<replication::Follower> follower;

  // Follows `upstream_url` (none when empty).
  explicit Replica(const std::string& upstream_url) {
    settings::Settings s(settings::Layout::from_root(dir.path), {});
    if (!upstream_url.empty()) {
      REQUIRE(s.apply({{"upstream.url", upstream_url},
                       {"upstream.secret", k_secret},
                       {"upstream.policy", "mirror"},
                       {"publication", "read-only"}}));
    }
    config = std::make_shared<const settings::Settings>(s);
    follower = std::make_unique<replication::Follower>(
      *store, [this] { return config; }, data(), "replica-1");
  }

  ~Replica() { follower->stop(); }

  fs::path data() const { return dir.path / "data"; }

  bool has(const std::string& id) const {
    auto doc = store->get(id);
    REQUIRE(doc);
    return doc->has_value();
  }
};

// `replica` holds every document of `upstream` at the same revision, and
// every tarball byte for byte.
void check_same(const store::Store& upstream, const store::Store& replica) {
  auto ids = upstream.list_ids();
  REQUIRE(ids);
  for (const auto& id : *ids) {
    auto theirs = upstream.get(id).value();
    auto ours = replica.get(id).value();
    REQUIRE_MESSAGE(ours, id);
    CHECK((*ours).rev == (*theirs).rev);
    CHECK((*ours).body == (*theirs).body);
    if (id.starts_with("_")) {
      continue;
    }
    // Named: items() of a temporary would outlive it.
    const json body = json::parse((*theirs).body);
    for (const auto& [version, manifest] : body["versions"].items()) {
      const std::string path = manifest["dist"]["tarball"];
      CHECK(util::read_file(replica.file_path(path)).value() == util::read_file(upstream.file_path(path)).value());
    }
  }
}

} // namespace

TEST_CASE("replication::Follower without an upstream stays disabled and refuses reset and fetch_now") {
  Replica replica("");
  CHECK(replica.follower->status().state == "disabled");
  replica.follower->start();
  CHECK_FALSE(replica.follower->running());
  CHECK(replica.follower->status().state == "disabled");
  auto reset = replica.follower->reset();
  REQUIRE_FALSE(reset);
  CHECK(reset.error().code == Errc::precondition);
  auto fetched = replica.follower->fetch_now("left-pad");
  REQUIRE_FALSE(fetched);
  CHECK(fetched.error().code == Errc::precondition);
  replica.follower->stop(); // a no-op
  CHECK(replica.follower->status().state == "disabled");
}

TEST_CASE("replication::Follower applies the feed, saves its sequence and reports caught-up with no lag") {
  Upstream upstream;
  upstream.publish("a", "1.0.0", util::random_bytes(3000));
  upstream.publish("b", "1.0.0", util::random_bytes(2000));
  upstream.publish("a", "1.1.0", util::random_bytes(1000));
  upstream.put("_user:alice", {{"name", "alice"}});
  REQUIRE(upstream.store->update_seq() == 4);

  Replica replica(upstream.url());
  CHECK(replica.follower->status().state == "stopped");
  replica.follower->start();
  CHECK(replica.follower->running());
  upstream.wait_for([](const Seen& s) { return s.long_poll_after(4); });
  auto status = replica.follower->status();
  CHECK(status.state == "caught-up");
  CHECK(status.sequence == 4);
  CHECK(status.upstream_seq == 4);
  CHECK(status.lag_changes == 0);
  CHECK(status.lag_seconds == 0);
  CHECK(status.upstream_instance == "upstream-1");
  CHECK(status.upstream_epoch == 1);
  CHECK(status.last_error.empty());
  CHECK(status.documents_applied == 3); // b, a (its latest change), alice
  CHECK(status.tarballs_fetched == 3);
  CHECK(replication::read_sequence(replica.data()).value() == 4);
  check_same(*upstream.store, *replica.store);

  // A change arriving during the long poll is applied at once.
  upstream.publish("c", "2.0.0", util::random_bytes(500));
  upstream.wait_for([](const Seen& s) { return s.long_poll_after(5); });
  status = replica.follower->status();
  CHECK(status.state == "caught-up");
  CHECK(status.sequence == 5);
  CHECK(status.lag_changes == 0);
  CHECK(status.tarballs_fetched == 4);
  CHECK(replica.has("c"));
  check_same(*upstream.store, *replica.store);
}

TEST_CASE("replication::Follower stops in a long poll, keeps its sequence and resumes from it") {
  Upstream upstream;
  upstream.publish("a", "1.0.0", util::random_bytes(1000));
  Replica replica(upstream.url());
  replica.follower->start();
  upstream.wait_for([](const Seen& s) { return s.long_poll_after(1); });

  replica.follower->stop();
  CHECK_FALSE(replica.follower->running());
  CHECK(replica.follower->status().state == "stopped");
  CHECK(replica.follower->status().sequence == 1);
  CHECK(util::read_file(replica.data() / "sequence").value() == "1\n");

  upstream.publish("b", "1.0.0", util::random_bytes(1000));
  const std::size_t mark = upstream.mark();
  replica.follower->start();
  // From its sequence, not from 0: the first feed request asks after 1.
  const std::size_t first = upstream.wait_for([](const Seen& s) { return s.path == "/_changes"; }, mark);
  CHECK(upstream.count([](const Seen& s) { return s.feed_after(1); }, first) >= 1);
  CHECK(upstream.count([](const Seen& s) { return s.feed_after(0); }, mark) == 0);
  upstream.wait_for([](const Seen& s) { return s.long_poll_after(2); }, mark);
  CHECK(replica.follower->status().sequence == 2);
  CHECK(replica.has("b"));
  // Only b's tarball was fetched again.
  CHECK(upstream.count([](const Seen& s) { return s.path.ends_with(".tgz"); }, mark) == 1);
}

TEST_CASE("replication::Follower never advances past a change it cannot verify, and counts the lag") {
  Upstream upstream;
  const std::string good_b = util::random_bytes(2000);
  upstream.publish("a", "1.0.0", util::random_bytes(1000));
  upstream.publish("b", "1.0.0", good_b);
  upstream.publish("c", "1.0.0", util::random_bytes(1000));
  // The upstream's copy of b rotted after its commit.
  const fs::path b_file = upstream.store->file_path(tarball_path("b", "1.0.0"));
  std::string rotten = good_b;
  rotten[100] = static_cast<char>(rotten[100] ^ 0x01);
  REQUIRE(util::write_file_atomic(b_file, rotten));

  Replica replica(upstream.url());
  replica.follower->start();
  // The first attempt fetches b and fails; the retry asks again after a.
  const std::size_t fetched_b =
    upstream.wait_for([](const Seen& s) { return s.path == "/" + tarball_path("b", "1.0.0"); });
  upstream.wait_for([](const Seen& s) { return s.feed_after(1); }, fetched_b);
  auto status = replica.follower->status();
  CHECK(status.state == "error");
  CHECK(status.last_error.find("(b)") != std::string::npos);
  CHECK(status.last_error.find("integrity") != std::string::npos);
  CHECK_FALSE(status.last_error_time.empty());
  CHECK(status.sequence == 1);
  CHECK(status.upstream_seq == 3);
  CHECK(status.lag_changes == 2);
  CHECK(replication::read_sequence(replica.data()).value() == 1);
  CHECK(replica.has("a"));
  CHECK_FALSE(replica.has("b"));
  CHECK_FALSE(replica.has("c")); // nothing after the refused change
  CHECK_FALSE(fs::exists(replica.store->file_path(tarball_path("b", "1.0.0"))));

  // Repaired upstream: the next retry applies the rest.
  REQUIRE(util::write_file_atomic(b_file, good_b));
  upstream.wait_for([](const Seen& s) { return s.long_poll_after(3); });
  status = replica.follower->status();
  CHECK(status.state == "caught-up");
  CHECK(status.sequence == 3);
  CHECK(status.lag_changes == 0);
  check_same(*upstream.store, *replica.store);
}

TEST_CASE("replication::Follower::reset resyncs from 0: what the upstream lacks goes, users made here included") {
  Upstream upstream;
  upstream.publish("a", "1.0.0", util::random_bytes(1000));
  upstream.put("_user:alice", {{"name", "alice"}});
  Replica replica(upstream.url());
  replica.follower->start();
  upstream.wait_for([](const Seen& s) { return s.long_poll_after(2); });

  // Made on the replica only: a user and a token of theirs.
  REQUIRE(replica.store->apply("_user:bob", [](const std::optional<store::Document>&) -> Expected<store::Write> {
    store::Write write;
    write.kind = store::Write::Kind::put;
    write.body = R"({"name":"bob"})";
    return write;
  }));
  REQUIRE(replica.store->apply("_token:bob1", [](const std::optional<store::Document>&) -> Expected<store::Write> {
    store::Write write;
    write.kind = store::Write::Kind::put;
    write.body = R"({"user":"bob"})";
    return write;
  }));

  const std::size_t mark = upstream.mark();
  REQUIRE(replica.follower->reset());
  upstream.wait_for([](const Seen& s) { return s.long_poll_after(2); }, mark);
  const auto status = replica.follower->status();
  CHECK(status.state == "caught-up");
  CHECK(status.sequence == 2);
  CHECK_FALSE(replica.has("_user:bob"));
  CHECK_FALSE(replica.has("_token:bob1"));
  CHECK(replica.has("_user:alice"));
  CHECK(replica.has("a"));
  check_same(*upstream.store, *replica.store);
  // The resync read the feed from 0 and fetched no tarball it holds intact.
  CHECK(upstream.count([](const Seen& s) { return s.feed_after(0); }, mark) >= 1);
  CHECK(upstream.count([](const Seen& s) { return s.path.ends_with(".tgz"); }, mark) == 0);
  CHECK(replication::read_sequence(replica.data()).value() == 2);
}

TEST_CASE("replication::Follower refuses an upstream whose epoch went down until it is reset") {
  Upstream upstream;
  upstream.publish("a", "1.0.0", util::random_bytes(1000));
  Replica replica(upstream.url());
  // This replica saw epoch 5 before: the upstream at epoch 1 is a stale primary.
  REQUIRE(replica.store->set_meta("upstream_epoch", "5"));
  replica.follower->start();
  const std::size_t first = upstream.wait_for([](const Seen& s) { return s.path == "/"; });
  upstream.wait_for([](const Seen& s) { return s.path == "/"; }, first + 1); // the retry after the refusal
  auto status = replica.follower->status();
  CHECK(status.state == "error");
  CHECK(status.last_error.find("stale primary") != std::string::npos);
  CHECK(status.sequence == 0);
  CHECK(upstream.count([](const Seen& s) { return s.path == "/_changes"; }) == 0);
  CHECK_FALSE(replica.has("a"));

  // reset-follower: the operator's word that this upstream is the right one.
  REQUIRE(replica.follower->reset());
  upstream.wait_for([](const Seen& s) { return s.long_poll_after(1); });
  status = replica.follower->status();
  CHECK(status.state == "caught-up");
  CHECK(status.upstream_epoch == 1);
  CHECK(replica.has("a"));
  CHECK(replica.store->get_meta("upstream_epoch").value() == std::optional<std::string>("1"));
}

TEST_CASE("replication::Follower names an upstream that is not an npme instance") {
  // An npm registry (or anything else) answers "GET /" without update_seq.
  auto router = std::make_shared<http::Router>();
  std::mutex mutex;
  std::condition_variable arrived;
  int roots = 0;
  router->add("GET", "/", [&](http::Request&) {
    {
      std::lock_guard lock(mutex);
      ++roots;
    }
    arrived.notify_all();
    return http::Response::json(200, R"({"db_name":"registry"})");
  });
  http::ServerOptions options;
  options.listen = "127.0.0.1:0";
  http::Server server(options, router);
  REQUIRE(server.start());
  {
    Replica replica("http://" + server.address());
    replica.follower->start();
    {
      std::unique_lock lock(mutex);
      REQUIRE(arrived.wait_for(lock, k_patience, [&] { return roots >= 2; })); // refused, then retried
    }
    const auto status = replica.follower->status();
    CHECK(status.state == "error");
    CHECK(status.last_error.find("is not an npme instance") != std::string::npos);
    CHECK(status.last_error.find("uplink.url") != std::string::npos);
    CHECK(status.sequence == 0);
  }
  server.stop();
}
