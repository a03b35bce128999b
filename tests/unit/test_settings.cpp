#include "core/settings/settings.hpp"
#include "core/util/fs.hpp"
#include "tests/unit/temp_dir.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <random>

#include <sys/stat.h>

namespace fs = std::filesystem;
using namespace npme;

namespace {

using test::TempDir;

} // namespace

TEST_CASE("settings::load_or_create makes a 0600 file with random secrets") {
  TempDir dir;
  auto layout = settings::Layout::from_root(dir.path / "root");
  auto created = settings::load_or_create(layout);
  REQUIRE(created);
  CHECK(fs::exists(layout.config_file));
  struct stat st {};
  REQUIRE(::stat(layout.config_file.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(created->get("secret").size() == 36);
  CHECK(created->get("admin.token").size() == 36);
  CHECK(created->get("secret") != created->get("admin.token"));

  // A second start keeps the same secrets.
  auto again = settings::load_or_create(layout);
  REQUIRE(again);
  CHECK(again->get("secret") == created->get("secret"));
  CHECK(again->get("admin.token") == created->get("admin.token"));

  // Another instance gets other secrets.
  auto other = settings::load_or_create(settings::Layout::from_root(dir.path / "other"));
  REQUIRE(other);
  CHECK(other->get("secret") != created->get("secret"));
}

TEST_CASE("settings::Settings::get gives defaults that follow the layout") {
  TempDir dir;
  settings::Settings with_root(settings::Layout::from_root(dir.path), {});
  CHECK(with_root.get("storage.metadata") == (dir.path / "couchdb").string());
  CHECK(with_root.get("storage.packages") == (dir.path / "packages").string());
  CHECK(with_root.get("storage.data") == (dir.path / "data").string());
  CHECK(with_root.get("registry.listen") == "127.0.0.1:8080");
  CHECK(with_root.get("registry.url") == "http://127.0.0.1:8080");
  CHECK(with_root.get("admin.listen") == "127.0.0.1:8800");
  CHECK(with_root.get("upstream.policy") == "white-list");
  CHECK(with_root.get("publication") == "all");
  CHECK(with_root.get("auth.installs") == "scoped");

  settings::Settings system(settings::Layout::from_config("/etc/npme/settings.json"), {});
  CHECK(system.get("storage.metadata") == "/usr/local/lib/npme/couchdb");
  CHECK(system.get("storage.packages") == "/usr/local/lib/npme/packages");
  CHECK(system.get("storage.data") == "/usr/local/lib/npme/data");

  // registry.url follows registry.listen as set.
  settings::Settings listening(settings::Layout::from_root(dir.path), {{"registry.listen", "127.0.0.1:9"}});
  CHECK(listening.get("registry.url") == "http://127.0.0.1:9");
  CHECK(listening.get("canonical_url") == ""); // an alias is no key of get()
}

TEST_CASE("settings: every default in the key table is a valid value of its key") {
  TempDir dir;
  for (const auto& key : settings::keys()) {
    CAPTURE(key.name);
    settings::Settings fresh(settings::Layout::from_root(dir.path), {});
    const std::string value = fresh.get(key.name);
    CHECK(value.find('{') == std::string::npos);
    if (value.empty()) {
      continue; // unset: no upstream, no uplink, secrets generated on first start
    }
    auto applied = fresh.apply({{std::string(key.name), value}});
    REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
    CHECK(applied->empty()); // setting the default changes nothing
  }
}

TEST_CASE("settings::Settings::apply maps npmE names onto the new keys") {
  settings::Settings s(settings::Layout::from_root("/tmp/x"), {});
  auto changed = s.apply({{"couch_url_remote", "http://primary:8080/"},
                          {"remote_shared_fetch_secret", "0123456789abcdef0123"},
                          {"remote_policy", "mirror"},
                          {"allowpublishes", "read-only"},
                          {"canonical_url", "https://npm.example.com"},
                          {"couchdb_host_path", "/srv/npme/couchdb"},
                          {"packages_host_path", "/srv/npme/packages"},
                          {"data_host_path", "/srv/npme/data"}});
  REQUIRE(changed);
  CHECK(s.get("upstream.url") == "http://primary:8080");
  CHECK(s.get("upstream.secret") == "0123456789abcdef0123");
  CHECK(s.get("upstream.policy") == "mirror");
  CHECK(s.get("publication") == "read-only");
  CHECK(s.get("registry.url") == "https://npm.example.com");
  CHECK(s.get("storage.metadata") == "/srv/npme/couchdb");
  CHECK(s.get("storage.packages") == "/srv/npme/packages");
  CHECK(s.get("storage.data") == "/srv/npme/data");

  REQUIRE(s.apply({{"authfetch", "true"}}));
  CHECK(s.get("auth.installs") == "all");
  REQUIRE(s.apply({{"authglobal", "false"}}));
  CHECK(s.get("auth.installs") == "scoped");
}

TEST_CASE("settings::Settings::apply applies nothing when one value is bad") {
  settings::Settings s(settings::Layout::from_root("/tmp/x"), {});
  auto result = s.apply({{"publication", "read-only"}, {"upstream.policy", "mirorr"}});
  REQUIRE(!result);
  CHECK(result.error().code == Errc::invalid);
  CHECK(result.error().message.find("upstream.policy") != std::string::npos);
  CHECK(result.error().message.find("mirror, white-list") != std::string::npos);
  CHECK(s.get("publication") == "all");
  CHECK(s.values().empty());
}

TEST_CASE("settings::validate rejects bad values with the key and what is allowed") {
  settings::Settings s(settings::Layout::from_root("/tmp/x"), {});
  auto unknown = s.apply({{"no.such.key", "1"}});
  REQUIRE(!unknown);
  CHECK(unknown.error().code == Errc::usage);
  CHECK(unknown.error().message.find("no.such.key") != std::string::npos);

  CHECK(!s.apply({{"upstream.url", "ftp://x"}}));
  CHECK(!s.apply({{"upstream.url", "http://"}}));
  CHECK(!s.apply({{"registry.listen", "127.0.0.1"}}));
  CHECK(!s.apply({{"registry.listen", "127.0.0.1:70000"}}));
  CHECK(!s.apply({{"storage.data", "relative/path"}}));
  CHECK(!s.apply({{"secret", "short"}}));
  CHECK(!s.apply({{"registry.max_body", "lots"}}));
  CHECK(s.apply({{"upstream.url", ""}}));
  CHECK(s.apply({{"registry.max_body", "10M"}}));
  CHECK(settings::parse_size("10M") == 10u << 20);
  CHECK(settings::parse_size("512K") == 512u << 10);
}

TEST_CASE("settings::validate takes connection caps from 0 (no cap) to 100000") {
  settings::Settings s(settings::Layout::from_root("/tmp/x"), {});
  CHECK(s.get("registry.max_connections_per_client") == "256");
  CHECK(s.get("admin.max_connections_per_client") == "32");
  for (const char* key : {"registry.max_connections_per_client", "admin.max_connections_per_client"}) {
    CHECK(s.apply({{key, "0"}}));
    CHECK(s.apply({{key, "100000"}}));
    auto over = s.apply({{key, "100001"}});
    REQUIRE(!over);
    CHECK(over.error().message ==
          "invalid value '100001' for " + std::string(key) + ": expected a whole number from 0 to 100000");
    CHECK(!s.apply({{key, "-1"}}));
    CHECK(!s.apply({{key, "many"}}));
  }
  // Other counts keep their own limit.
  CHECK(!s.apply({{"replication.sync_replicas", "101"}}));
}

TEST_CASE("settings::load rejects a file that is not an object of known keys") {
  TempDir dir;
  auto layout = settings::Layout::from_root(dir.path);
  REQUIRE(util::write_file_atomic(layout.config_file, "[1,2]"));
  auto not_object = settings::load(layout);
  REQUIRE(!not_object);
  CHECK(not_object.error().code == Errc::invalid);
  REQUIRE(util::write_file_atomic(layout.config_file, R"({"publication":"sometimes"})"));
  CHECK(!settings::load(layout));
  auto missing = settings::load(settings::Layout::from_root(dir.path / "none"));
  REQUIRE(!missing);
  CHECK(missing.error().code == Errc::not_found);
}

TEST_CASE("settings::LiveSettings::update saves atomically and keeps runtime overrides") {
  TempDir dir;
  auto layout = settings::Layout::from_root(dir.path);
  auto initial = settings::load_or_create(layout);
  REQUIRE(initial);
  initial->set_runtime("registry.url", "http://127.0.0.1:4321");
  settings::LiveSettings live(*initial);
  auto before = util::read_file(layout.config_file);
  REQUIRE(before);

  auto bad = live.update({{"publication", "read-only"}, {"auth.installs", "some"}});
  CHECK(!bad);
  CHECK(*util::read_file(layout.config_file) == *before);
  CHECK(live.get()->get("publication") == "all");

  auto good = live.update({{"publication", "read-only"}});
  REQUIRE(good);
  CHECK(good->size() == 1);
  CHECK(live.get()->get("publication") == "read-only");
  CHECK(live.get()->get("registry.url") == "http://127.0.0.1:4321");
  auto reloaded = settings::load(layout);
  REQUIRE(reloaded);
  CHECK(reloaded->get("publication") == "read-only");
  CHECK(!reloaded->is_set("registry.url"));
}

TEST_CASE("settings::Settings::unset returns keys to their defaults, all or none") {
  TempDir dir;
  auto layout = settings::Layout::from_root(dir.path);
  auto loaded = settings::load_or_create(layout);
  REQUIRE(loaded);
  settings::Settings config = *loaded;
  REQUIRE(config.apply({{"publication", "read-only"}, {"remote_policy", "mirror"}}));
  REQUIRE(config.is_set("publication"));

  // Unknown keys and generated secrets refuse the whole call.
  auto unknown = config.unset({"publication", "no.such"});
  REQUIRE(!unknown);
  CHECK(unknown.error().code == Errc::usage);
  CHECK(config.get("publication") == "read-only");
  for (const char* generated : {"secret", "admin.token"}) {
    auto refused = config.unset({"publication", generated});
    REQUIRE(!refused);
    CHECK(refused.error().code == Errc::invalid);
    CHECK(refused.error().message.find("cannot be unset") != std::string::npos);
    CHECK(config.is_set("publication"));
  }

  // npmE names work; only keys that were set count as changed.
  auto reset = config.unset({"allowpublishes", "upstream.policy", "auth.installs"});
  REQUIRE(reset);
  CHECK(*reset == std::vector<std::string>{"publication", "upstream.policy"});
  CHECK(!config.is_set("publication"));
  CHECK(config.get("publication") == "all");
  CHECK(config.get("upstream.policy") == "white-list");
  CHECK(config.to_json().find("publication") == std::string::npos);

  // Through LiveSettings: saved, and a key may not be both set and unset.
  settings::LiveSettings live(config);
  auto both = live.update({{"publication", "scoped"}}, {"allowpublishes"});
  REQUIRE(!both);
  CHECK(both.error().code == Errc::usage);
  REQUIRE(live.update({{"registry.max_body", "8M"}}, {}));
  auto saved = live.update({{"publication", "scoped"}}, {"registry.max_body"});
  REQUIRE(saved);
  CHECK(*saved == std::vector<std::string>{"publication", "registry.max_body"});
  auto reloaded = settings::load(layout);
  REQUIRE(reloaded);
  CHECK(reloaded->get("publication") == "scoped");
  CHECK(!reloaded->is_set("registry.max_body"));
  CHECK(reloaded->get("registry.max_body") == "64M");
}

TEST_CASE("settings::Settings::apply validates the uplink and network keys") {
  settings::Settings s;
  CHECK(s.get("uplink.policy") == "read-through");
  CHECK(s.get("uplink.maxage") == "300");
  CHECK(s.get("uplink.audit") == "public-only");
  CHECK(s.get("uplink.url").empty());
  REQUIRE(s.apply({{"uplink.url", "https://registry.npmjs.org/"},
                   {"uplink.private", " @acme/* , acme-*,@corp"},
                   {"uplink.maxage", "60"},
                   {"uplink.token", "npm_abc"},
                   {"proxy_url", "http://proxy.example:3128"},
                   {"network.ca_file", "/etc/ssl/extra.pem"}}));
  CHECK(s.get("uplink.url") == "https://registry.npmjs.org");
  CHECK(s.get("uplink.private") == "@acme/*,acme-*,@corp");
  CHECK(s.get("network.http_proxy") == "http://proxy.example:3128");
  REQUIRE(s.apply({{"read_through_cache", "no"}}));
  CHECK(s.get("uplink.policy") == "white-list");
  REQUIRE(s.apply({{"read_through_cache", "yes"}}));
  CHECK(s.get("uplink.policy") == "read-through");
  REQUIRE(s.apply({{"uplink.token", ""}, {"network.ca_file", ""}}));
  for (const auto& [key_binding, value_binding] : std::vector<std::pair<std::string, std::string>>{
         {"uplink.url", "ftp://x"},
         {"uplink.policy", "sometimes"},
         {"uplink.private", "a/b"},
         {"uplink.private", "@acme/x/y"},
         {"uplink.private", "bad name"},
         {"uplink.maxage", "-1"},
         {"uplink.maxage", "5m"},
         {"uplink.audit", "maybe"},
         {"uplink.token", "has space"},
         {"network.ca_file", "relative.pem"},
       }) {
    // doctest's message lambdas cannot capture structured bindings (clang 14)
    const auto& key = key_binding;
    const auto& value = value_binding;
    auto refused = s.apply({{key, value}});
    REQUIRE_MESSAGE(!refused, key << "=" << value);
    CHECK(refused.error().code == Errc::invalid);
    CHECK(refused.error().message.find(key) != std::string::npos);
  }
  CHECK(s.get("uplink.maxage") == "60"); // nothing applied by the refused sets
}
