#include "core/admin/api.hpp"
#include "core/admin/client.hpp"
#include "core/admin/metrics.hpp"
#include "core/http/client.hpp"
#include "core/replication/promote.hpp"
#include "core/replication/sequence.hpp"
#include "core/util/fs.hpp"
#include "tests/unit/temp_dir.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace npme;
using nlohmann::json;

namespace {

using test::TempDir;

// The admin API as `npme serve` wires it, over a real store, real services
// and a real server on 127.0.0.1, without the registry port: what the CLI
// talks to. The status document is the test's own.
struct AdminInstance {
  TempDir dir;
  settings::Layout layout = settings::Layout::from_root(dir.path);
  settings::LiveSettings live{load()};
  std::unique_ptr<store::Store> store = open_store(*live.get());
  auth::Auth auth{*store};
  replication::Follower follower{*store, [this] { return live.get(); }, live.get()->data_dir(), "admin-test"};
  replication::Replicas replicas{*store, [this] { return live.get(); }};
  ha::Ha failover{ha::Ha::Context{*store, live, follower, "admin-test", "", "", [](const std::string&) {}}};
  uplink::Service uplink{*store, [this] { return live.get(); }, live.get()->data_dir()};
  std::unique_ptr<http::Server> server;

  AdminInstance() {
    auto router = admin::make_router(admin::Context{
      *store, auth, live,
      [this] {
        return json{{"instance", "admin-test"}, {"update_seq", store->update_seq()}};
      },
      [] { return std::string("npme_test_gauge 7\n"); }, follower, live.get()->data_dir(), uplink, replicas, failover});
    http::ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.io_threads = 1;
    options.worker_threads = 2;
    server = std::make_unique<http::Server>(options, router);
    REQUIRE(server->start());
  }

  ~AdminInstance() {
    server->stop();
    uplink.stop();
    follower.stop();
    replicas.stop();
  }

  settings::Settings load() {
    auto loaded = settings::load_or_create(layout);
    REQUIRE(loaded);
    return std::move(*loaded);
  }

  static std::unique_ptr<store::Store> open_store(const settings::Settings& s) {
    auto opened = store::Store::open({s.metadata_dir(), s.packages_dir(), s.data_dir()});
    REQUIRE(opened);
    return std::move(*opened);
  }

  std::string url() const { return "http://" + server->address(); }
  admin::Client client() const { return admin::Client(url(), live.get()->get("admin.token")); }
  admin::Client client(const std::string& token) const { return admin::Client(url(), token); }
};

// An admin call that must fail: its error (checked to be one first).
Error refusal(admin::Client& client, const std::string& method, const std::string& path, const json* body = nullptr) {
  auto answer = client.call(method, path, body);
  REQUIRE_FALSE(answer);
  return answer.error();
}

} // namespace

TEST_CASE("admin API: every endpoint wants the admin token; errors are JSON with a code") {
  AdminInstance a;
  auto wrong = a.client("not-the-admin-token-0123456789");
  const Error refused = refusal(wrong, "GET", "/status");
  CHECK(refused.code == Errc::unauthorized);
  CHECK(refused.message == "missing or wrong admin token");
  const json user = {{"name", "mallory"}, {"password", "mallory-password"}};
  CHECK(refusal(wrong, "POST", "/users", &user).code == Errc::unauthorized);
  CHECK_FALSE(a.auth.check_password("mallory", "mallory-password")); // nothing written

  // Without any Authorization header, as raw HTTP: status and body shape.
  http::Client raw;
  auto answer = raw.request("GET", a.url() + "/api/v1/settings");
  REQUIRE(answer);
  CHECK(answer->status == 401);
  const auto body = json::parse(answer->body);
  CHECK(body["error"]["code"] == "unauthorized");
  CHECK(body["error"]["message"] == "missing or wrong admin token");

  auto client = a.client();
  auto status = client.call("GET", "/status");
  REQUIRE(status);
  CHECK((*status)["instance"] == "admin-test");
  const Error unknown = refusal(client, "GET", "/nope");
  CHECK(unknown.code == Errc::not_found);
  CHECK(unknown.message == "no admin endpoint GET /api/v1/nope");

  // A method the path does not take: 405, the admin error shape, Allow.
  auto not_allowed = raw.request("DELETE", a.url() + "/api/v1/status");
  REQUIRE(not_allowed);
  CHECK(not_allowed->status == 405);
  CHECK(not_allowed->headers.get("Allow").value_or("") == "GET, HEAD");
  CHECK(not_allowed->headers.get("X-Content-Type-Options").value_or("") == "nosniff");
  const auto shape = json::parse(not_allowed->body);
  CHECK(shape["error"]["code"] == "method_not_allowed");
  CHECK(shape["error"]["message"] == "DELETE is not allowed on /api/v1/status");
}

TEST_CASE("admin API: /metrics needs no token from loopback and carries the instance's metrics") {
  AdminInstance a;
  http::Client raw;
  auto metrics = raw.request("GET", a.url() + "/metrics");
  REQUIRE(metrics);
  CHECK(metrics->status == 200);
  CHECK(metrics->headers.get("content-type").value_or("").starts_with("text/plain"));
  CHECK(metrics->body == "npme_test_gauge 7\n");
}

TEST_CASE("admin API: users and tokens are written to the store, and removing a user revokes its tokens") {
  AdminInstance a;
  auto client = a.client();
  const json alice = {{"name", "alice"}, {"password", "alice-password-1"}, {"email", "alice@example.com"}};
  auto added = client.call("POST", "/users", &alice);
  REQUIRE(added);
  CHECK((*added)["name"] == "alice");
  CHECK((*added)["email"] == "alice@example.com");
  CHECK(a.auth.check_password("alice", "alice-password-1"));
  CHECK(a.store->update_seq() == 1); // a change of the feed: replicas get it
  CHECK(refusal(client, "POST", "/users", &alice).code == Errc::conflict);
  const json no_password = {{"name", "bob"}};
  const Error invalid = refusal(client, "POST", "/users", &no_password);
  CHECK(invalid.code == Errc::invalid);
  CHECK(invalid.message == "request body: 'name' and 'password' must be strings");

  auto users = client.call("GET", "/users");
  REQUIRE(users);
  REQUIRE((*users)["users"].size() == 1);
  CHECK((*users)["users"][0]["name"] == "alice");

  const json read_only = {{"user", "alice"}, {"read_only", true}};
  auto made = client.call("POST", "/tokens", &read_only);
  REQUIRE(made);
  const std::string token = (*made)["token"];
  const auto identity = a.auth.authenticate(token);
  REQUIRE(identity);
  CHECK(identity->user == "alice");
  CHECK(identity->access == auth::Access::read_only);
  CHECK((*made)["read_only"] == true);
  const json for_nobody = {{"user", "nobody"}};
  CHECK(refusal(client, "POST", "/tokens", &for_nobody).code == Errc::not_found);

  // Listed by id and prefix, never with the token itself.
  auto tokens = client.call("GET", "/tokens");
  REQUIRE(tokens);
  REQUIRE((*tokens)["tokens"].size() == 1);
  const auto& listed = (*tokens)["tokens"][0];
  CHECK(listed["id"] == (*made)["id"]);
  CHECK(token.starts_with(listed["token_prefix"].get<std::string>()));
  CHECK((*tokens).dump().find(token) == std::string::npos);

  REQUIRE(client.call("DELETE", "/users/alice"));
  CHECK_FALSE(a.auth.authenticate(token));
  CHECK(client.call("GET", "/tokens").value()["tokens"].empty());
  CHECK(refusal(client, "DELETE", "/users/alice").code == Errc::not_found);
  CHECK(refusal(client, "DELETE", "/tokens/" + listed["id"].get<std::string>()).code == Errc::not_found);
}

TEST_CASE("admin API: settings are validated as a whole, saved, and secrets are masked unless revealed") {
  AdminInstance a;
  auto client = a.client();
  const std::string file_before = util::read_file(a.layout.config_file).value();

  const json mixed = {{"publication", "read-only"}, {"uplink.maxage", "-1"}};
  const Error refused = refusal(client, "PATCH", "/settings", &mixed);
  CHECK(refused.code == Errc::invalid);
  CHECK(refused.message.find("uplink.maxage") != std::string::npos);
  CHECK(a.live.get()->get("publication") == "all");
  CHECK(util::read_file(a.layout.config_file).value() == file_before);

  const json read_only = {{"publication", "read-only"}};
  auto changed = client.call("PATCH", "/settings", &read_only);
  REQUIRE(changed);
  CHECK((*changed)["changed"] == json::array({"publication"}));
  CHECK((*changed)["restart_required"] == false);
  CHECK(a.live.get()->get("publication") == "read-only");
  CHECK(settings::load(a.layout).value().get("publication") == "read-only");

  const json listen = {{"registry.listen", "127.0.0.1:18080"}};
  auto restart = client.call("PATCH", "/settings", &listen);
  REQUIRE(restart);
  CHECK((*restart)["restart_required"] == true);

  // null returns a key to its default, out of the file.
  const json back = {{"publication", nullptr}};
  REQUIRE(client.call("PATCH", "/settings", &back));
  CHECK(a.live.get()->get("publication") == "all");
  CHECK_FALSE(settings::load(a.layout).value().is_set("publication"));

  auto masked = client.call("GET", "/settings/secret");
  REQUIRE(masked);
  CHECK((*masked)["value"] == "********");
  CHECK((*masked)["secret"] == true);
  auto revealed = client.call("GET", "/settings/secret?reveal=true");
  REQUIRE(revealed);
  CHECK((*revealed)["value"] == a.live.get()->get("secret"));
  auto alias = client.call("GET", "/settings/allowpublishes");
  REQUIRE(alias);
  CHECK((*alias)["key"] == "publication");
  CHECK((*alias)["default"] == true);
  CHECK(refusal(client, "GET", "/settings/no.such.key").code == Errc::usage);
  auto all = client.call("GET", "/settings");
  REQUIRE(all);
  CHECK((*all)["settings"].size() == settings::keys().size());
  CHECK(all->dump().find(a.live.get()->get("admin.token")) == std::string::npos);
}

TEST_CASE("admin API: follower, promotion and whitelist on an instance without upstream") {
  AdminInstance a;
  auto client = a.client();
  const Error reset = refusal(client, "POST", "/follower/reset");
  CHECK(reset.code == Errc::precondition);
  CHECK(reset.message == "this instance has no upstream (set upstream.url first)");
  CHECK(refusal(client, "POST", "/follower/start").code == Errc::precondition);
  auto stopped = client.call("POST", "/follower/stop");
  REQUIRE(stopped);
  CHECK((*stopped)["state"] == "disabled");

  const json promote = {{"force", false}, {"wait_timeout_seconds", 0}};
  CHECK(refusal(client, "POST", "/promote", &promote).code == Errc::precondition);
  CHECK(replication::read_epoch(*a.store) == 1);
  const json bad_promote = {{"force", "yes"}};
  CHECK(refusal(client, "POST", "/promote", &bad_promote).code == Errc::invalid);

  const json left_pad = {{"name", "left-pad"}};
  const json express = {{"name", "express"}};
  auto added = client.call("POST", "/whitelist", &left_pad);
  REQUIRE(added);
  CHECK((*added)["fetched"] == false); // nothing to fetch it from
  REQUIRE(client.call("POST", "/whitelist", &express));
  REQUIRE(client.call("POST", "/whitelist", &express));
  CHECK(util::read_file(a.live.get()->data_dir() / "whitelist").value() == "express\nleft-pad\n");
  CHECK(client.call("GET", "/whitelist").value()["packages"] == json::array({"express", "left-pad"}));
  const json internal = {{"name", "_user:alice"}};
  CHECK(refusal(client, "POST", "/whitelist", &internal).code == Errc::invalid);
  REQUIRE(client.call("DELETE", "/whitelist/left-pad"));
  CHECK(refusal(client, "DELETE", "/whitelist/left-pad").code == Errc::not_found);
  CHECK(replication::read_whitelist(a.live.get()->data_dir()).value() == std::vector<std::string>{"express"});
  CHECK(refusal(client, "GET", "/uplink/jobs/no-such-job").code == Errc::not_found);
}

TEST_CASE("admin::Client reports a stopped instance as unreachable, naming its URL") {
  AdminInstance a;
  const std::string url = a.url();
  a.server->stop();
  admin::Client gone(url, "token");
  auto unreachable = gone.call("GET", "/status");
  REQUIRE_FALSE(unreachable);
  CHECK(unreachable.error().code == Errc::unreachable);
  CHECK(unreachable.error().message.starts_with("cannot reach the admin API at " + url + ": "));
  CHECK(unreachable.error().message.ends_with("(is 'npme serve' running?)"));
}

TEST_CASE("admin::classify_registry_route keeps the label set small") {
  CHECK(admin::classify_registry_route("GET", "/lodash") == "packument");
  CHECK(admin::classify_registry_route("HEAD", "/lodash/-/lodash-4.17.21.tgz") == "tarball");
  CHECK(admin::classify_registry_route("GET", "/@scope%2fpkg") == "packument");
  CHECK(admin::classify_registry_route("PUT", "/lodash") == "publish");
  CHECK(admin::classify_registry_route("DELETE", "/lodash/-rev/3-abc") == "unpublish");
  CHECK(admin::classify_registry_route("PUT", "/-/user/org.couchdb.user:alice") == "login");
  CHECK(admin::classify_registry_route("GET", "/_changes") == "changes");
  CHECK(admin::classify_registry_route("GET", "/") == "root");
  CHECK(admin::classify_registry_route("POST", "/_bulk") == "other");
}

TEST_CASE("admin::Metrics renders request counters and gauges in the exposition format") {
  admin::Metrics metrics;
  metrics.count_request("tarball", 200);
  metrics.count_request("tarball", 200);
  metrics.count_request("publish", 403);
  metrics.set_gauge("npme_follower_sequence", 42, "Last upstream change applied by the follower.");
  const std::string text = metrics.render("npme_extra 1\n");
  CHECK(text.find("npme_http_requests_total{route=\"tarball\",status=\"200\"} 2\n") != std::string::npos);
  CHECK(text.find("npme_http_requests_total{route=\"publish\",status=\"403\"} 1\n") != std::string::npos);
  CHECK(text.find("# HELP npme_follower_sequence Last upstream change applied by the follower.\n") !=
        std::string::npos);
  CHECK(text.find("npme_follower_sequence 42\n") != std::string::npos);
  CHECK(text.find("npme_publishes_total 0\n") != std::string::npos); // only 201s are publishes
  CHECK(text.ends_with("npme_extra 1\n"));
}
