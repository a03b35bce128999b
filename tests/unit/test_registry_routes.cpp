// Route-level tests of the registry: a real store in a temp directory, real
// auth and settings, requests dispatched through the router directly.

#include "core/auth/auth.hpp"
#include "core/registry/registry.hpp"
#include "core/settings/settings.hpp"
#include "core/store/store.hpp"
#include "core/util/crypto.hpp"
#include "core/util/gzip.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

using nlohmann::json;
using namespace npme;

namespace {

namespace fs = std::filesystem;

const std::string k_tarball = std::string("\x1f\x8b\x08\x00" "route test tarball" "\x00\xff", 24);

json publish_body(const std::string& name, const std::string& version, const std::string& tarball = k_tarball,
                  const std::string& tag = "latest") {
  json manifest = {{"name", name},
                   {"version", version},
                   {"description", "route test package " + name},
                   {"keywords", {"routes", "testing"}},
                   {"scripts", {{"install", "node-gyp rebuild"}}},
                   {"readme", "# readme of " + name},
                   {"dist",
                    {{"integrity", util::sri_sha512(tarball)},
                     {"shasum", util::hex(util::sha1(tarball))},
                     {"tarball", "http://elsewhere.invalid/" + name + "/-/" + name + "-" + version + ".tgz"}}}};
  return {{"_id", name},
          {"name", name},
          {"description", "route test package " + name},
          {"dist-tags", {{tag, version}}},
          {"versions", {{version, manifest}}},
          {"access", nullptr},
          {"_attachments",
           {{name + "-" + version + ".tgz",
             {{"content_type", "application/octet-stream"},
              {"data", util::base64_encode(tarball)},
              {"length", tarball.size()}}}}}};
}

std::string encode_name(const std::string& name) {
  std::string out = name;
  if (auto slash = out.find('/'); slash != std::string::npos) {
    out.replace(slash, 1, "%2f");
  }
  return out;
}

struct Fixture {
  fs::path root;
  std::unique_ptr<store::Store> store;
  std::unique_ptr<auth::Auth> auth;
  std::map<std::string, std::string> values{{"registry.url", "http://registry.example:8080/"},
                                            {"auth.installs", "scoped"},
                                            {"publication", "all"},
                                            {"secret", "s3cr3t-service-secret-0123456789abcd"}};
  std::unique_ptr<registry::Registry> registry;
  std::shared_ptr<const http::Router> router;
  std::string rw_token;
  std::string ro_token;

  Fixture() {
    root = fs::temp_directory_path() / ("npme-registry-test-" + util::random_token(12));
    fs::create_directories(root);
    store::Paths paths{root / "couchdb", root / "packages", root / "data"};
    for (const auto& dir : {paths.metadata, paths.packages, paths.data}) {
      fs::create_directories(dir);
    }
    auto opened = store::Store::open(paths);
    REQUIRE_MESSAGE(opened.has_value(), (opened ? "" : opened.error().message));
    store = std::move(*opened);
    auth = std::make_unique<auth::Auth>(*store);
    REQUIRE(auth->add_user("alice", "correct horse", "alice@example.com").has_value());
    rw_token = auth->create_token("alice", auth::Access::read_write)->token;
    ro_token = auth->create_token("alice", auth::Access::read_only)->token;
    registry = std::make_unique<registry::Registry>(*store, *auth, [this] {
      return std::make_shared<const settings::Settings>(settings::Layout::from_root(root), values);
    });
    router = registry->router();
  }

  ~Fixture() {
    router.reset();
    registry.reset();
    auth.reset();
    store.reset();
    std::error_code ignored;
    fs::remove_all(root, ignored);
  }

  http::Response call(const std::string& method, const std::string& target, const std::string& body = "",
                      const std::string& token = "", std::map<std::string, std::string> headers = {}) {
    http::Request request;
    request.method = method;
    request.target = target;
    auto question = target.find('?');
    request.path = target.substr(0, question);
    if (question != std::string::npos) {
      std::string query = target.substr(question + 1);
      std::size_t start = 0;
      while (start <= query.size()) {
        auto amp = query.find('&', start);
        std::string pair = query.substr(start, amp == std::string::npos ? std::string::npos : amp - start);
        auto equals = pair.find('=');
        std::string key = pair.substr(0, equals);
        std::string value = equals == std::string::npos ? "" : pair.substr(equals + 1);
        request.query[*http::percent_decode(key)] = *http::percent_decode(value);
        if (amp == std::string::npos) {
          break;
        }
        start = amp + 1;
      }
    }
    if (!token.empty()) {
      request.headers.add("Authorization", "Bearer " + token);
    }
    for (auto& [name, value] : headers) {
      request.headers.add(name, value);
    }
    request.body = body;
    request.remote_address = "127.0.0.1";
    return router->dispatch(request);
  }

  json call_json(const std::string& method, const std::string& target, const std::string& body = "",
                 const std::string& token = "", std::map<std::string, std::string> headers = {}) {
    auto response = call(method, target, body, token, std::move(headers));
    return json::parse(response.body_view(), nullptr, false);
  }

  http::Response publish(const std::string& name, const std::string& version, const std::string& tarball = k_tarball,
                         const std::string& tag = "latest") {
    return call("PUT", "/" + encode_name(name), publish_body(name, version, tarball, tag).dump(), rw_token);
  }
};

std::string header_of(const http::Response& response, std::string_view name) {
  return std::string(response.headers.get(name).value_or(""));
}

} // namespace

TEST_CASE("registry routes: publish, then full and abbreviated packuments and the tarball") {
  Fixture f;
  auto published = f.publish("@acme/widget", "1.0.0");
  REQUIRE_MESSAGE(published.status == 201, std::string(published.body_view()));
  CHECK(f.store->get("@acme/widget")->has_value());
  CHECK(fs::exists(f.store->file_path("@acme/widget/-/widget-1.0.0.tgz")));

  for (const std::string target : {"/@acme%2fwidget", "/@acme%2Fwidget", "/@acme/widget"}) {
    auto full = f.call("GET", target, "", f.ro_token);
    REQUIRE_MESSAGE(full.status == 200, target);
    CHECK(header_of(full, "Content-Type") == "application/json");
    json doc = json::parse(full.body_view());
    CHECK(doc["name"] == "@acme/widget");
    CHECK(doc["_rev"].get<std::string>().starts_with("1-"));
    CHECK(doc["versions"]["1.0.0"]["dist"]["tarball"] == "http://registry.example:8080/@acme/widget/-/widget-1.0.0.tgz");
    CHECK(doc["versions"]["1.0.0"]["_npmUser"]["name"] == "alice");
    CHECK(doc["readme"] == "# readme of @acme/widget");
    CHECK(doc["time"].contains("1.0.0"));
  }

  auto abbreviated =
    f.call("GET", "/@acme%2fwidget", "", f.ro_token,
           {{"Accept", "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"}});
  REQUIRE(abbreviated.status == 200);
  CHECK(header_of(abbreviated, "Content-Type") == "application/vnd.npm.install-v1+json");
  json corgi = json::parse(abbreviated.body_view());
  CHECK(corgi["versions"]["1.0.0"]["hasInstallScript"] == true);
  CHECK_FALSE(corgi["versions"]["1.0.0"].contains("scripts"));
  CHECK_FALSE(corgi.contains("readme"));
  CHECK(corgi["versions"]["1.0.0"]["dist"]["tarball"] == "http://registry.example:8080/@acme/widget/-/widget-1.0.0.tgz");

  // registry.url is read per request: a replica hands out its own address.
  f.values["registry.url"] = "https://replica.example";
  json moved = f.call_json("GET", "/@acme%2fwidget", "", f.ro_token);
  CHECK(moved["versions"]["1.0.0"]["dist"]["tarball"] == "https://replica.example/@acme/widget/-/widget-1.0.0.tgz");

  for (const std::string target : {"/@acme/widget/-/widget-1.0.0.tgz", "/@acme%2fwidget/-/widget-1.0.0.tgz"}) {
    auto tarball = f.call("GET", target, "", f.ro_token);
    REQUIRE_MESSAGE(tarball.status == 200, target);
    CHECK(tarball.body_view() == k_tarball);
    CHECK(header_of(tarball, "Content-Type") == "application/octet-stream");
  }
  CHECK(f.call("GET", "/@acme/widget/-/widget-9.9.9.tgz", "", f.ro_token).status == 404);
  CHECK(f.call("GET", "/@acme/widget/-/..%2f..%2fsecret.tgz", "", f.ro_token).status == 404);

  auto manifest = f.call_json("GET", "/@acme/widget/latest", "", f.ro_token);
  CHECK(manifest["version"] == "1.0.0");
  CHECK(f.call_json("GET", "/@acme%2fwidget/1.0.0", "", f.ro_token)["version"] == "1.0.0");
  CHECK(f.call("GET", "/@acme/widget/2.0.0", "", f.ro_token).status == 404);
  CHECK(f.call("GET", "/@acme/nothing", "", f.ro_token).status == 404);
  CHECK(f.call_json("GET", "/@acme/nothing", "", f.ro_token)["error"] == "not found");
}

TEST_CASE("registry routes: ETag and If-None-Match give 304 without a body") {
  Fixture f;
  REQUIRE(f.publish("plain", "1.0.0").status == 201);
  auto first = f.call("GET", "/plain");
  REQUIRE(first.status == 200);
  std::string etag = header_of(first, "ETag");
  REQUIRE(etag.size() > 2);
  CHECK(etag.front() == '"');
  CHECK_FALSE(header_of(first, "Cache-Control").empty());

  auto again = f.call("GET", "/plain", "", "", {{"If-None-Match", etag}});
  CHECK(again.status == 304);
  CHECK(again.body_view().empty());
  CHECK(f.call("GET", "/plain", "", "", {{"If-None-Match", "\"x\", W/" + etag}}).status == 304);
  CHECK(f.call("GET", "/plain", "", "", {{"If-None-Match", "\"stale\""}}).status == 200);

  // The abbreviated document has its own ETag.
  auto corgi = f.call("GET", "/plain", "", "", {{"Accept", "application/vnd.npm.install-v1+json"}});
  CHECK(header_of(corgi, "ETag") != etag);

  // A change makes the old ETag stale.
  REQUIRE(f.publish("plain", "1.1.0").status == 201);
  auto changed = f.call("GET", "/plain", "", "", {{"If-None-Match", etag}});
  CHECK(changed.status == 200);
  CHECK(json::parse(changed.body_view())["versions"].contains("1.1.0"));

  auto tarball = f.call("GET", "/plain/-/plain-1.0.0.tgz");
  REQUIRE(tarball.status == 200);
  CHECK(f.call("GET", "/plain/-/plain-1.0.0.tgz", "", "", {{"If-None-Match", header_of(tarball, "ETag")}}).status ==
        304);
}

TEST_CASE("registry routes: packuments are gzip-compressed for clients that accept it, with their own ETag") {
  Fixture f;
  // Enough versions for a packument over the compression threshold.
  for (int minor = 0; minor < 8; ++minor) {
    REQUIRE(f.publish("zipped", "1." + std::to_string(minor) + ".0").status == 201);
  }
  for (const std::string accept : {"application/json", "application/vnd.npm.install-v1+json"}) {
    CAPTURE(accept);
    auto plain = f.call("GET", "/zipped", "", "", {{"Accept", accept}});
    REQUIRE(plain.status == 200);
    CHECK(header_of(plain, "Content-Encoding").empty());
    REQUIRE(plain.body_view().size() >= http::k_compress_min_bytes);

    auto zipped = f.call("GET", "/zipped", "", "", {{"Accept", accept}, {"Accept-Encoding", "gzip, deflate, br"}});
    REQUIRE(zipped.status == 200);
    CHECK(header_of(zipped, "Content-Encoding") == "gzip");
    CHECK(header_of(zipped, "Content-Type") == header_of(plain, "Content-Type"));
    auto decoded = util::gunzip(zipped.body_view(), 1u << 24);
    REQUIRE(decoded);
    CHECK(*decoded == plain.body_view());
    CHECK(zipped.body_view().size() * 4 < plain.body_view().size());
    // Each form has its own ETag, and both vary on Accept-Encoding.
    const std::string etag = header_of(plain, "ETag");
    const std::string gzip_etag = header_of(zipped, "ETag");
    CHECK(gzip_etag == http::gzip_etag(etag));
    CHECK(gzip_etag != etag);
    bool varies = false;
    for (const auto& [name, value] : zipped.headers.fields()) {
      varies = varies || (name == "Vary" && value.find("Accept-Encoding") != std::string::npos);
    }
    CHECK(varies);

    // A hit serves the bytes compressed when the document was rendered.
    auto again = f.call("GET", "/zipped", "", "", {{"Accept", accept}, {"Accept-Encoding", "gzip"}});
    CHECK(again.body_view() == zipped.body_view());
    CHECK(again.shared_body == zipped.shared_body);

    // Either form's ETag revalidates; q=0 refuses gzip.
    CHECK(f.call("GET", "/zipped", "", "", {{"Accept", accept}, {"Accept-Encoding", "gzip"}, {"If-None-Match", gzip_etag}})
            .status == 304);
    CHECK(f.call("GET", "/zipped", "", "", {{"Accept", accept}, {"Accept-Encoding", "gzip"}, {"If-None-Match", etag}})
            .status == 304);
    CHECK(f.call("GET", "/zipped", "", "", {{"Accept", accept}, {"If-None-Match", gzip_etag}}).status == 304);
    auto refused = f.call("GET", "/zipped", "", "", {{"Accept", accept}, {"Accept-Encoding", "gzip;q=0, identity"}});
    CHECK(header_of(refused, "Content-Encoding").empty());
  }
  // A new version: a new compressed form, never the old one.
  auto before = f.call("GET", "/zipped", "", "", {{"Accept-Encoding", "gzip"}});
  REQUIRE(f.publish("zipped", "2.0.0").status == 201);
  auto after = f.call("GET", "/zipped", "", "", {{"Accept-Encoding", "gzip"}});
  CHECK(header_of(after, "ETag") != header_of(before, "ETag"));
  CHECK(json::parse(*util::gunzip(after.body_view(), 1u << 24))["versions"].contains("2.0.0"));
  // Tarballs are sent as they are.
  auto tarball = f.call("GET", "/zipped/-/zipped-1.0.0.tgz", "", "", {{"Accept-Encoding", "gzip"}});
  REQUIRE(tarball.status == 200);
  CHECK(header_of(tarball, "Content-Encoding").empty());
  CHECK(tarball.body_view() == k_tarball);
}

TEST_CASE("registry routes: a tarball over the cache's entry limit is streamed from its file") {
  Fixture f;
  std::string big(9u << 20, 'b');
  big[0] = '\x1f';
  REQUIRE(f.publish("hefty", "1.0.0", big).status == 201);
  auto first = f.call("GET", "/hefty/-/hefty-1.0.0.tgz");
  REQUIRE(first.status == 200);
  REQUIRE(first.file_body);
  CHECK(first.body_view().empty());
  CHECK(first.body_size() == big.size());
  std::string read(big.size(), '\0');
  CHECK(::pread(first.file_body->fd.get(), read.data(), read.size(), 0) == static_cast<ssize_t>(big.size()));
  CHECK(read == big);
  const std::string etag = header_of(first, "ETag");
  REQUIRE(etag.size() > 2);
  CHECK(f.call("GET", "/hefty/-/hefty-1.0.0.tgz", "", "", {{"If-None-Match", etag}}).status == 304);
  // Every request opens the file anew: nothing of it is kept in memory.
  auto second = f.call("GET", "/hefty/-/hefty-1.0.0.tgz");
  REQUIRE(second.file_body);
  CHECK(second.file_body != first.file_body);
  CHECK(header_of(second, "ETag") == etag);
}

TEST_CASE("registry routes: versions are never overwritten nor reused") {
  Fixture f;
  REQUIRE(f.publish("pkg", "1.0.0").status == 201);
  auto seq = f.store->update_seq();
  auto again = f.publish("pkg", "1.0.0", std::string("different bytes"));
  CHECK(again.status == 403);
  CHECK(json::parse(again.body_view())["error"] == "cannot publish over the previously published version 1.0.0");
  CHECK(f.store->update_seq() == seq);
  CHECK(f.call("GET", "/pkg/-/pkg-1.0.0.tgz").body_view() == k_tarball);

  // Whole-package unpublish, then the same version again: still refused.
  std::string rev = f.call_json("GET", "/pkg?write=true")["_rev"];
  REQUIRE(f.call("DELETE", "/pkg/-rev/" + rev, "", f.rw_token).status == 200);
  CHECK(f.call("GET", "/pkg").status == 404);
  CHECK_FALSE(fs::exists(f.store->file_path("pkg/-/pkg-1.0.0.tgz")));
  CHECK(f.publish("pkg", "1.0.0").status == 403);
  CHECK(f.publish("pkg", "1.0.1").status == 201);
}

TEST_CASE("registry routes: publish checks body, name and integrity") {
  Fixture f;
  json body = publish_body("pkg", "1.0.0");
  body["versions"]["1.0.0"]["dist"]["integrity"] = util::sri_sha512("tampered");
  auto tampered = f.call("PUT", "/pkg", body.dump(), f.rw_token);
  CHECK(tampered.status == 400);
  CHECK(json::parse(tampered.body_view())["error"].get<std::string>().starts_with("tarball integrity mismatch"));

  CHECK(f.call("PUT", "/other", publish_body("pkg", "1.0.0").dump(), f.rw_token).status == 400);
  CHECK(f.call("PUT", "/pkg", "{not json", f.rw_token).status == 400);
  CHECK(f.call("PUT", "/pkg", "[1,2]", f.rw_token).status == 400);
  CHECK(f.call("PUT", "/pkg", std::string(5000, '[') + std::string(5000, ']'), f.rw_token).status == 400);
  CHECK(f.call("PUT", "/%2e%2e", publish_body("..", "1.0.0").dump(), f.rw_token).status == 400);
  CHECK(f.call("PUT", "/.hidden", publish_body(".hidden", "1.0.0").dump(), f.rw_token).status == 400);
  CHECK(f.call("PUT", "/@s%2f..", publish_body("@s/..", "1.0.0").dump(), f.rw_token).status == 400);
  CHECK(f.call("GET", "/%2e%2e").status == 400);
  CHECK(f.call("GET", "/a%20b").status == 400);
  CHECK(f.call("GET", "/-/unknown").status == 404);
  CHECK(f.store->update_seq() > 0); // users and tokens only
  CHECK_FALSE(f.store->get("pkg")->has_value());
}

TEST_CASE("registry routes: authentication and permissions") {
  Fixture f;
  REQUIRE(f.publish("@acme/secret", "1.0.0").status == 201);
  REQUIRE(f.publish("open", "1.0.0").status == 201);

  SUBCASE("auth.installs=scoped") {
    CHECK(f.call("GET", "/@acme%2fsecret").status == 401);
    CHECK(f.call("GET", "/@acme/secret/-/secret-1.0.0.tgz").status == 401);
    CHECK(f.call("GET", "/-/package/@acme%2fsecret/dist-tags").status == 401);
    CHECK(f.call("GET", "/@acme%2fsecret", "", f.ro_token).status == 200);
    CHECK(f.call("GET", "/open").status == 200);
    CHECK(f.call("GET", "/open/-/open-1.0.0.tgz").status == 200);
    // Anonymous search does not reveal scoped packages.
    json found = f.call_json("GET", "/-/v1/search?text=route");
    CHECK(found["total"] == 1);
  }
  SUBCASE("auth.installs=all and none") {
    f.values["auth.installs"] = "all";
    CHECK(f.call("GET", "/open").status == 401);
    CHECK(f.call("GET", "/-/v1/search?text=open").status == 401);
    CHECK(f.call("GET", "/open", "", f.ro_token).status == 200);
    f.values["auth.installs"] = "none";
    CHECK(f.call("GET", "/@acme%2fsecret").status == 200);
  }
  SUBCASE("unknown tokens are refused, ping needs nothing") {
    CHECK(f.call("GET", "/open", "", "not-a-token").status == 401);
    CHECK(f.call("GET", "/-/ping", "", "not-a-token").status == 200);
    CHECK(f.call_json("GET", "/-/ping").is_object());
  }
  SUBCASE("the service secret allows replication reads only") {
    CHECK(f.call("GET", "/@acme%2fsecret", "", f.values["secret"]).status == 200);
    CHECK(f.call("GET", "/@acme%2fsecret?sharedFetchSecret=" + f.values["secret"]).status == 200);
    CHECK(f.call("PUT", "/@acme%2fsecret", publish_body("@acme/secret", "2.0.0").dump(), f.values["secret"]).status ==
          401);
    CHECK(f.call("GET", "/-/whoami", "", f.values["secret"]).status == 401);
  }
  SUBCASE("writes need a read-write token") {
    auto anonymous = f.call("PUT", "/open", publish_body("open", "2.0.0").dump());
    CHECK(anonymous.status == 401);
    CHECK(json::parse(anonymous.body_view())["error"] == "authentication required");
    CHECK(f.call("PUT", "/open", publish_body("open", "2.0.0").dump(), f.ro_token).status == 403);
    CHECK(f.call("PUT", "/-/package/open/dist-tags/next", "\"1.0.0\"", f.ro_token).status == 403);
    CHECK(f.call("DELETE", "/open/-rev/1-x", "", f.ro_token).status == 403);
  }
  SUBCASE("publication read-only and scoped") {
    f.values["publication"] = "read-only";
    f.values["upstream.url"] = "http://primary.example:8080";
    auto refused = f.publish("open", "2.0.0");
    CHECK(refused.status == 403);
    std::string message = json::parse(refused.body_view())["error"];
    CHECK(message.starts_with("this instance is read-only; publish to the primary"));
    CHECK(message.find("http://primary.example:8080") != std::string::npos);
    CHECK(f.call("PUT", "/-/user/org.couchdb.user:alice", R"({"name":"alice","password":"correct horse"})").status ==
          403);
    f.values["publication"] = "scoped";
    CHECK(f.publish("open", "2.0.0").status == 403);
    CHECK(f.publish("@acme/secret", "2.0.0").status == 201);
  }
  SUBCASE("whoami") {
    CHECK(f.call_json("GET", "/-/whoami", "", f.ro_token)["username"] == "alice");
    CHECK(f.call("GET", "/-/whoami").status == 401);
  }
}

TEST_CASE("registry routes: stale revisions get 409 and change nothing") {
  Fixture f;
  REQUIRE(f.publish("pkg", "1.0.0").status == 201);
  REQUIRE(f.publish("pkg", "1.1.0").status == 201);
  json doc = f.call_json("GET", "/pkg?write=true");
  std::string rev = doc["_rev"];
  REQUIRE(rev.starts_with("2-"));

  auto seq = f.store->update_seq();
  json stale = doc;
  stale["_rev"] = "1-00000000000000000000000000000000";
  stale["versions"]["1.0.0"]["deprecated"] = "old";
  CHECK(f.call("PUT", "/pkg", stale.dump(), f.rw_token).status == 409);
  CHECK(f.call("PUT", "/pkg/-rev/1-00000000000000000000000000000000", doc.dump(), f.rw_token).status == 409);
  CHECK(f.call("DELETE", "/pkg/-rev/1-00000000000000000000000000000000", "", f.rw_token).status == 409);
  CHECK(f.call("DELETE", "/pkg/-/pkg-1.0.0.tgz/-rev/1-0", "", f.rw_token).status == 409);
  json no_rev = doc;
  no_rev.erase("_rev");
  CHECK(f.call("PUT", "/pkg", no_rev.dump(), f.rw_token).status == 409);
  CHECK(f.store->update_seq() == seq);
  CHECK(f.call_json("GET", "/pkg")["_rev"] == rev);
}

TEST_CASE("registry routes: deprecate and unpublish one version as npm does") {
  Fixture f;
  REQUIRE(f.publish("pkg", "1.0.0").status == 201);
  REQUIRE(f.publish("pkg", "1.1.0").status == 201);

  // npm deprecate: GET ?write=true, set deprecated, PUT /pkg with _rev.
  json doc = f.call_json("GET", "/pkg?write=true");
  doc["versions"]["1.0.0"]["deprecated"] = "please upgrade";
  auto deprecated = f.call("PUT", "/pkg", doc.dump(), f.rw_token);
  REQUIRE_MESSAGE(deprecated.status == 200, std::string(deprecated.body_view()));
  json corgi = f.call_json("GET", "/pkg", "", "", {{"Accept", "application/vnd.npm.install-v1+json"}});
  CHECK(corgi["versions"]["1.0.0"]["deprecated"] == "please upgrade");

  // Changing dist or adding a version through a metadata update is refused.
  doc = f.call_json("GET", "/pkg?write=true");
  json evil = doc;
  evil["versions"]["1.0.0"]["dist"]["shasum"] = "0000000000000000000000000000000000000000";
  CHECK(f.call("PUT", "/pkg", evil.dump(), f.rw_token).status == 400);
  evil = doc;
  evil["versions"]["2.0.0"] = evil["versions"]["1.0.0"];
  CHECK(f.call("PUT", "/pkg", evil.dump(), f.rw_token).status == 400);

  // npm unpublish pkg@1.1.0: PUT without the version to /-rev/<rev>, then
  // DELETE the tarball with the new revision.
  doc = f.call_json("GET", "/pkg?write=true");
  std::string tarball_url = doc["versions"]["1.1.0"]["dist"]["tarball"];
  doc["versions"].erase("1.1.0");
  doc["dist-tags"]["latest"] = "1.0.0";
  auto put = f.call("PUT", "/pkg/-rev/" + doc["_rev"].get<std::string>(), doc.dump(), f.rw_token);
  REQUIRE_MESSAGE(put.status == 200, std::string(put.body_view()));
  CHECK_FALSE(fs::exists(f.store->file_path("pkg/-/pkg-1.1.0.tgz")));
  CHECK(f.call("GET", "/pkg/-/pkg-1.1.0.tgz").status == 404);
  std::string rev = f.call_json("GET", "/pkg?write=true")["_rev"];
  std::string path = tarball_url.substr(std::string("http://registry.example:8080").size());
  CHECK(path == "/pkg/-/pkg-1.1.0.tgz");
  CHECK(f.call("DELETE", path + "/-rev/" + rev, "", f.rw_token).status == 200);
  // The tarball of a published version cannot be deleted on its own.
  CHECK(f.call("DELETE", "/pkg/-/pkg-1.0.0.tgz/-rev/" + rev, "", f.rw_token).status == 409);
  CHECK(fs::exists(f.store->file_path("pkg/-/pkg-1.0.0.tgz")));

  json after = f.call_json("GET", "/pkg");
  CHECK_FALSE(after["versions"].contains("1.1.0"));
  CHECK(after["time"].contains("1.1.0"));
  CHECK(after["dist-tags"]["latest"] == "1.0.0");
  CHECK(f.publish("pkg", "1.1.0").status == 403);
}

TEST_CASE("registry routes: dist-tags") {
  Fixture f;
  REQUIRE(f.publish("@acme/tool", "1.0.0").status == 201);
  REQUIRE(f.publish("@acme/tool", "2.0.0-beta.1", k_tarball, "beta").status == 201);
  json tags = f.call_json("GET", "/-/package/@acme%2ftool/dist-tags", "", f.ro_token);
  CHECK(tags == json{{"latest", "1.0.0"}, {"beta", "2.0.0-beta.1"}});

  CHECK(f.call("PUT", "/-/package/@acme%2ftool/dist-tags/next", "\"2.0.0-beta.1\"", f.rw_token).status == 201);
  CHECK(f.call("POST", "/-/package/@acme%2ftool/dist-tags/stable", "\"1.0.0\"", f.rw_token).status == 201);
  CHECK(f.call("PUT", "/-/package/@acme%2ftool/dist-tags/next", "\"9.9.9\"", f.rw_token).status == 404);
  CHECK(f.call("PUT", "/-/package/@acme%2ftool/dist-tags/1.x", "\"1.0.0\"", f.rw_token).status == 400);
  CHECK(f.call("PUT", "/-/package/@acme%2ftool/dist-tags/next", "{}", f.rw_token).status == 400);
  CHECK(f.call("DELETE", "/-/package/@acme%2ftool/dist-tags/latest", "", f.rw_token).status == 400);
  CHECK(f.call("DELETE", "/-/package/@acme%2ftool/dist-tags/beta", "", f.rw_token).status == 200);
  CHECK(f.call("DELETE", "/-/package/@acme%2ftool/dist-tags/beta", "", f.rw_token).status == 404);
  tags = f.call_json("GET", "/-/package/@acme/tool/dist-tags", "", f.ro_token);
  CHECK(tags == json{{"latest", "1.0.0"}, {"next", "2.0.0-beta.1"}, {"stable", "1.0.0"}});
  CHECK(f.call("GET", "/-/package/nothing/dist-tags").status == 404);
}

TEST_CASE("registry routes: login, whoami and logout as npm does them") {
  Fixture f;
  auto web = f.call("POST", "/-/v1/login", "{}");
  CHECK(web.status >= 400);
  CHECK(web.status <= 499);

  auto login = f.call("PUT", "/-/user/org.couchdb.user:alice",
                      json{{"_id", "org.couchdb.user:alice"}, {"name", "alice"}, {"password", "correct horse"},
                           {"type", "user"}, {"roles", json::array()}, {"date", "2026-01-01T00:00:00.000Z"}}
                        .dump(),
                      "revoked-or-stale-token");
  REQUIRE_MESSAGE(login.status == 201, std::string(login.body_view()));
  json answer = json::parse(login.body_view());
  CHECK(answer["ok"] == true);
  CHECK(answer["id"] == "org.couchdb.user:alice");
  std::string token = answer["token"];
  CHECK(f.call_json("GET", "/-/whoami", "", token)["username"] == "alice");
  CHECK(f.call_json("GET", "/-/user/org.couchdb.user:alice", "", token)["email"] == "alice@example.com");
  CHECK(f.call("GET", "/-/user/org.couchdb.user:bob", "", token).status == 403);
  CHECK(f.publish("freshly-logged-in", "1.0.0").status == 201);

  CHECK(f.call("PUT", "/-/user/org.couchdb.user:alice", R"({"name":"alice","password":"wrong"})").status == 401);
  CHECK(f.call("PUT", "/-/user/org.couchdb.user:mallory", R"({"name":"mallory","password":"x"})").status == 401);
  CHECK(f.call("PUT", "/-/user/org.couchdb.user:alice", "not json").status == 400);

  CHECK(f.call("DELETE", "/-/user/token/" + token, "", token).status == 200);
  CHECK(f.call("GET", "/-/whoami", "", token).status == 401);
  CHECK(f.call("DELETE", "/-/user/token/" + token, "", token).status == 200);
}

TEST_CASE("registry routes: search") {
  Fixture f;
  REQUIRE(f.publish("left-pad", "1.0.0").status == 201);
  REQUIRE(f.publish("right-pad", "1.0.0").status == 201);
  REQUIRE(f.publish("unrelated", "1.0.0").status == 201);
  json result = f.call_json("GET", "/-/v1/search?text=pad&size=10&from=0");
  REQUIRE(result["total"] == 2);
  CHECK(result["objects"][0]["package"].contains("name"));
  CHECK(result["objects"][0]["package"]["version"] == "1.0.0");
  CHECK(result["objects"][0]["package"]["publisher"]["username"] == "alice");
  CHECK(result["objects"][0]["package"]["keywords"] == json{"routes", "testing"});
  CHECK(f.call_json("GET", "/-/v1/search?text=LEFT-pad")["objects"][0]["package"]["name"] == "left-pad");
  CHECK(f.call_json("GET", "/-/v1/search?text=pad&size=1")["objects"].size() == 1);
  CHECK(f.call_json("GET", "/-/v1/search?text=pad&size=abc")["total"] == 2);
}

TEST_CASE("registry::Registry::add_routes serves beside routes added first") {
  Fixture f;
  http::Router combined;
  combined.add("GET", "/", [](http::Request&) { return http::Response::json(200, R"({"db_name":"registry"})"); });
  f.registry->add_routes(combined);
  REQUIRE(f.publish("pkg", "1.0.0").status == 201);
  auto call = [&](const std::string& path) {
    http::Request request;
    request.method = "GET";
    request.target = path;
    request.path = path;
    return combined.dispatch(request);
  };
  CHECK(call("/").body_view() == R"({"db_name":"registry"})");
  CHECK(call("/-/ping").status == 200);
  CHECK(json::parse(call("/pkg").body_view())["name"] == "pkg");
}

TEST_CASE("registry routes: a large packument is cached gzip-only and served plain too") {
  Fixture f;
  // ~16 KB per version: 80 versions make a full packument over 1 MiB.
  const std::string pad(16000, 'x');
  for (int minor = 0; minor < 80; ++minor) {
    json body = publish_body("large", "1." + std::to_string(minor) + ".0");
    body["versions"].begin().value()["config"] = {{"pad", pad + std::to_string(minor)}};
    REQUIRE(f.call("PUT", "/large", body.dump(), f.rw_token).status == 201);
  }
  auto first = f.call("GET", "/large", "", "", {{"Accept", "application/json"}});
  REQUIRE(first.status == 200);
  REQUIRE(first.body_view().size() > (1u << 20));
  auto zipped = f.call("GET", "/large", "", "", {{"Accept", "application/json"}, {"Accept-Encoding", "gzip"}});
  REQUIRE(zipped.status == 200);
  CHECK(header_of(zipped, "Content-Encoding") == "gzip");
  // A hit: the plain form comes from the kept gzip form.
  auto again = f.call("GET", "/large", "", "", {{"Accept", "application/json"}});
  REQUIRE(again.status == 200);
  CHECK(header_of(again, "Content-Encoding").empty());
  CHECK(again.body_view() == first.body_view());
  CHECK(header_of(again, "ETag") == header_of(first, "ETag"));
  CHECK(*util::gunzip(zipped.body_view(), 1u << 24) == first.body_view());
  const std::string metrics = f.registry->metrics();
  const auto at = metrics.find("\nnpme_cache_bytes ");
  REQUIRE(at != std::string::npos);
  const auto bytes = std::stoull(metrics.substr(at + 18));
  CHECK(bytes < first.body_view().size() / 2);
  CHECK(bytes >= zipped.body_view().size());
}

TEST_CASE("registry routes: concurrent reads during publishes never hand out a document older than a publish") {
  Fixture f;
  // Large manifests: a render takes long enough for reads to overlap it.
  const std::string pad(50000, 'y');
  const auto publish = [&](const std::string& version) {
    json body = publish_body("busy", version);
    body["versions"].begin().value()["config"] = {{"pad", pad + version}};
    return f.call("PUT", "/busy", body.dump(), f.rw_token);
  };
  REQUIRE(publish("1.0.0").status == 201);
  std::atomic<bool> stop{false};
  std::atomic<int> reads{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&] {
      while (!stop.load()) {
        auto response = f.call("GET", "/busy", "", "", {{"Accept-Encoding", "gzip"}});
        CHECK(response.status == 200);
        reads.fetch_add(1);
      }
    });
  }
  for (int minor = 1; minor <= 30; ++minor) {
    const std::string version = "1." + std::to_string(minor) + ".0";
    REQUIRE(publish(version).status == 201);
    // Every other publish follows the one before at once, while the readers
    // render the document of that one.
    if (minor % 2 == 1) {
      continue;
    }
    // Read-your-writes: the publish was answered, so every read from now on sees it.
    for (const char* encoding : {"gzip", "identity"}) {
      auto response = f.call("GET", "/busy", "", "", {{"Accept-Encoding", encoding}});
      REQUIRE(response.status == 200);
      const std::string text = header_of(response, "Content-Encoding") == "gzip"
                                 ? *util::gunzip(response.body_view(), 1u << 24)
                                 : std::string(response.body_view());
      CHECK(json::parse(text)["versions"].contains(version));
    }
  }
  stop.store(true);
  for (auto& reader : readers) {
    reader.join();
  }
  CHECK(reads.load() > 0);
}
